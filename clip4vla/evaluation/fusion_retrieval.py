"""Text-video retrieval with a fusion head: encode every video and every caption once, then score.

Used for validation and test during fine-tuning and by ``scripts/evaluate_retrieval.py``. Every
caption of a clip is a query (multi-caption ground truth: VATEX 10, AudioCaps 5); videos are the
candidates. Scores are streamed in chunks of captions (``streamed_retrieval_metrics``), so a
large set never holds its ``[N_text, N_video]`` matrix — except L2L, whose pair scores are
computed once and kept (``N_text x N_video`` floats; the transformer pass per pair is the cost).

Which clips take part depends on the modality: ``v`` needs frames, ``a`` needs an audio track,
``av`` either (a silent clip is scored with vision alone). Unreadable clips take no part; the
counts are in the result.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from clip4vla.data.dataset import TriModalDataset
from clip4vla.evaluation.encode import encode_batches
from clip4vla.evaluation.retrieval import streamed_retrieval_metrics
from clip4vla.models.audio import resolve_audio_type
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.fusion import FusionHead, has_modality
from clip4vla.precision import autocast
from clip4vla.text import tokenize

__all__ = ["EncodedSet", "encode_retrieval_set", "evaluate_fusion_retrieval", "format_retrieval_table",
           "retrieval_summary"]

METRIC_KEYS = ("R1", "R5", "R10", "MedR", "MeanR")
# L2L keeps its pair scores: refuse sets whose matrix would not fit comfortably
L2L_MAX_PAIRS = 50_000_000


@dataclasses.dataclass
class EncodedSet:
    """Per clip: frame and segment features with masks; per caption: its tokens and clip index."""

    frames: torch.Tensor  # [V, F, D]
    frame_mask: torch.Tensor  # [V, F]
    segments: torch.Tensor  # [V, L, D]
    segment_mask: torch.Tensor  # [V, L]
    readable: torch.Tensor  # [V] bool: the media could be read
    tokens: torch.Tensor  # [T, S]
    text_to_video: torch.Tensor  # [T]
    video_ids: list[str]


@torch.no_grad()
def encode_retrieval_set(model: CLIP4VLA, dataset: TriModalDataset, batch_size: int, device: torch.device,
                         precision: str, audio_type: Any) -> EncodedSet:
    """Encode every clip's frames and segments once, and tokenize every caption."""

    def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        with autocast(device, precision):
            frames, segments = model.encode_media(
                batch["frames"].to(device), batch["frame_mask"].to(device), batch["audio"].to(device),
                batch["audio_mask"].to(device), resolve_audio_type(audio_type, batch["audio_type"].to(device)),
            )
        return {"frames": frames, "frame_mask": batch["frame_mask"], "segments": segments,
                "segment_mask": batch["audio_mask"], "readable": batch["valid"]}

    parts = encode_batches(dataset, batch_size, step)
    captions = [(i, c) for i, record in enumerate(dataset.records) for c in record.captions]
    tokens = tokenize([c for _, c in captions], context_length=dataset.options.inputs.max_words, truncate=True)
    return EncodedSet(
        **parts,
        tokens=tokens,
        text_to_video=torch.tensor([i for i, _ in captions], dtype=torch.long),
        video_ids=[r.video_id for r in dataset.records],
    )


def _pool(encoded: EncodedSet, modality: str) -> torch.Tensor:
    """The clips that can take part in ``modality`` (bool ``[V]``)."""
    return has_modality(encoded.frame_mask, encoded.segment_mask, modality) & encoded.readable


@torch.no_grad()
def _score(model: CLIP4VLA, head: FusionHead, encoded: EncodedSet, modality: str, scale: float,
           device: torch.device, precision: str, batch_size: int) -> tuple[Any, int, int, torch.Tensor]:
    """The score function of one modality's pool, and the pool's sizes and caption -> video map."""
    keep = _pool(encoded, modality)
    index = torch.full((len(keep),), -1, dtype=torch.long)
    index[keep] = torch.arange(int(keep.sum()))
    text_keep = keep[encoded.text_to_video]
    text_to_video = index[encoded.text_to_video[text_keep]]
    tokens = encoded.tokens[text_keep]

    def video_side(rows: slice) -> dict[str, torch.Tensor]:
        sel = {k: getattr(encoded, k)[keep][rows].to(device) for k in ("frames", "frame_mask", "segments", "segment_mask")}
        return head.video_side(sel["frames"], sel["frame_mask"], sel["segments"], sel["segment_mask"], modality)

    def texts(rows: slice) -> dict[str, torch.Tensor]:
        with autocast(device, precision):
            side = model.fusion_text(tokens[rows].to(device))
        return {k: v.float() if v.is_floating_point() else v for k, v in side.items()}

    n_video, n_text = int(keep.sum()), len(tokens)
    videos = _cat_sides([video_side(slice(i, i + batch_size)) for i in range(0, n_video, batch_size)])
    if head.mode == "l2l":
        if n_text * n_video > L2L_MAX_PAIRS:
            raise ValueError(f"L2L over {n_text} x {n_video} pairs is too many to score (limit {L2L_MAX_PAIRS})")
        matrix = torch.cat([head.similarity(texts(slice(i, i + batch_size)), videos, scale).cpu()
                            for i in range(0, n_text, batch_size)])
        return (lambda rows: matrix[rows]), n_text, n_video, text_to_video
    text_all = _cat_sides([texts(slice(i, i + batch_size)) for i in range(0, n_text, batch_size)])
    return (lambda rows: head.similarity({k: v[rows] for k, v in text_all.items()}, videos, scale).cpu()), \
        n_text, n_video, text_to_video


def _cat_sides(sides: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([s[k] for s in sides]) for k in sides[0]}


def evaluate_fusion_retrieval(
    model: CLIP4VLA,
    encoded: EncodedSet,
    modalities: Sequence[str],
    scale: float,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 256,
) -> dict[str, Any]:
    """t2v and v2t R@1/5/10, MedR, MeanR per modality, with the pool sizes."""
    if "fusion" not in model.heads:
        raise ValueError("the model has no fusion head: evaluate a model fine-tuned for retrieval "
                         "(scripts/finetune_retrieval.py), or give --fusion g2g to score global features")
    head = model.heads["fusion"]
    results: dict[str, Any] = {}
    for modality in modalities:
        score_rows, n_text, n_video, text_to_video = _score(model, head, encoded, modality, scale, device, precision,
                                                            batch_size)
        if n_video == 0:
            raise ValueError(f"no clip of the split can take part in modality {modality!r} "
                             f"({'no audio track' if modality == 'a' else 'no readable media'})")
        t2v, v2t = streamed_retrieval_metrics(score_rows, n_text, n_video, text_to_video)
        results[modality] = {
            "t2v": {k: float(t2v[k]) for k in METRIC_KEYS},
            "v2t": {k: float(v2t[k]) for k in METRIC_KEYS},
            "n_videos": n_video,
            "n_texts": n_text,
        }
    return {
        "modalities": results,
        "n_clips": len(encoded.video_ids),
        "n_unreadable": int((~encoded.readable).sum()),
        "n_silent": int((encoded.readable & ~encoded.segment_mask.any(1)).sum()),
    }


def retrieval_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON object a retrieval script prints last, whichever script (one schema).

    ``skipped`` counts training samples skipped for unreadable media: 0 for a script that only
    evaluates (its unreadable clips are ``n_unreadable``).
    """
    return {"split": result["split"], "fusion": result["fusion"], **result["modalities"],
            "n_unreadable": result["n_unreadable"], "n_silent": result["n_silent"], "skipped": result.get("skipped", 0)}


def format_retrieval_table(result: dict[str, Any]) -> str:
    lines = [
        f"text<->video retrieval on the {result['split']} split ({result['fusion'].upper()}, {result['n_clips']} clips, "
        f"{result['n_silent']} without audio, {result['n_unreadable']} unreadable):",
        f"  {'modality':<9}{'task':<6}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'MedR':>7}{'MeanR':>8}  {'videos':>7}{'texts':>7}",
    ]
    for modality, m in result["modalities"].items():
        for direction in ("t2v", "v2t"):
            r = m[direction]
            lines.append(f"  {modality.upper():<9}{direction:<6}{r['R1']:7.1f}{r['R5']:7.1f}{r['R10']:7.1f}"
                         f"{r['MedR']:7.1f}{r['MeanR']:8.1f}  {m['n_videos']:>7}{m['n_texts']:>7}")
    return "\n".join(lines)
