"""Which 1-fps frames a clip keeps, and in which order.

Shared by the raw-video route (``decode.load_video_frames``) and the prepared route
(``decode.load_prepared_frames``): both first find the *available seconds* of a clip, then call
:func:`choose_seconds`, so the two routes pick exactly the same frames.

The 1-fps rule (one definition, used by decoding and by ``clip4vla.data.prepare``):

* a frame's time is ``t = (pts - origin) * time_base`` seconds, ``origin`` = the stream's start
  time (so containers whose clock does not start at 0 still sample at 0 s, 1 s, ...);
* the frame kept for second ``s`` (an integer >= 0) is the **first frame with
  ``s <= t + EPS < s + 1``** ("the frame at/after each whole second"). A second without any frame
  (a gap in a variable-frame-rate stream, or the end of the video) has no frame: it is skipped,
  never filled with a neighbour's frame;
* a span ``[start, end)`` keeps the seconds whose 1-s bin ``[s, s+1)`` overlaps it, i.e.
  ``floor(start) <= s < ceil(end)`` (REF CLIP4Clip also starts at ``int(start)``). So a span always
  has at least one candidate second, and the prepared files named by ``s`` answer any span.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["EPS", "SAMPLINGS", "ORDERS", "second_of", "span_bounds", "choose_seconds", "pad_frames"]

# Timestamps are rounded by containers (e.g. 1/90000 clocks): a frame stamped 0.99995 s belongs to
# second 1. One millisecond is far below any real frame interval.
EPS = 1e-3
SAMPLINGS = ("uniform", "head", "tail")
ORDERS = ("normal", "reversed", "shuffled")


def second_of(t: float) -> int:
    """The 1-s bin a frame at time ``t`` (seconds from the stream origin) falls in."""
    return math.floor(t + EPS)


def span_bounds(start: float | None, end: float | None) -> tuple[int, int | None]:
    """``(first second, end second exclusive or None)`` of the bins overlapping ``[start, end)``."""
    if start is not None and (not math.isfinite(start) or start < 0):
        raise ValueError(f"span start must be a finite number >= 0, got {start}")
    if end is not None and not math.isfinite(end):
        raise ValueError(f"span end must be finite, got {end}")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"span end ({end}) must be greater than start ({start})")
    lo = math.floor(start) if start is not None else 0
    hi = math.ceil(end) if end is not None else None
    return lo, hi


def choose_seconds(
    seconds: Sequence[int],
    max_frames: int,
    sampling: str = "uniform",
    order: str = "normal",
    generator: torch.Generator | None = None,
) -> list[int]:
    """Pick at most ``max_frames`` of the available ``seconds`` (ascending) and order them.

    ``uniform`` keeps ``np.linspace(0, n-1, max_frames).astype(int)`` (truncation, as REF) when
    there are more than ``max_frames``; ``head``/``tail`` keep the first/last ``max_frames``.
    ``reversed``/``shuffled`` are the frame-order ablations; shuffling draws from ``generator``
    (a seeded ``torch.Generator`` makes it reproducible).
    """
    if max_frames <= 0:
        raise ValueError(f"max_frames must be positive, got {max_frames}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    secs = sorted(seconds)
    n = len(secs)
    if n > max_frames:
        if sampling == "uniform":
            secs = [secs[i] for i in np.linspace(0, n - 1, max_frames).astype(int)]
        elif sampling == "head":
            secs = secs[:max_frames]
        else:
            secs = secs[n - max_frames :]
    if order == "reversed":
        secs = secs[::-1]
    elif order == "shuffled":
        perm = torch.randperm(len(secs), generator=generator).tolist()
        secs = [secs[i] for i in perm]
    return secs


def pad_frames(frames: torch.Tensor, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad ``[K,3,S,S]`` to ``[max_frames,3,S,S]``; mask is True on the K real frames."""
    k = frames.shape[0]
    out = frames.new_zeros((max_frames, *frames.shape[1:]))
    out[:k] = frames
    mask = torch.zeros(max_frames, dtype=torch.bool)
    mask[:k] = True
    return out, mask
