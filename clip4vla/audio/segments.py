"""Log-mel spectrogram -> fixed-size 224x224 "images".

The spectrogram ``[3, T, 224]`` is cut along time into ``ceil(T / 224)`` segments of
``[3, 224, 224]``; the last one is zero-padded with 0-valued rows (0 dB / log-energy 0, as
REF's ``split_frame`` pads, not the spectrogram floor). REF appends a whole extra all-zero
segment when ``T`` is a multiple of 224; we do not copy that bug.

Each segment is standardised per channel over its 224x224 plane,
``(x - mean) / (std + 1e-10)`` with the population std and the padding rows included (REF
``audio_processor``); this, not the CLIP image mean/std, is what the audio encoder sees.

When a clip has more than ``max_segments`` segments, a contiguous centre crop is kept
(REF ``slice_framepos=2``, the default); ``"uniform"`` (evenly spaced indices, like the
video frames), ``"head"`` and ``"tail"`` are options.
"""

from __future__ import annotations

import torch

__all__ = ["SEGMENT_LENGTH", "SELECTIONS", "cut_segments", "empty_segments", "select_segments",
           "standardise_segments", "to_segments"]

SEGMENT_LENGTH = 224
SELECTIONS = ("centre", "uniform", "head", "tail")
_STD_EPS = 1e-10


def to_segments(
    log_mel: torch.Tensor,
    max_segments: int | None = None,
    selection: str = "centre",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[3, T, 224]`` -> ``(segments [L, 3, 224, 224], mask [L] bool)``.

    Without ``max_segments``, ``L = ceil(T / 224)`` and the mask is all True. With it, at most
    ``max_segments`` segments are kept (``selection`` decides which) and the output is padded
    with all-zero segments to exactly ``max_segments`` rows, mask False on the padding.

    A batch ``[B, 3, T, 224]`` of equal-length spectrograms is accepted too and gives
    ``([B, L, 3, 224, 224], [B, L])``; every clip then has the same segment indices.
    """
    _check_log_mel(log_mel)
    *lead, channels, t, bins = log_mel.shape
    n = -(-t // SEGMENT_LENGTH)
    index = select_segments(n, max_segments, selection)
    kept = index.numel()
    rows = kept if max_segments is None else max_segments
    # written in place: one copy of the kept frames, then standardised where they lie
    out = log_mel.new_empty(*lead, rows, channels, SEGMENT_LENGTH, bins)
    _copy_segments(log_mel, index, out[..., :kept, :, :, :])
    standardise_segments(out[..., :kept, :, :, :], inplace=True)
    out[..., kept:, :, :, :] = 0
    mask = torch.zeros(*lead, rows, dtype=torch.bool, device=log_mel.device)
    mask[..., :kept] = True
    return out, mask


def empty_segments(
    max_segments: int, n_channels: int = 3, size: int = SEGMENT_LENGTH,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-zero segments with an all-False mask, for a clip that has no audio."""
    if max_segments < 1:
        raise ValueError(f"max_segments must be >= 1, got {max_segments}")
    return (torch.zeros(max_segments, n_channels, size, size, dtype=dtype),
            torch.zeros(max_segments, dtype=torch.bool))


def cut_segments(log_mel: torch.Tensor) -> torch.Tensor:
    """``[..., C, T, 224]`` -> un-normalised ``[..., ceil(T/224), C, 224, 224]`` (zero padded)."""
    _check_log_mel(log_mel)
    *lead, channels, t, bins = log_mel.shape
    n = -(-t // SEGMENT_LENGTH)
    out = log_mel.new_empty(*lead, n, channels, SEGMENT_LENGTH, bins)
    _copy_segments(log_mel, torch.arange(n), out)
    return out


def standardise_segments(
    segments: torch.Tensor, return_stats: bool = False, inplace: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per segment and channel ``(x - mean) / (std + 1e-10)`` over the last two dims.

    Population std (ddof 0), padding rows included, as REF ``audio_processor``. Two-pass
    statistics (mean, then the norm of the deviations) after subtracting each plane's first
    value: the shift changes nothing mathematically, but makes a constant plane (silence)
    exactly 0 instead of float32 rounding noise divided by 1e-10. (``torch.std_mean`` is
    accurate too, but its Welford loop was >10x slower than the whole cut on our CPU.)
    With ``return_stats`` the float64 mean and std (``[..., C]``) are returned as well.
    """
    out = segments if inplace else segments.clone()
    first = out[..., :1, :1].clone()
    out.sub_(first)
    # Sums over a 224x224 plane: per row in float32 (224 terms, exact enough), rows in
    # float64. One flat float32 sum drifts by ~1e-4 relative, the golden tolerance itself.
    size = out.shape[-2] * out.shape[-1]
    mean = out.sum(dim=-1, keepdim=True).double().sum(dim=-2, keepdim=True) / size
    out.sub_(mean.to(out.dtype))
    row_norms = torch.linalg.vector_norm(out, dim=-1, keepdim=True).double()
    std = (row_norms.square().sum(dim=-2, keepdim=True) / size).sqrt()
    out.div_((std + _STD_EPS).to(out.dtype))
    if return_stats:
        return out, (mean + first.double())[..., 0, 0], std[..., 0, 0]
    return out


def _check_log_mel(log_mel: torch.Tensor) -> None:
    if not isinstance(log_mel, torch.Tensor) or log_mel.dim() not in (3, 4):
        shape = list(log_mel.shape) if isinstance(log_mel, torch.Tensor) else type(log_mel).__name__
        raise ValueError(f"log_mel must be [3, T, 224] or [B, 3, T, 224], got {shape}")
    if log_mel.shape[-1] != SEGMENT_LENGTH:
        raise ValueError(f"log_mel must have {SEGMENT_LENGTH} mel bins (last dim), got {list(log_mel.shape)}")
    if log_mel.shape[-2] < 1:
        raise ValueError(f"log_mel has no time frames: {list(log_mel.shape)}")


def _copy_segments(log_mel: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> None:
    """Write segments ``index`` (ascending) of ``[..., C, T, F]`` into ``out [..., k, C, 224, F]``.

    Only the last segment can be partial; its missing rows become 0 (REF ``split_frame``).
    """
    t = log_mel.shape[-2]
    n_full = t // SEGMENT_LENGTH
    full_ids = index[index < n_full]
    k = full_ids.numel()
    if k:
        frames = log_mel[..., :n_full * SEGMENT_LENGTH, :]
        full = frames.unflatten(-2, (n_full, SEGMENT_LENGTH)).movedim(-3, -4)   # view [..., n_full, C, 224, F]
        first, last = int(full_ids[0]), int(full_ids[-1]) + 1
        if last - first == k:            # a contiguous run: plain slicing, no gather copy
            out[..., :k, :, :, :] = full[..., first:last, :, :, :]
        else:
            out[..., :k, :, :, :] = full.index_select(-4, full_ids.to(log_mel.device))
    if k < index.numel():                # the partial last segment was kept
        rest = t - n_full * SEGMENT_LENGTH
        out[..., k, :, :rest, :] = log_mel[..., n_full * SEGMENT_LENGTH:, :]
        out[..., k, :, rest:, :] = 0


def select_segments(
    n: int, max_segments: int | None, selection: str = "centre"
) -> torch.Tensor:
    """Indices (``LongTensor``) of the segments kept out of ``n``; all of them if they fit."""
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of {SELECTIONS}")
    if max_segments is not None and max_segments < 1:
        raise ValueError(f"max_segments must be >= 1 or None, got {max_segments}")
    if max_segments is None or n <= max_segments:
        return torch.arange(n)
    if selection == "centre":
        first = (n - max_segments) // 2            # REF: int((n - max) / 2)
    elif selection == "head":
        first = 0
    elif selection == "tail":
        first = n - max_segments
    else:  # uniform: evenly spaced, rounded down like the video sampler (linspace, dtype=int)
        return torch.linspace(0, n - 1, max_segments, dtype=torch.float64).long()
    return torch.arange(first, first + max_segments)
