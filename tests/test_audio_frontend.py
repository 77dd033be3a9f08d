"""log_mel: golden parity (reference front-end), Kaldi equivalence, layout and edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from audio_media import noise, stereo, tone
from clip4vla.audio import frame_count, log_mel
from clip4vla.audio.frontend import reference_mel_filterbank

GOLDEN = Path(__file__).parent / "fixtures" / "audio_frontend.npz"
CASES = ["sine440_1s_mono", "chirp_3p7s_stereo", "whitenoise_2p5s_mono", "speech_espeak_mono"]
KALDI_OPTIONS = dict(num_mel_bins=224, frame_length=32.0, frame_shift=8.0, dither=0.0,
                     window_type="hamming", sample_frequency=16000.0)


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


def golden_waveform(golden, name: str) -> torch.Tensor:
    wav = golden[f"{name}__wav"]
    if wav.ndim == 1:                       # mono file: get_raw_audio duplicates it
        wav = np.stack([wav, wav], axis=1)
    return torch.from_numpy(np.ascontiguousarray(wav.T))


# --------------------------------------------------------------------------- golden parity


@pytest.mark.parametrize("name", CASES)
def test_reference_frontend_matches_golden_float32(golden, name):
    ours = log_mel(golden_waveform(golden, name), frontend="reference")
    expected = torch.from_numpy(golden[f"{name}__logmel"])
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-2, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_reference_frontend_matches_golden_float64(golden, name):
    ours = log_mel(golden_waveform(golden, name).double(), frontend="reference")
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, torch.from_numpy(golden[f"{name}__logmel"]).double(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_reference_frontend_reflect_padding_matches_golden_edges(golden, name):
    ours = log_mel(golden_waveform(golden, name), frontend="reference", pad_mode="reflect")
    index = torch.from_numpy(golden[f"{name}__reflect_edge_index"])
    torch.testing.assert_close(ours[:, index], torch.from_numpy(golden[f"{name}__logmel_reflect_edges"]),
                               atol=1e-2, rtol=0)
    channel_max = torch.from_numpy(golden[f"{name}__logmel_reflect_channel_max"]).float()
    torch.testing.assert_close(ours.amax(dim=(1, 2)), channel_max, atol=1e-2, rtol=0)
    # inner frames do not depend on the padding (except floor cells if the max moved)
    differing = json.loads(str(golden["meta_json"]))["cases"][CASES.index(name)]
    inner = [t for t in range(ours.shape[1]) if t not in differing["reflect_vs_constant_differing_frames"]]
    constant = torch.from_numpy(golden[f"{name}__logmel"])[:, inner]
    close = (ours[:, inner] - constant).abs() <= 1e-2
    at_floor = constant <= constant.amax(dim=(1, 2), keepdim=True) - 80 + 1e-2
    assert bool((close | at_floor).all())


def test_empty_mel_filters_sit_at_the_floor(golden):
    meta = json.loads(str(golden["meta_json"]))
    bank = reference_mel_filterbank(16000, 512, 224, 0.0, 8000.0)
    empty = torch.nonzero(bank.sum(dim=1) == 0).flatten().tolist()
    assert empty == meta["empty_mel_filters"]
    ours = log_mel(golden_waveform(golden, "chirp_3p7s_stereo"), frontend="reference")
    floor = ours.amax(dim=(1, 2)) - 80.0
    torch.testing.assert_close(ours[:, :, empty], floor[:, None, None].expand(3, ours.shape[1], len(empty)))


@pytest.mark.filterwarnings("ignore:Empty filters")
def test_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    expected = librosa.filters.mel(sr=16000, n_fft=512, n_mels=224, fmax=8000)
    ours = reference_mel_filterbank(16000, 512, 224, 0.0, 8000.0)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-7, rtol=0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_short_clip_reflect_padding_matches_librosa():
    # numpy-style repeated reflection for clips shorter than the 256-sample pad
    librosa = pytest.importorskip("librosa")
    x = torch.from_numpy(np.stack([noise(0.01, seed=4), noise(0.01, seed=5)]))   # 160 samples
    ours = log_mel(x, frontend="reference", pad_mode="reflect")
    for channel, signal in enumerate([x[0], (x[0] + x[1]) / 2, x[1]]):
        power = librosa.feature.melspectrogram(y=signal.double().numpy(), sr=16000, n_fft=512, hop_length=128,
                                               n_mels=224, fmax=8000, pad_mode="reflect")
        expected = librosa.power_to_db(power).T
        np.testing.assert_allclose(ours[channel].numpy(), expected, atol=1e-2, rtol=0)


# --------------------------------------------------------------------------- kaldi


def _kaldi_per_channel(x: torch.Tensor) -> torch.Tensor:
    channels = [x[0], (x[0] + x[1]) / 2, x[1]]
    return torch.stack([kaldi.fbank(c[None], **KALDI_OPTIONS) for c in channels])


@pytest.mark.parametrize("n", [512, 513, 1000, 16000, 37777])
def test_kaldi_frontend_equals_torchaudio_fbank(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(2, n, generator=g, dtype=torch.float64) * 0.1
    x[1] = 0.3 * x[1] + 0.05 * torch.sin(0.3 * torch.arange(n, dtype=torch.float64))
    torch.testing.assert_close(log_mel(x), _kaldi_per_channel(x), atol=1e-9, rtol=0)
    # float32: the middle channel's spectrum is the mean of L and R spectra (linearity),
    # so it differs from fbank((L + R) / 2) by float32 rounding only
    torch.testing.assert_close(log_mel(x.float()), _kaldi_per_channel(x.float()), atol=2e-3, rtol=0)


def test_kaldi_frame_count_and_range():
    x = torch.from_numpy(stereo(tone(440, 1.0), tone(3000, 1.0)))
    out = log_mel(x)
    assert out.shape == (3, 1 + (16000 - 512) // 128, 224) == (3, frame_count(16000), 224)
    assert torch.isfinite(out).all()


def test_kaldi_clip_shorter_than_a_window_gives_one_frame():
    x = torch.from_numpy(stereo(noise(0.01, seed=1), noise(0.01, seed=2)))       # 160 samples
    out = log_mel(x)
    padded = torch.nn.functional.pad(x.double(), (0, 512 - 160))
    assert out.shape == (3, 1, 224)
    torch.testing.assert_close(out.double(), _kaldi_per_channel(padded), atol=2e-3, rtol=0)


# --------------------------------------------------------------------------- layout, batching, edge cases


@pytest.mark.parametrize("frontend", ["kaldi", "reference"])
def test_channel_order_left_mid_right(frontend):
    # sound only on the left: L loud, M 6 dB quieter, R silent
    left = tone(1000, 1.0)
    out = log_mel(torch.from_numpy(stereo(left, np.zeros_like(left))), frontend=frontend)
    energy = out[:, 20:-20].amax(dim=(1, 2))
    assert energy[0] > energy[1] > energy[2]
    # M = L / 2 has a quarter of the power: 6.02 dB (reference) or ln 4 (kaldi, natural log)
    expected = 10 * np.log10(4) if frontend == "reference" else np.log(4)
    assert float(energy[0] - energy[1]) == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("frontend", ["kaldi", "reference"])
def test_rows_are_time_columns_are_mel_low_to_high(frontend):
    low, high = tone(300, 1.0), tone(4000, 1.0)
    signal = np.concatenate([low, high])
    out = log_mel(torch.from_numpy(stereo(signal, signal)), frontend=frontend)[0]
    t = out.shape[0]
    first_half_peak = out[10:t // 2 - 10].mean(0).argmax()
    second_half_peak = out[t // 2 + 10:-10].mean(0).argmax()
    assert first_half_peak < second_half_peak


@pytest.mark.parametrize("frontend", ["kaldi", "reference"])
def test_batch_equals_single_clips(frontend):
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(3, 2, 9000, generator=g) * 0.2
    together = log_mel(batch, frontend=frontend)
    assert together.shape == (3, 3, frame_count(9000, frontend=frontend), 224)
    for i in range(3):
        torch.testing.assert_close(together[i], log_mel(batch[i], frontend=frontend), atol=1e-4, rtol=0)


def test_reference_frame_count():
    for n in [1, 127, 128, 16000, 16001]:
        assert log_mel(torch.zeros(2, n), frontend="reference").shape == (3, 1 + n // 128, 224)


def test_silence_is_finite():
    silence = torch.zeros(2, 16000)
    kaldi_out = log_mel(silence, frontend="kaldi")
    reference_out = log_mel(silence, frontend="reference")
    # documented values: log(float32 eps) and 10 * log10(1e-10)
    assert torch.equal(kaldi_out, torch.full_like(kaldi_out, float(np.log(np.finfo(np.float32).eps))))
    torch.testing.assert_close(reference_out, torch.full_like(reference_out, -100.0), atol=1e-4, rtol=0)


@pytest.mark.parametrize("frontend", ["kaldi", "reference"])
def test_one_sample_clip(frontend):
    out = log_mel(torch.full((2, 1), 0.5), frontend=frontend)
    assert out.shape == (3, 1, 224) and torch.isfinite(out).all()


@pytest.mark.parametrize("bad, error", [
    (torch.zeros(16000), ValueError),
    (torch.zeros(1, 16000), ValueError),
    (torch.zeros(2, 2, 3, 10), ValueError),
    (torch.zeros(2, 0), ValueError),
    (torch.zeros(2, 100, dtype=torch.int16), TypeError),
    (torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), ValueError),
])
def test_bad_waveforms(bad, error):
    with pytest.raises(error):
        log_mel(bad)


def test_unknown_options():
    x = torch.zeros(2, 1000)
    with pytest.raises(ValueError, match="frontend"):
        log_mel(x, frontend="mfcc")
    with pytest.raises(ValueError, match="pad_mode"):
        log_mel(x, frontend="reference", pad_mode="edge")
    with pytest.raises(ValueError, match="sample_rate"):
        log_mel(x, sample_rate=8000, frontend="reference")
