"""One pass over an evaluation set: batches in record order, per-batch outputs gathered on the CPU.

Zero-shot retrieval, fusion retrieval, the audio-type sweep, captioning and the audio pairing
differ only in what they compute from a batch; the walk over the data (no shuffling, one worker
setting, no autograd, tensors moved off the device and concatenated, lists extended) is this
function, so a fix to it reaches every evaluation at once.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from tqdm import tqdm

from clip4vla.data.dataset import TriModalDataset, collate_samples

__all__ = ["encode_batches"]

Batch = dict[str, Any]


@torch.no_grad()
def encode_batches(dataset: TriModalDataset, batch_size: int, step: Callable[[Batch], dict[str, Any]],
                   num_workers: int = 0, desc: str | None = None) -> dict[str, Any]:
    """``{key: every batch's step(batch)[key] joined}`` over ``dataset`` in order.

    ``step`` returns tensors (concatenated along the first dimension, on the CPU, floating
    point as float32 so mixed-precision runs compare like fp32 ones) or lists (extended).
    ``desc`` shows a progress bar with that label.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_samples,
                                         num_workers=num_workers)
    parts: dict[str, list[Any]] = {}
    for batch in tqdm(loader, desc=desc, unit="batch", disable=desc is None):
        for key, value in step(batch).items():
            if isinstance(value, torch.Tensor):
                value = value.float().cpu() if value.is_floating_point() else value.cpu()
            parts.setdefault(key, []).append(value)
    return {key: torch.cat(values) if isinstance(values[0], torch.Tensor) else [v for part in values for v in part]
            for key, values in parts.items()}
