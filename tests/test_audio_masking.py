"""mask_spectrogram / segments_with_masked_copy: semantics, statistics, reproducibility."""

from __future__ import annotations

import pytest
import torch

from clip4vla.audio import mask_spectrogram, segments_with_masked_copy, to_segments
from clip4vla.audio.masking import span_mask


def spectrogram(t: int = 400, seed: int = 0, batch: int | None = None) -> torch.Tensor:
    """Random dB-like values, never exactly 0, so masked cells are recognisable."""
    g = torch.Generator().manual_seed(seed)
    shape = (3, t, 224) if batch is None else (batch, 3, t, 224)
    return torch.rand(shape, generator=g) * 50 + 10


def masked_cells(original: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    return (masked == 0) & (original != 0)


def runs(flags: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of True in a 1-D bool tensor as (start, length)."""
    out, start = [], None
    for i, f in enumerate(flags.tolist() + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start, i - start))
            start = None
    return out


@pytest.mark.parametrize("mode", ["paper", "reference"])
def test_same_mask_on_all_channels_and_only_zeros_change(mode):
    x = spectrogram()
    y = mask_spectrogram(x, torch.Generator().manual_seed(1), mode)
    cells = masked_cells(x, y)
    assert cells.any()
    assert torch.equal(cells[0], cells[1]) and torch.equal(cells[1], cells[2])
    assert torch.equal(y[~cells], x[~cells])
    # the mask is a union of whole time rows and whole mel columns
    rows, cols = cells[0].all(dim=1), cells[0].all(dim=0)
    assert torch.equal(cells[0], rows[:, None] | cols[None, :])


@pytest.mark.parametrize("mode", ["paper", "reference"])
def test_reproducible_and_input_untouched(mode):
    x = spectrogram()
    before = x.clone()
    a = mask_spectrogram(x, torch.Generator().manual_seed(7), mode)
    b = mask_spectrogram(x, torch.Generator().manual_seed(7), mode)
    c = mask_spectrogram(x, torch.Generator().manual_seed(8), mode)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)


def test_paper_mode_runs_are_at_least_ten_steps():
    # every mask covers its start step and the 9 after it, so every masked run is >= 10
    # steps long unless the spectrogram ends first
    x = spectrogram(t=3000)
    y = mask_spectrogram(x, torch.Generator().manual_seed(2), "paper")
    cells = masked_cells(x, y)[0]
    for axis_flags, size in [(cells.all(dim=1), 3000), (cells.all(dim=0), 224)]:
        found = runs(axis_flags)
        assert found
        assert all(length >= 10 or start + length == size for start, length in found)


def test_paper_mode_masked_fractions():
    # P(step masked) = 1 - (1 - p)^10 away from the start edge: 0.803 (time), 0.401 (mel)
    x = spectrogram(t=2000, batch=64)
    y = mask_spectrogram(x, torch.Generator().manual_seed(3), "paper")
    cells = masked_cells(x, y)[:, 0]                                  # [B, T, F]
    time_fraction = cells.all(dim=2)[:, 9:].float().mean()
    mel_fraction = cells.all(dim=1)[:, 9:].float().mean()
    assert float(time_fraction) == pytest.approx(1 - 0.85 ** 10, abs=0.01)
    assert float(mel_fraction) == pytest.approx(1 - 0.95 ** 10, abs=0.02)


def test_reference_mode_matches_a_loop_over_its_draws():
    # REF: floor(0.05*224)=11 mel masks then floor(0.15*T) time masks, width int(U(0,10)),
    # start randint(0, size - width); replay the same draws with a plain loop
    t = 97
    x = spectrogram(t=t)
    y = mask_spectrogram(x, torch.Generator().manual_seed(5), "reference")
    g = torch.Generator().manual_seed(5)
    expected = x.clone()
    draws = {}
    for axis, size, count in [("time", t, int(t * 0.15)), ("mel", 224, 11)]:
        widths = (torch.rand(count, generator=g) * 10).long()
        starts = (torch.rand(count, generator=g, dtype=torch.float64) * (size - widths + 1)).long()
        draws[axis] = list(zip(starts.tolist(), widths.tolist()))
    for start, width in draws["time"]:
        assert 0 <= width <= 9 and 0 <= start <= t - width
        expected[:, start:start + width, :] = 0
    for start, width in draws["mel"]:
        assert 0 <= width <= 9 and 0 <= start <= 224 - width
        expected[:, :, start:start + width] = 0
    assert torch.equal(y, expected)


def test_reference_mode_mask_counts():
    # at most floor(0.15 T) * 9 frames and 11 * 9 bins can be masked
    x = spectrogram(t=60)
    for seed in range(20):
        cells = masked_cells(x, mask_spectrogram(x, torch.Generator().manual_seed(seed), "reference"))[0]
        assert int(cells.all(dim=1).sum()) <= 9 * 9
        assert int(cells.all(dim=0).sum()) <= 11 * 9


def test_batched_masks_differ_per_clip():
    x = spectrogram(t=300, batch=4)
    y = mask_spectrogram(x, torch.Generator().manual_seed(4))
    cells = masked_cells(x, y)[:, 0]
    assert not torch.equal(cells[0], cells[1])
    assert y.shape == x.shape


def test_span_mask_union():
    starts = torch.tensor([[0, 5, 20], [11, 11, 2]])
    widths = torch.tensor([[3, 10, 4], [5, 0, 1]])
    expected = torch.zeros(2, 12, dtype=torch.bool)
    expected[0, 0:3] = True
    expected[0, 5:12] = True       # cut at the edge; the span starting at 20 is outside
    expected[1, 11:12] = True
    expected[1, 2:3] = True
    assert torch.equal(span_mask(starts, widths, 12), expected)


@pytest.mark.parametrize("max_segments, selection", [(None, "centre"), (2, "centre"), (3, "uniform"), (8, "centre")])
def test_masked_copy_uses_the_same_segments(max_segments, selection):
    x = spectrogram(t=5 * 224 - 17)
    segments, mask, masked = segments_with_masked_copy(x, max_segments, selection,
                                                       torch.Generator().manual_seed(9), "paper")
    expected_segments, expected_mask = to_segments(x, max_segments, selection)
    expected_masked, _ = to_segments(mask_spectrogram(x, torch.Generator().manual_seed(9), "paper"),
                                     max_segments, selection)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(segments, expected_segments)
    torch.testing.assert_close(masked, expected_masked)
    assert not torch.equal(segments[mask], masked[mask])
    assert not masked[~mask].any()


def test_masked_copy_batched():
    x = spectrogram(t=500, batch=2)
    segments, mask, masked = segments_with_masked_copy(x, 4, "centre", torch.Generator().manual_seed(1))
    assert segments.shape == masked.shape == (2, 4, 3, 224, 224) and mask.shape == (2, 4)
    torch.testing.assert_close(segments[1], to_segments(x[1], 4)[0])


def test_bad_arguments():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="mode"):
        mask_spectrogram(spectrogram(), g, mode="specaugment")
    with pytest.raises(ValueError):
        mask_spectrogram(torch.zeros(10, 224), g)
