"""Spectrogram masking for the intra-modal (audio <-> masked audio) loss.

The mask is drawn on the full dB spectrogram ``[3, T, 224]`` *before* segmentation, and
``segments_with_masked_copy`` cuts the original and the masked copy with the same segment
indices, so segment ``i`` of one is the masked version of segment ``i`` of the other.

Two modes:

``"paper"`` (default; paper §3.3, after TERA, Liu, Li and Lee 2021)
    Along time, every frame starts a mask with probability 15 %; along the mel axis every bin
    starts one with probability 5 %. A mask started at step ``s`` covers steps
    ``s .. s + 9``: the paper's "the subsequent 10 consecutive steps from the start step",
    read as 10 steps *including* the start (TERA's convention). Masks may overlap and are
    cut at the edge. Expected masked fraction: ``1 - 0.85**10 = 80 %`` of the frames and
    ``1 - 0.95**10 = 40 %`` of the bins (so about 88 % of the cells).

``"reference"`` (REF ``rawaudio_util.spec_augment``)
    ``floor(0.05 * 224) = 11`` frequency masks and ``floor(0.15 * T)`` time masks, each of
    width ``w`` uniform in ``{0, ..., 9}`` starting at ``s`` uniform in ``{0, ..., size - w}``.

Masked cells are set to 0 (REF and paper). The same time and frequency masks are used for
all three channels: L, M and R are views of one sound, and a mask that differed between
them would let the encoder read the hidden cells from a neighbouring channel (REF also
masks ``spec[:, t0:t1, :]``, all channels at once).

Everything is drawn from the caller's ``torch.Generator`` (on its device; the masks are
moved to the spectrogram's device), so a seed reproduces the masks; no Python loop runs
over steps or masks.
"""

from __future__ import annotations

import torch

from clip4vla.audio.segments import to_segments

__all__ = ["MASK_MODES", "mask_spectrogram", "segments_with_masked_copy", "span_mask"]

MASK_MODES = ("paper", "reference")
PAPER_TIME_PROB = 0.15
PAPER_FREQ_PROB = 0.05
SPAN = 10                 # paper: steps covered by one mask; REF: widths 0..SPAN-1


def mask_spectrogram(
    log_mel: torch.Tensor,
    generator: torch.Generator,
    mode: str = "paper",
    value: float = 0.0,
) -> torch.Tensor:
    """Masked copy of ``log_mel`` ``[3, T, F]`` or ``[B, 3, T, F]`` (one mask per clip)."""
    if not isinstance(log_mel, torch.Tensor) or log_mel.dim() not in (3, 4):
        shape = list(log_mel.shape) if isinstance(log_mel, torch.Tensor) else type(log_mel).__name__
        raise ValueError(f"log_mel must be [3, T, F] or [B, 3, T, F], got {shape}")
    if mode not in MASK_MODES:
        raise ValueError(f"unknown masking mode {mode!r}; choose one of {MASK_MODES}")
    lead = tuple(log_mel.shape[:-3])                    # () or (B,)
    n_time, n_freq = log_mel.shape[-2:]
    if mode == "paper":
        time_mask = _paper_mask(lead, n_time, PAPER_TIME_PROB, generator)
        freq_mask = _paper_mask(lead, n_freq, PAPER_FREQ_PROB, generator)
    else:
        time_mask = _reference_mask(lead, n_time, int(n_time * PAPER_TIME_PROB), generator)
        freq_mask = _reference_mask(lead, n_freq, int(n_freq * PAPER_FREQ_PROB), generator)
    time_mask = time_mask.to(log_mel.device)
    freq_mask = freq_mask.to(log_mel.device)
    cells = time_mask.unsqueeze(-1) | freq_mask.unsqueeze(-2)           # [..., T, F]
    return log_mel.masked_fill(cells.unsqueeze(-3), value)             # same mask on 3 channels


def segments_with_masked_copy(
    log_mel: torch.Tensor,
    max_segments: int | None,
    selection: str,
    generator: torch.Generator,
    mode: str = "paper",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(segments, mask, masked_segments)``, the same segment indices for both copies.

    ``log_mel`` is ``[3, T, F]`` (or a batch ``[B, 3, T, F]``, one mask per clip); the
    outputs are as :func:`~clip4vla.audio.segments.to_segments` returns them.

    The masked copy is standardised per segment like the original (its statistics include
    the zeroed cells), exactly what the encoder would get from a masked recording.
    """
    masked = mask_spectrogram(log_mel, generator, mode)
    if log_mel.dim() == 3:
        both, mask = to_segments(torch.stack((log_mel, masked)), max_segments, selection)
        return both[0], mask[0], both[1]
    batch = log_mel.shape[0]
    both, mask = to_segments(torch.cat((log_mel, masked)), max_segments, selection)
    return both[:batch], mask[:batch], both[batch:]


def span_mask(starts: torch.Tensor, widths: torch.Tensor, size: int) -> torch.Tensor:
    """Union of spans ``[start, start + width)`` -> bool ``[..., size]``.

    ``starts``/``widths`` are ``[..., K]``; spans are cut at ``size``. A difference array
    (+1 at each start, -1 at each end, cumulative sum > 0) marks the union in O(K + size).
    """
    lead = starts.shape[:-1]
    ends = (starts + widths).clamp(max=size)
    delta = torch.zeros(*lead, size + 1, dtype=torch.int32, device=starts.device)
    delta.scatter_add_(-1, starts.clamp(max=size), torch.ones_like(starts, dtype=torch.int32))
    delta.scatter_add_(-1, ends, torch.full_like(ends, -1, dtype=torch.int32))
    return delta.cumsum(-1)[..., :size] > 0


def _paper_mask(lead: tuple[int, ...], size: int, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Each step starts a span of ``SPAN`` steps with probability ``prob``."""
    is_start = torch.rand(*lead, size, generator=generator, device=generator.device) < prob
    steps = torch.arange(size, device=generator.device).expand(*lead, size)
    # steps that start no mask get start=size (an empty span past the end)
    starts = torch.where(is_start, steps, torch.full_like(steps, size))
    return span_mask(starts, torch.full_like(starts, SPAN), size)


def _reference_mask(lead: tuple[int, ...], size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` spans of width uniform in {0..SPAN-1}, start uniform in {0..size-width}."""
    if count == 0:
        return torch.zeros(*lead, size, dtype=torch.bool, device=generator.device)
    # REF: width = int(uniform(0, 10)), start = randint(0, size - width)
    widths = (torch.rand(*lead, count, generator=generator, device=generator.device) * SPAN).long()
    widths = widths.clamp(max=size)
    room = (size - widths + 1).to(torch.float64)
    starts = (torch.rand(*lead, count, generator=generator, dtype=torch.float64,
                         device=generator.device) * room).long()
    return span_mask(starts, widths, size)
