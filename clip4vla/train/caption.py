"""Captioning as a task of the one loop: the Multimodal Caption Generator with teacher forcing.

Every (video, caption) pair of the training split is visited once per epoch. The loss is the
cross-entropy of the next word at every real caption position (padding is ignored; the released
code's "train on padding" is ``caption.train_on_padding``); it couples no samples, so
accumulation sums micro-batch gradients. Checkpoints are chosen by validation CIDEr
(``caption.val_beam``, greedy by default); the test decodes with beam search
(``caption.beam``) and reports BLEU-4, METEOR, ROUGE-L and CIDEr next to three baselines that use
no video at all: the most frequent training caption for every video, another video's reference
caption, and the model's own captions shuffled across videos.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clip4vla.config import CaptionConfig, ConfigError
from clip4vla.data.dataset import IGNORE_INDEX, SampleOptions, TriModalDataset, collate_samples
from clip4vla.evaluation.captioning import caption_metrics
from clip4vla.evaluation.fusion_retrieval import resolve_audio_type, video_items
from clip4vla.files import write_text_atomic
from clip4vla.models.captioner import CaptionGenerator
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.decoding import generate
from clip4vla.models.fusion import MODALITIES
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.precision import autocast
from clip4vla.text import default_tokenizer
from clip4vla.train.distributed import DistInfo
from clip4vla.train.task import Batch, Features, Task, TaskData, split_datasets

__all__ = ["CaptionForward", "CaptionTask", "attach_caption_head", "caption_videos", "format_caption_table"]

log = logging.getLogger(__name__)


def attach_caption_head(model: CLIP4VLA, max_words: int, layers: int) -> CaptionGenerator:
    """The model's caption generator: the one it has (same ``max_words``), or a new one."""
    if "caption" in model.heads:
        head = model.heads["caption"]
        if head.config.max_words != max_words:
            raise ConfigError(f"model.init_from holds a caption head for max_words={head.config.max_words}, "
                              f"but data.max_words={max_words}")
        return head
    head = CaptionGenerator.from_clip(model.clip, max_words, layers)
    model.attach_head("caption", head)
    return head


def _masks(frame_mask: torch.Tensor, audio_mask: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return (torch.zeros_like(frame_mask) if modality == "a" else frame_mask,
            torch.zeros_like(audio_mask) if modality == "v" else audio_mask)


class CaptionForward(nn.Module):
    """Batch tensors -> next-word logits ``[B, S, vocab]`` (the module DDP wraps)."""

    def __init__(self, model: CLIP4VLA, head: CaptionGenerator, modality: str, audio_type: Any) -> None:
        super().__init__()
        self.model, self.head, self.modality, self.audio_type = model, head, modality, audio_type

    def forward(self, caption_input: torch.Tensor, caption_target: torch.Tensor, frames: torch.Tensor,
                frame_mask: torch.Tensor, audio: torch.Tensor, audio_mask: torch.Tensor,
                audio_type: torch.Tensor) -> Features:
        text = self.model.encode_text_tokens(caption_input)[0]  # [B, S, D], causal: no peeking ahead
        frame_mask, audio_mask = _masks(frame_mask, audio_mask, self.modality)
        frame_features, segment_features = video_items(
            self.model, frames, frame_mask, audio, audio_mask, resolve_audio_type(self.audio_type, audio_type),
            self.modality,
        )
        logits = self.head(text, caption_target != IGNORE_INDEX, frame_features, frame_mask, segment_features,
                           audio_mask, self.model.clip.token_embedding.weight)
        return {"logits": logits}


@torch.no_grad()
def caption_videos(model: CLIP4VLA, dataset: TriModalDataset, modality: str, audio_type: Any, beam: int,
                   length_penalty: float, device: torch.device, precision: str = "fp32", batch_size: int = 16,
                   cached: bool = True) -> tuple[dict[str, str], int]:
    """A caption for every readable clip of ``dataset`` (``{video_id: text}``) and the unreadable count."""
    tokenizer = default_tokenizer()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples)
    predictions: dict[str, str] = {}
    unreadable = 0
    for batch in loader:
        readable = batch["valid"]
        unreadable += int((~readable).sum())
        if not bool(readable.any()):
            continue
        frame_mask, audio_mask = _masks(batch["frame_mask"][readable], batch["audio_mask"][readable], modality)
        with autocast(device, precision):
            frames, segments = video_items(
                model, batch["frames"][readable].to(device), frame_mask.to(device), batch["audio"][readable].to(device),
                audio_mask.to(device), resolve_audio_type(audio_type, batch["audio_type"][readable].to(device)), modality,
            )
            words = generate(model, frames, frame_mask.to(device), segments, audio_mask.to(device), beam=beam,
                             length_penalty=length_penalty, cached=cached)
        ids = [vid for vid, ok in zip(batch["video_id"], readable.tolist()) if ok]
        predictions.update({vid: tokenizer.decode(w).strip() for vid, w in zip(ids, words)})
    return predictions, unreadable


class CaptionTask(Task):
    """Fine-tuning the Multimodal Caption Generator (paper §3.4, Tables 3-4)."""

    name = "caption"
    select_metric = "CIDEr"
    export = "best"
    batch_coupled = False
    requires_init = True
    loss_keys = ("loss",)

    def __init__(self, config: CaptionConfig, dist: DistInfo) -> None:
        super().__init__(config, dist)
        self.options = SampleOptions.from_config(config.data, config.audio, masked_audio=False, random_caption=False,
                                                 caption_targets=True)
        self.train_captions: list[str] = []
        self.model: CLIP4VLA | None = None

    def datasets(self) -> TaskData:
        data = split_datasets(self.config, self.dist, "caption", self.options, self.options.evaluation(),
                              unfold_train=True)
        self.train_captions = [c for r in data.train.records for c in r.captions]
        limit = self.config.data.max_words - 1
        tokenizer = default_tokenizer()
        long = [c for c in dict.fromkeys(self.train_captions) if len(tokenizer.encode(c)) > limit]
        if long:  # said once, at start-up
            log.warning("%d of %d training captions have more than %d words (data.max_words - 1) and are truncated, "
                        "e.g. %r", len(long), len(set(self.train_captions)), limit, long[0][:80])
        return data

    def preprocessing(self) -> Preprocessing:
        audio_type = self.config.caption.audio_type
        return self.options.preprocessing(audio_type=None if audio_type == "clip" else audio_type)

    def setup(self, model: CLIP4VLA) -> None:
        cc = self.config.caption
        self.model = model
        head = attach_caption_head(model, self.config.data.max_words, cc.fusion_layers)
        self.forward_module = CaptionForward(model, head, cc.modality, cc.audio_type)

    def inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        keys = ("caption_input", "caption_target", "frames", "frame_mask", "audio", "audio_mask", "audio_type")
        return {k: batch[k].to(self.device, non_blocking=True) for k in keys}

    def loss(self, features: Features, batches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = features["logits"].float()
        targets = torch.cat([b["caption_target"] for b in batches]).to(self.device)
        if self.config.caption.train_on_padding:  # REF: padding positions learn to predict id 0
            targets = torch.where(targets == IGNORE_INDEX, torch.zeros_like(targets), targets)
            targets[torch.cat([~b["valid"] for b in batches]).to(self.device)] = IGNORE_INDEX
        if not bool((targets != IGNORE_INDEX).any()):  # only unreadable samples: nothing to learn
            return logits.sum() * 0.0, {}
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return loss, {}

    def evaluate(self, model: CLIP4VLA, dataset: TriModalDataset, split: str) -> dict[str, Any]:
        cc = self.config.caption
        beam = cc.val_beam if split == "val" else cc.beam
        predictions, unreadable = caption_videos(
            model, dataset, cc.modality, cc.audio_type, beam, cc.length_penalty, self.device,
            self.config.train.precision, batch_size=max(1, self.config.train.batch_size // self.dist.world_size),
        )
        references = {r.video_id: list(r.captions) for r in dataset.records if r.video_id in predictions}
        if split == "val":  # CIDEr chooses best.pt; the slow METEOR is for the test
            return {"split": split, "metrics": caption_metrics(predictions, references, metrics=("CIDEr",))}
        metrics = caption_metrics(predictions, references)
        baselines = caption_baselines(predictions, references, self.train_captions)
        result = {"split": split, "beam": beam, "modality": cc.modality, "metrics": metrics, "baselines": baselines,
                  "n_unreadable": unreadable, "predictions": predictions}
        path = Path(self.config.train.output_dir) / f"captions_{split}.json"
        write_text_atomic(path, json.dumps({**result, "references": references}, indent=1))
        log.info("%d generated captions with their references: %s", len(predictions), path)
        return result

    def report(self, result: dict[str, Any]) -> str:
        return format_caption_table(result)

    def summary(self, result: dict[str, Any]) -> dict[str, Any]:
        return {"split": result["split"], **{k: v for k, v in result["metrics"].items()},
                "baselines": result["baselines"], "n_unreadable": result["n_unreadable"]}


def caption_baselines(predictions: dict[str, str], references: dict[str, list[str]],
                      train_captions: list[str]) -> dict[str, dict[str, float]]:
    """CIDEr and BLEU-4 of captions that do not look at the video (to compare the model with).

    Most frequent training caption: the language prior. Another video's reference: a fluent,
    plausible caption of the wrong clip. The model's captions shuffled: what the model says
    whatever the clip (close to the model's score when it ignores the video).
    """
    out = {}
    if train_captions:
        frequent = Counter(train_captions).most_common(1)[0][0]
        out["most frequent training caption"] = {"caption": frequent, **_scores({v: frequent for v in predictions}, references)}
    ids = sorted(predictions)
    if len(ids) > 1:  # every video gets the next video's caption: specific captions lose their video
        following = {vid: ids[(i + 1) % len(ids)] for i, vid in enumerate(ids)}
        out["another video's reference"] = _scores({vid: references[following[vid]][0] for vid in ids}, references)
        out["model captions, shuffled"] = _scores({vid: predictions[following[vid]] for vid in ids}, references)
    return out


def _scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    metrics = caption_metrics(predictions, references, metrics=("BLEU-4", "CIDEr"))
    return {"BLEU-4": metrics["BLEU-4"], "CIDEr": metrics["CIDEr"]}


def format_caption_table(result: dict[str, Any]) -> str:
    m = result["metrics"]
    shown = [k for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr") if k in m]
    lines = [f"captioning on the {result['split']} split ({m['n_videos']} videos, beam {result['beam']}, "
             f"{result['modality'].upper()}, {m['tokenizer']} tokens, {result['n_unreadable']} unreadable):",
             "  " + f"{'':<34}" + "".join(f"{k:>9}" for k in shown),
             "  " + f"{'model':<34}" + "".join(f"{m[k]:9.1f}" for k in shown)]
    for name, b in result["baselines"].items():
        lines.append("  " + f"{name:<34}" + "".join(f"{b[k]:9.1f}" if k in b else f"{'-':>9}" for k in shown))
    examples = list(result["predictions"].items())[:3]
    lines += [f"  e.g. {vid}: {text!r}" for vid, text in examples]
    return "\n".join(lines)
