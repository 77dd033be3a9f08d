"""load_audio: formats, channel layout, resampling, ranges, cropping and typed errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from audio_media import chirp, dominant_frequency, noise, stereo, tone, write_sound, write_video
import clip4vla.audio.decode as decode_module
from clip4vla.audio import AudioDecodeError, MediaError, NoAudioError, load_audio


# --------------------------------------------------------------------------- formats


def test_pcm16_mono_wav_is_duplicated_to_stereo_exactly(tmp_path):
    signal = tone(440, 0.5)
    path = write_sound(tmp_path / "mono.wav", signal, subtype="PCM_16")
    out = load_audio(path)
    expected = torch.from_numpy(sf.read(str(path), dtype="float32")[0])
    assert out.dtype == torch.float32 and out.shape == (2, 8000)
    assert torch.equal(out[0], expected) and torch.equal(out[1], expected)


def test_float_stereo_wav_keeps_left_and_right(tmp_path):
    signal = stereo(tone(300, 1.0), chirp(1000, 3000, 1.0))
    out = load_audio(write_sound(tmp_path / "st.wav", signal, subtype="FLOAT"))
    assert torch.equal(out, torch.from_numpy(signal))


def test_flac_at_44k1_is_resampled_like_torchaudio(tmp_path):
    signal = stereo(tone(500, 1.3, rate=44100), tone(2500, 1.3, rate=44100))
    path = write_sound(tmp_path / "x.flac", signal, rate=44100, subtype="PCM_24")
    out = load_audio(path)
    source = torch.from_numpy(sf.read(str(path), dtype="float32", always_2d=True)[0].T.copy())
    expected = AF.resample(source, 44100, 16000)
    assert out.shape == expected.shape == (2, int(np.ceil(signal.shape[1] * 16000 / 44100)))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert dominant_frequency(out[0].numpy()) == pytest.approx(500, abs=2)
    assert dominant_frequency(out[1].numpy()) == pytest.approx(2500, abs=2)


def test_8khz_file_is_upsampled(tmp_path):
    # REF only resampled rates above the target; we resample both ways
    out = load_audio(write_sound(tmp_path / "low.wav", tone(700, 1.0, rate=8000), rate=8000))
    assert out.shape == (2, 16000)
    assert dominant_frequency(out[0].numpy()) == pytest.approx(700, abs=2)


def test_ogg_vorbis_via_soundfile(tmp_path):
    out = load_audio(write_sound(tmp_path / "x.ogg", tone(1000, 1.0), subtype="VORBIS"))
    assert out.shape[0] == 2 and abs(out.shape[1] - 16000) <= 16
    assert dominant_frequency(out[0].numpy()) == pytest.approx(1000, abs=2)


def test_mp3(tmp_path):
    out = load_audio(write_sound(tmp_path / "x.mp3", tone(800, 1.0), subtype="MPEG_LAYER_III"))
    assert out.shape[0] == 2 and abs(out.shape[1] - 16000) <= 1200      # encoder delay/padding
    assert dominant_frequency(out[0].numpy()) == pytest.approx(800, abs=2)


def test_more_than_two_channels_keeps_the_first_two(tmp_path):
    signal = np.stack([tone(200, 0.5), tone(400, 0.5), tone(800, 0.5), tone(1600, 0.5)])
    out = load_audio(write_sound(tmp_path / "quad.wav", signal, subtype="FLOAT"))
    assert torch.equal(out, torch.from_numpy(signal[:2]))


def test_one_sample_clip_is_valid(tmp_path):
    out = load_audio(write_sound(tmp_path / "one.wav", np.array([0.25], np.float32), subtype="FLOAT"))
    assert out.shape == (2, 1) and torch.equal(out, torch.full((2, 1), 0.25))


def test_mp4_aac_audio_track(tmp_path):
    audio = stereo(tone(440, 1.0, rate=44100), tone(1320, 1.0, rate=44100))
    out = load_audio(write_video(tmp_path / "clip.mp4", 1.0, audio=audio, rate=44100))
    assert out.shape == (2, 16000)                    # encoder padding trimmed to the declared 1 s
    assert dominant_frequency(out[0].numpy()) == pytest.approx(440, abs=2)
    assert dominant_frequency(out[1].numpy()) == pytest.approx(1320, abs=2)
    # the decoded tone lines up with the written one (no encoder-delay offset): AAC is lossy,
    # so compare by correlation; a shift of 3 samples (of a 36-sample period) drops it to ~0.86
    written = tone(440, 1.0)

    def correlation(lag: int) -> float:
        a, b = out[0, 2000:14000].numpy(), written[2000 + lag:14000 + lag]
        return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))

    assert correlation(0) > 0.98
    assert correlation(0) > max(correlation(-3), correlation(3)) + 0.05


def test_mono_pcm_track_in_avi(tmp_path):
    # interleaved 16-bit samples through PyAV (a different sample-format path than AAC)
    audio = tone(600, 1.0, rate=16000)[None]
    out = load_audio(write_video(tmp_path / "clip.avi", 1.0, audio=audio, rate=16000,
                                 audio_codec="pcm_s16le"))
    assert out.shape == (2, 16000) and torch.equal(out[0], out[1])
    torch.testing.assert_close(out[0], torch.from_numpy(audio[0]), atol=1 / 32767, rtol=0)


def test_pcm_track_in_matroska_with_millisecond_timestamps(tmp_path):
    # Matroska stores times in ms: 1024-sample frames at 16 kHz land on 64 ms exactly but
    # other sizes round; rounding must not be mistaken for gaps (no inserted zeros)
    audio = stereo(noise(1.0, seed=5), noise(1.0, seed=6))
    out = load_audio(write_video(tmp_path / "clip.mkv", 1.0, audio=audio, rate=16000,
                                 audio_codec="pcm_s16le", audio_block=1000))
    assert out.shape == (2, 16000)
    torch.testing.assert_close(out, torch.from_numpy(audio), atol=1 / 32767, rtol=0)


# --------------------------------------------------------------------------- ranges and cropping


def test_range_equals_slice_of_the_full_decode_wav(tmp_path):
    signal = stereo(noise(3.3, rate=44100, seed=1), noise(3.3, rate=44100, seed=2))
    path = write_sound(tmp_path / "n.wav", signal, rate=44100, subtype="FLOAT")
    full = load_audio(path)
    for start, end in [(1.0, 2.0), (0.1234, 0.5678), (0.5, None), (None, 0.25), (3.0, 9.0)]:
        part = load_audio(path, start=start, end=end)
        first = round((start or 0) * 16000)
        last = full.shape[1] if end is None else min(full.shape[1], round(end * 16000))
        torch.testing.assert_close(part, full[:, first:last], atol=1e-6, rtol=0)


def test_range_equals_slice_of_the_full_decode_mp4(tmp_path):
    # ranges starting in the first 30 s decode from the beginning: bit-identical slices
    audio = stereo(chirp(200, 4000, 3.0, rate=44100), tone(900, 3.0, rate=44100))
    path = write_video(tmp_path / "c.mp4", 3.0, audio=audio, rate=44100)
    full = load_audio(path)
    for start, end in [(0.5, 0.75), (1.7, 2.9), (0.0, 0.3), (2.2, None)]:
        part = load_audio(path, start=start, end=end)
        first = round(start * 16000)
        last = full.shape[1] if end is None else round(end * 16000)
        assert torch.equal(part, full[:, first:last])


def test_range_after_a_seek_mp4(tmp_path, monkeypatch):
    # later ranges seek (here: every range past 0.25 s); placement must stay sample-exact
    monkeypatch.setattr(decode_module, "_SEEK_MIN_S", 0.0)
    audio = stereo(chirp(200, 4000, 3.0, rate=44100), tone(900, 3.0, rate=44100))
    path = write_video(tmp_path / "c.mp4", 3.0, audio=audio, rate=44100)
    full = load_audio(path)
    for start, end in [(0.5, 0.75), (1.7, 2.9), (2.2, None)]:
        part = load_audio(path, start=start, end=end)
        first = round(start * 16000)
        last = full.shape[1] if end is None else round(end * 16000)
        assert part.shape == (2, last - first)
        # not bit-identical: after a seek the AAC decoder's state (noise substitution)
        # differs slightly; a one-sample misplacement would cost ~1.0 on this chirp
        torch.testing.assert_close(part, full[:, first:last], atol=0.05, rtol=0)


def test_long_mono_file_is_centre_cropped(tmp_path):
    signal = np.arange(5 * 16000, dtype=np.float32) / (5 * 16000)     # a ramp marks positions
    path = write_sound(tmp_path / "long.wav", signal, subtype="FLOAT")
    out = load_audio(path, max_seconds=2.0)
    first = (5 * 16000 - 2 * 16000) // 2
    assert out.shape == (2, 32000)
    assert torch.equal(out[0], torch.from_numpy(signal[first:first + 32000]))
    assert torch.equal(out[0], out[1])
    assert load_audio(path, max_seconds=None).shape == (2, 80000)


def test_centre_crop_of_a_range(tmp_path):
    signal = np.arange(6 * 16000, dtype=np.float32) / (6 * 16000)
    path = write_sound(tmp_path / "r.wav", signal, subtype="FLOAT")
    out = load_audio(path, start=1.0, end=5.0, max_seconds=1.0)
    first = 16000 + (4 * 16000 - 16000) // 2
    assert torch.equal(out[0], torch.from_numpy(signal[first:first + 16000]))


def test_long_mp4_is_centre_cropped(tmp_path):
    audio = stereo(chirp(100, 6000, 4.0, rate=44100), chirp(6000, 100, 4.0, rate=44100))
    path = write_video(tmp_path / "long.mp4", 4.0, audio=audio, rate=44100)
    full = load_audio(path, max_seconds=None)
    cropped = load_audio(path, max_seconds=1.5)
    first = (full.shape[1] - 24000) // 2
    assert cropped.shape == (2, 24000)
    assert torch.equal(cropped, full[:, first:first + 24000])


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioDecodeError, match="not found") as info:
        load_audio(path)
    assert str(path) in str(info.value) and isinstance(info.value, MediaError)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio(path)


@pytest.mark.parametrize("suffix", [".wav", ".mp4", ".bin"])
def test_random_bytes(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioDecodeError) as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_truncated_mp4(tmp_path):
    audio = stereo(tone(440, 1.0, rate=44100), tone(660, 1.0, rate=44100))
    good = write_video(tmp_path / "good.mp4", 1.0, audio=audio)
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(AudioDecodeError, match="cut.mp4"):
        load_audio(bad)


def test_nan_samples_name_the_file(tmp_path):
    signal = tone(440, 0.5)
    signal[100] = np.nan
    path = write_sound(tmp_path / "nan.wav", signal, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="NaN") as info:
        load_audio(path)
    assert "nan.wav" in str(info.value)


def test_video_without_audio_track_raises_no_audio(tmp_path):
    path = write_video(tmp_path / "silent.mp4", 1.0, audio=None)
    with pytest.raises(NoAudioError, match="no audio stream") as info:
        load_audio(path)
    assert isinstance(info.value, MediaError) and "silent.mp4" in str(info.value)


def test_zero_sample_wav_raises_no_audio(tmp_path):
    path = write_sound(tmp_path / "zero.wav", np.zeros(0, np.float32), subtype="PCM_16")
    with pytest.raises(NoAudioError):
        load_audio(path)


def test_range_past_the_end_raises_no_audio(tmp_path):
    path = write_sound(tmp_path / "short.wav", tone(440, 1.0))
    with pytest.raises(NoAudioError, match=r"\[5.0, 6.0\)"):
        load_audio(path, start=5.0, end=6.0)


@pytest.mark.parametrize("kwargs", [dict(start=-1.0), dict(start=2.0, end=1.0), dict(end=float("nan")),
                                    dict(sample_rate=0), dict(max_seconds=0.0)])
def test_bad_arguments(tmp_path, kwargs):
    path = write_sound(tmp_path / "ok.wav", tone(440, 0.1))
    with pytest.raises(ValueError):
        load_audio(path, **kwargs)
