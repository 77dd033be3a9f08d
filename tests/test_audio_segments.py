"""to_segments: golden parity, padding, standardisation, selection, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clip4vla.audio import empty_segments, log_mel, to_segments
from clip4vla.audio.segments import cut_segments, select_segments, standardise_segments

GOLDEN = Path(__file__).parent / "fixtures" / "audio_frontend.npz"
CASES = ["sine440_1s_mono", "chirp_3p7s_stereo", "whitenoise_2p5s_mono", "speech_espeak_mono"]


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


def our_logmel(golden, name: str) -> torch.Tensor:
    wav = golden[f"{name}__wav"]
    wav = np.stack([wav, wav]) if wav.ndim == 1 else wav.T
    return log_mel(torch.from_numpy(np.ascontiguousarray(wav)), frontend="reference")


def marked(n_frames: int) -> torch.Tensor:
    """A spectrogram whose frame t holds the value t + 1 (so segments are recognisable)."""
    rows = torch.arange(1, n_frames + 1, dtype=torch.float32)
    return rows[None, :, None].expand(3, n_frames, 224).clone()


# --------------------------------------------------------------------------- golden parity


@pytest.mark.parametrize("source", ["golden_logmel", "our_logmel"])
@pytest.mark.parametrize("name", CASES)
def test_frames_match_golden(golden, name, source):
    spec = torch.from_numpy(golden[f"{name}__logmel"]) if source == "golden_logmel" else our_logmel(golden, name)
    segments, mask = to_segments(spec)
    expected = torch.from_numpy(golden[f"{name}__frames"].astype(np.float32))
    assert segments.shape == expected.shape and mask.all() and mask.dtype == torch.bool
    torch.testing.assert_close(segments, expected, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", CASES)
def test_segment_statistics_match_golden(golden, name):
    _, mean, std = standardise_segments(cut_segments(our_logmel(golden, name)), return_stats=True)
    torch.testing.assert_close(mean, torch.from_numpy(golden[f"{name}__seg_mean"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.from_numpy(golden[f"{name}__seg_std"]), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- cutting and padding


def test_last_segment_is_zero_padded_before_standardisation():
    raw = cut_segments(marked(300))
    assert raw.shape == (2, 3, 224, 224)
    assert torch.equal(raw[1, :, :76], marked(300)[:, 224:].expand(3, 76, 224))
    assert torch.equal(raw[1, :, 76:], torch.zeros(3, 148, 224))       # 0-valued rows, as REF


@pytest.mark.parametrize("n_frames, n_segments", [(1, 1), (223, 1), (224, 1), (225, 2), (448, 2), (449, 3)])
def test_segment_count_has_no_extra_segment_at_multiples_of_224(n_frames, n_segments):
    segments, mask = to_segments(marked(n_frames))
    assert segments.shape == (n_segments, 3, 224, 224) and mask.shape == (n_segments,)


def test_each_plane_is_standardised():
    g = torch.Generator().manual_seed(0)
    spec = torch.randn(3, 500, 224, generator=g) * torch.tensor([5.0, 20.0, 1.0])[:, None, None] + 40
    segments, _ = to_segments(spec)
    std, mean = torch.std_mean(segments, dim=(-2, -1), correction=0)
    torch.testing.assert_close(mean, torch.zeros(3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(3, 3), atol=1e-5, rtol=0)


def test_constant_plane_becomes_zeros_not_rounding_noise():
    spec = torch.full((3, 224, 224), float(np.log(np.finfo(np.float32).eps)))
    segments, _ = to_segments(spec)
    assert torch.equal(segments, torch.zeros(1, 3, 224, 224))


# --------------------------------------------------------------------------- selection


def segment_ids(spec: torch.Tensor, **kwargs) -> list[int]:
    segments, mask = to_segments(spec, **kwargs)
    # map each kept segment back to its index by comparing with every full segment
    every, _ = to_segments(spec)
    ids = []
    for k in range(segments.shape[0]):
        if not mask[k]:
            continue
        matches = [i for i in range(every.shape[0]) if torch.equal(every[i], segments[k])]
        assert len(matches) >= 1
        ids.append(matches[0])
    return ids


def distinct(n_segments: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n_segments)
    return torch.randn(3, n_segments * 224, 224, generator=g)


def test_centre_crop_is_contiguous_and_centred():
    assert segment_ids(distinct(7), max_segments=3) == [2, 3, 4]
    assert segment_ids(distinct(8), max_segments=3) == [2, 3, 4]                  # REF: int((8-3)/2)


def test_other_selections():
    spec = distinct(10)
    assert segment_ids(spec, max_segments=4, selection="uniform") == [0, 3, 6, 9]
    assert segment_ids(spec, max_segments=4, selection="head") == [0, 1, 2, 3]
    assert segment_ids(spec, max_segments=4, selection="tail") == [6, 7, 8, 9]
    assert select_segments(10, 3, "uniform").tolist() == [0, 4, 9]


def test_padding_to_max_segments():
    spec = distinct(2)
    segments, mask = to_segments(spec, max_segments=5)
    full, _ = to_segments(spec)
    assert segments.shape == (5, 3, 224, 224)
    assert mask.tolist() == [True, True, False, False, False]
    assert torch.equal(segments[:2], full) and torch.equal(segments[2:], torch.zeros(3, 3, 224, 224))


def test_empty_segments():
    segments, mask = empty_segments(6)
    assert segments.shape == (6, 3, 224, 224) and not segments.any()
    assert mask.dtype == torch.bool and mask.shape == (6,) and not mask.any()


def test_batched_equals_per_clip():
    g = torch.Generator().manual_seed(3)
    batch = torch.randn(2, 3, 700, 224, generator=g)
    segments, mask = to_segments(batch, max_segments=3)
    assert segments.shape == (2, 3, 3, 224, 224) and mask.shape == (2, 3)
    for i in range(2):
        single, single_mask = to_segments(batch[i], max_segments=3)
        torch.testing.assert_close(segments[i], single)
        assert torch.equal(mask[i], single_mask)


@pytest.mark.parametrize("bad", [torch.zeros(3, 10, 128), torch.zeros(10, 224), torch.zeros(3, 0, 224)])
def test_bad_shapes(bad):
    with pytest.raises(ValueError):
        to_segments(bad)


def test_bad_options():
    with pytest.raises(ValueError, match="selection"):
        to_segments(distinct(2), max_segments=1, selection="random")
    with pytest.raises(ValueError, match="max_segments"):
        to_segments(distinct(2), max_segments=0)
