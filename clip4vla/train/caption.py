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

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from clip4vla.config import CaptionConfig
from clip4vla.data.dataset import IGNORE_INDEX, SampleOptions, TriModalDataset
from clip4vla.evaluation.caption_inference import (
    caption_references,
    caption_summary,
    caption_videos,
    format_caption_table,
    score_captions,
)
from clip4vla.evaluation.captioning import caption_metrics, java_problem
from clip4vla.models.audio import resolve_audio_type
from clip4vla.models.captioner import CaptionGenerator
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.fusion import select_modality
from clip4vla.models.heads import attach_caption_head
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.text import default_tokenizer
from clip4vla.train.distributed import DistInfo
from clip4vla.train.task import Batch, DataSplits, Features, Task, TaskForward, task_datasets

__all__ = ["CaptionForward", "CaptionTask"]

log = logging.getLogger(__name__)


class CaptionForward(TaskForward):
    """Batch tensors -> next-word logits ``[B, S, vocab]``.

    Every feature feeds the generator together, so nothing is split off as ``clip_features``:
    frozen towers run under the model's own ``no_grad`` (``CLIP4VLA.clip_frozen``).
    """

    def __init__(self, model: CLIP4VLA, head: CaptionGenerator, modality: str, audio_type: Any) -> None:
        super().__init__(model)
        self.head, self.modality, self.audio_type = head, modality, audio_type

    def trainable_features(self, caption_input: torch.Tensor, caption_target: torch.Tensor, frames: torch.Tensor,
                           frame_mask: torch.Tensor, audio: torch.Tensor, audio_mask: torch.Tensor,
                           audio_type: torch.Tensor, **_: torch.Tensor) -> Features:
        text = self.model.encode_text_tokens(caption_input)[0]  # [B, S, D], causal: no peeking ahead
        frame_mask, audio_mask = select_modality(frame_mask, audio_mask, self.modality)
        frame_features, segment_features = self.model.encode_media(
            frames, frame_mask, audio, audio_mask, resolve_audio_type(self.audio_type, audio_type), self.modality,
        )
        logits = self.head(text, caption_target != IGNORE_INDEX, frame_features, frame_mask, segment_features,
                           audio_mask, self.model.clip.token_embedding.weight)
        return {"logits": logits}


class CaptionTask(Task):
    """Fine-tuning the Multimodal Caption Generator (paper §3.4, Tables 3-4)."""

    name = "caption"
    select_metric = "CIDEr"
    validation_metrics = {"CIDEr": "max"}
    shown_metrics = ("CIDEr",)
    trained_heads = ("caption",)
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

    def datasets(self) -> DataSplits:
        data = task_datasets(self.config, self.dist, "caption", self.options, self.options.evaluation(),
                              unfold_train=True)
        if self.dist.is_main:  # a broken Java shows now, not after training (it only costs METEOR and PTB tokens)
            java_problem()
        records = data.train.records  # a manifest lists its captions without building a record per row
        self.train_captions = records.all_captions() if hasattr(records, "all_captions") else \
            [c for r in records for c in r.captions]
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
        references = caption_references(dataset, predictions)
        if split == "val":  # CIDEr chooses best.pt; the slow METEOR is for the test
            return {"split": split, "metrics": caption_metrics(predictions, references, metrics=("CIDEr",))}
        return score_captions(split, beam, cc.modality, predictions, references, unreadable, self.train_captions,
                              Path(self.config.train.output_dir) / f"captions_{split}.json")

    def report(self, result: dict[str, Any]) -> str:
        return format_caption_table(result)

    def summary(self, result: dict[str, Any]) -> dict[str, Any]:
        return caption_summary(result)


