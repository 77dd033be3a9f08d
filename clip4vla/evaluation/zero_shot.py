"""Zero-shot tri-modal retrieval: text->audio, video->audio, text->video on a held-out split.

Used for validation during pre-training and for the final report. Every task is scored on the
same clips (those with readable frames and an audio track), so one chance level applies; media-only
clips (a pre-training manifest's rows without a caption) are left out of the text tasks (NaN when
the split has no caption).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clip4vla.data.dataset import TriModalDataset, usable_rows
from clip4vla.evaluation.encode import encode_batches
from clip4vla.evaluation.retrieval import RANK_METRICS, retrieval_metrics
from clip4vla.precision import autocast

TASKS = {"t2a": ("text", "audio"), "v2a": ("video", "audio"), "t2v": ("text", "video")}


def chance_level(n: int) -> dict[str, float]:
    """Expected R@K (percent) and median rank of a random ranking over n candidates."""
    return {"R1": 100.0 / n, "R5": 100.0 * min(5, n) / n, "R10": 100.0 * min(10, n) / n, "MedR": (n + 1) / 2}


def encode_dataset(
    model: torch.nn.Module, dataset: TriModalDataset, batch_size: int, device: torch.device, precision: str = "fp32"
) -> dict[str, torch.Tensor]:
    """Unit-norm global text/video/audio features of every clip, plus which clips are usable."""

    def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        with autocast(device, precision):
            text = model.encode_text(batch["text"].to(device))
            _, video = model.encode_video(batch["frames"].to(device), batch["frame_mask"].to(device))
            _, audio = model.encode_audio(
                batch["audio"].to(device), batch["audio_mask"].to(device), batch["audio_type"].to(device)
            )
        return {"text": F.normalize(text.float(), dim=-1), "video": F.normalize(video.float(), dim=-1),
                "audio": F.normalize(audio.float(), dim=-1), "usable": usable_rows(batch),
                "has_text": batch["has_text"]}

    return encode_batches(dataset, batch_size, step)


def zero_shot_retrieval(
    model: torch.nn.Module, dataset: TriModalDataset, batch_size: int, device: torch.device, precision: str = "fp32"
) -> dict[str, Any]:
    """R@1/5/10, MedR and MeanR for t2a, v2a, t2v, next to the chance level of the same pool."""
    features = encode_dataset(model, dataset, batch_size, device, precision)
    usable = features["usable"]
    n = int(usable.sum())
    if n == 0:
        raise ValueError("no clip of the evaluation split has both frames and audio")
    # media-only clips (a pre-training manifest's rows without a caption) are left out of the text tasks
    with_text = usable & features["has_text"]
    retrieval = {}
    for task, (query, target) in TASKS.items():
        rows = with_text if query == "text" else usable
        if not rows.any():
            retrieval[task] = {k: float("nan") for k in RANK_METRICS}
            continue
        sim = features[query][rows] @ features[target][rows].T  # [n, n]
        metrics = retrieval_metrics(sim)
        retrieval[task] = {k: float(metrics[k]) for k in RANK_METRICS}
    return {
        "retrieval": retrieval,
        "chance": chance_level(n),
        "n_clips": n,
        "n_skipped": int(len(usable) - n),
    }
