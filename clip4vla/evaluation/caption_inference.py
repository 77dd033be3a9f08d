"""Captioning a split with a trained model, and scoring the captions (paper Tables 3-4).

``caption_videos`` decodes a caption for every readable clip (beam search or greedy, cached keys
and values); ``score_captions`` writes them, then scores BLEU-4 / METEOR / ROUGE-L / CIDEr next
to three baselines that never look at the video: the most frequent training caption, another
video's reference caption, and the model's own captions shuffled across videos. Fine-tuning
(validation and test) and ``scripts/evaluate_caption.py`` both go through here, so their files,
tables and JSON have one layout.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from clip4vla.data.dataset import TriModalDataset
from clip4vla.evaluation.captioning import caption_metrics
from clip4vla.evaluation.encode import encode_batches
from clip4vla.files import write_text_atomic
from clip4vla.models.audio import resolve_audio_type
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.decoding import generate
from clip4vla.models.fusion import select_modality
from clip4vla.precision import autocast
from clip4vla.text import default_tokenizer

__all__ = ["caption_baselines", "caption_references", "caption_summary", "caption_videos", "format_caption_table",
           "score_captions"]

log = logging.getLogger(__name__)


def caption_videos(model: CLIP4VLA, dataset: TriModalDataset, modality: str, audio_type: Any, beam: int,
                   length_penalty: float, device: torch.device, precision: str = "fp32", batch_size: int = 16,
                   cached: bool = True) -> tuple[dict[str, str], int]:
    """A caption for every readable clip of ``dataset`` (``{video_id: text}``) and the unreadable count."""
    tokenizer = default_tokenizer()

    def step(batch: dict[str, Any]) -> dict[str, Any]:
        readable = batch["valid"]
        ids = [vid for vid, ok in zip(batch["video_id"], readable.tolist()) if ok]
        if not ids:
            return {"ids": [], "captions": [], "unreadable": ~readable}
        frame_mask, audio_mask = select_modality(batch["frame_mask"][readable], batch["audio_mask"][readable], modality)
        with autocast(device, precision):
            frames, segments = model.encode_media(
                batch["frames"][readable].to(device), frame_mask.to(device), batch["audio"][readable].to(device),
                audio_mask.to(device), resolve_audio_type(audio_type, batch["audio_type"][readable].to(device)), modality,
            )
            words = generate(model, frames, frame_mask.to(device), segments, audio_mask.to(device), beam=beam,
                             length_penalty=length_penalty, cached=cached)
        return {"ids": ids, "captions": [tokenizer.decode(w).strip() for w in words],
                "unreadable": ~readable}

    out = encode_batches(dataset, batch_size, step)
    predictions = dict(zip(out.get("ids", []), out.get("captions", [])))
    unreadable = int(out["unreadable"].sum()) if "unreadable" in out else 0
    return predictions, unreadable


def caption_references(dataset: TriModalDataset, predictions: dict[str, str]) -> dict[str, list[str]]:
    """Every reference caption of each captioned video (unreadable clips have no prediction)."""
    return {r.video_id: list(r.captions) for r in dataset.records if r.video_id in predictions}


def score_captions(split: str, beam: int, modality: str, predictions: dict[str, str],
                   references: dict[str, list[str]], unreadable: int, train_captions: list[str], path: Path,
                   **extra: Any) -> dict[str, Any]:
    """Metrics and video-blind baselines of decoded captions, all written with them to ``path``.

    The captions are written first, before any scoring: decoding is the slow part, and a scorer
    that fails (Java) must not lose it. Fine-tuning and ``scripts/evaluate_caption.py`` both
    score here, so their files and results have one layout.
    """
    head = {"split": split, "beam": beam, "modality": modality}
    tail = {"n_unreadable": unreadable, "predictions": predictions, **extra}
    write_text_atomic(path, json.dumps({**head, **tail, "references": references}, indent=1))
    log.info("%d generated captions with their references: %s", len(predictions), path)
    result = {**head, "metrics": caption_metrics(predictions, references),
              "baselines": caption_baselines(predictions, references, train_captions), **tail}
    write_text_atomic(path, json.dumps({**result, "references": references}, indent=1))
    return result


def caption_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON object a captioning script prints last, whichever script (one schema).

    ``skipped`` counts training samples skipped for unreadable media: 0 for a script that only
    evaluates (its unreadable test clips are ``n_unreadable``).
    """
    return {"split": result["split"], **result["metrics"], "baselines": result["baselines"],
            "n_unreadable": result["n_unreadable"], "skipped": result.get("skipped", 0)}


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
