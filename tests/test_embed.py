"""The embedding API: deterministic unit embeddings with the model file's preprocessing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import clip4vla
from clip4vla.embed import embed_audio, embed_windows, looks_like_speech, window_seconds, windows
from clip4vla.media_errors import MediaError
from media_factory import write_garbage, write_video
from script_checks import copy_with_undecodable_name

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(micro_export):
    return clip4vla.load_model(micro_export)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("embed_media")
    write_video(d / "short.mp4", seconds=3.0, fps=10)
    write_video(d / "long.mp4", seconds=14.0, fps=5)  # several windows
    write_video(d / "silent.mp4", seconds=2.0, fps=10, audio=False)
    write_garbage(d / "broken.mp4")
    return {p.stem: p for p in d.iterdir()}


def test_unit_rows_of_the_model_width(model, media):
    texts = clip4vla.embed_text(model, ["a red circle moves left", "a siren wails"])
    videos = clip4vla.embed_video(model, [media["short"], media["long"]])
    sounds = clip4vla.embed_audio(model, [media["short"]])
    for rows, n in ((texts, 2), (videos, 2), (sounds, 1)):
        assert rows.shape == (n, model.clip.config.embed_dim) and rows.dtype == torch.float32
        torch.testing.assert_close(rows.norm(dim=1), torch.ones(n))


def test_bit_identical_across_calls_batches_and_order(model, media):
    texts = ["a red circle moves left", "a blue square goes up", "no sound at all"]
    one_by_one = torch.cat([clip4vla.embed_text(model, [t]) for t in texts])
    together = clip4vla.embed_text(model, texts)
    reversed_ = clip4vla.embed_text(model, texts[::-1]).flip(0)
    many = clip4vla.embed_text(model, texts * 20)[:3]  # a second internal batch, other neighbours
    for other in (together, reversed_, many):
        assert torch.equal(one_by_one, other)
    a = clip4vla.embed_video(model, [media["short"], media["long"]])
    b = torch.cat([clip4vla.embed_video(model, [media["long"]]), clip4vla.embed_video(model, [media["short"]])]).flip(0)
    assert torch.equal(a, b)
    assert torch.equal(clip4vla.embed_audio(model, [media["long"]]), clip4vla.embed_audio(model, [media["long"]]))


def test_bit_identical_in_another_process(model, media, micro_export, tmp_path):
    script = (
        "import sys, torch, clip4vla\n"
        "m = clip4vla.load_model(sys.argv[1])\n"
        "torch.save({'t': clip4vla.embed_text(m, ['a red circle moves left']),\n"
        "            'v': clip4vla.embed_video(m, [sys.argv[2]]), 'a': clip4vla.embed_audio(m, [sys.argv[2]])}, sys.argv[3])\n"
    )
    out = tmp_path / "other.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script, str(micro_export), str(media["long"]), str(out)], check=True, env=env)
    other = torch.load(out, weights_only=True)
    assert torch.equal(other["t"], clip4vla.embed_text(model, ["a red circle moves left"]))
    assert torch.equal(other["v"], clip4vla.embed_video(model, [media["long"]]))
    assert torch.equal(other["a"], clip4vla.embed_audio(model, [media["long"]]))


def test_long_media_are_covered_by_fixed_windows(model, media):
    window = window_seconds(model.preprocessing)
    assert window == pytest.approx(max(2.0, 2 * 1.792))
    assert windows(3.0, window) == [(0.0, 3.0)]  # a short clip is one window: the training input
    spans = windows(14.0, window)
    assert len(spans) == 4 and spans[0] == (0.0, 3.5) and spans[-1] == (10.5, 14.0)
    assert len(windows(3600.0, window, max_windows=64)) == 64  # spread evenly over an hour
    embedded = embed_windows(model, media["long"], audio_type="nb")
    assert embedded.video.shape[0] == embedded.audio.shape[0] == 4
    torch.testing.assert_close(embedded.pooled("video"), clip4vla.embed_video(model, [media["long"]])[0])


def test_missing_audio_and_broken_files_are_named(model, media):
    with pytest.raises(ValueError, match="silent.mp4: no audio track"):
        clip4vla.embed_audio(model, [media["short"], media["silent"]])
    rows, mask = clip4vla.embed_audio(model, [media["short"], media["silent"]], strict=False)
    assert mask.tolist() == [True, False] and torch.equal(rows[1], torch.zeros_like(rows[1]))
    with pytest.raises(MediaError, match="broken.mp4"):
        clip4vla.embed_video(model, [media["broken"]])
    with pytest.raises(ValueError, match="audio_type"):
        clip4vla.embed_audio(model, [media["short"]], audio_type="speech")


def test_long_queries_are_truncated_with_a_warning(model, caplog):
    long = " ".join(["word"] * 200)
    with caplog.at_level("WARNING"):
        rows = clip4vla.embed_text(model, [long])
    assert rows.shape[0] == 1 and "longer than the model's 32 tokens" in caplog.text


def test_auto_audio_type_picks_vb_for_a_voice(model, tmp_path, caplog):
    """Intonated, voiced-with-pauses sound at a human pitch -> [VB]; a steady tone -> [NB]."""
    from audio_media import write_sound

    rate = 16000
    t = np.arange(int(3.0 * rate)) / rate
    pitch = 120 * 2 ** (0.3 * np.sin(2 * np.pi * 0.7 * t))  # intonation
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 20)) * (np.mod(t, 0.3) < 0.2)  # syllables and pauses
    write_sound(tmp_path / "voice.wav", (0.2 * voice).astype(np.float32))
    write_sound(tmp_path / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    from clip4vla.audio import load_audio

    assert looks_like_speech(load_audio(tmp_path / "voice.wav"))
    assert not looks_like_speech(load_audio(tmp_path / "tone.wav"))
    assert embed_windows(model, tmp_path / "voice.wav", video=False, audio_type="auto").audio_type == "vb"
    assert embed_windows(model, tmp_path / "tone.wav", video=False, audio_type="auto").audio_type == "nb"
    # what "auto" chose is there to see: returned on request, and logged at DEBUG
    with caplog.at_level("DEBUG", logger="clip4vla.embed"):
        rows, types = embed_audio(model, [tmp_path / "voice.wav", tmp_path / "tone.wav"], audio_type="auto",
                                  return_audio_types=True)
    assert types == ["vb", "nb"] and rows.shape[0] == 2
    assert "voice.wav: audio type auto -> vb" in caplog.text and "tone.wav: audio type auto -> nb" in caplog.text
    assert torch.equal(rows, clip4vla.embed_audio(model, [tmp_path / "voice.wav", tmp_path / "tone.wav"], audio_type="auto"))


def test_one_path_is_a_list_of_one_and_a_folder_is_named_as_such(model, media, tmp_path):
    listed = clip4vla.embed_video(model, [media["short"]])
    for single in (str(media["short"]), media["short"]):  # a string is not iterated character by character
        assert torch.equal(clip4vla.embed_video(model, single), listed)
        assert clip4vla.embed_audio(model, single).shape == (1, model.clip.config.embed_dim)
    assert torch.equal(clip4vla.embed_audio(model, str(media["short"])), clip4vla.embed_audio(model, [media["short"]]))
    with pytest.raises(MediaError, match=f"{tmp_path}: is a directory, expected a video or sound file"):
        clip4vla.embed_video(model, tmp_path)
    with pytest.raises(MediaError, match="nowhere.mp4: file not found"):
        clip4vla.embed_video(model, str(tmp_path / "nowhere.mp4"))


def test_a_sound_file_given_as_a_video_names_the_stream_it_has(model, tmp_path):
    from audio_media import write_sound

    write_sound(tmp_path / "tone.wav", (0.3 * np.sin(np.arange(16000) / 5)).astype(np.float32))
    with pytest.raises(MediaError, match=r"tone.wav: no video stream \(the file has 1 audio stream\)"):
        clip4vla.embed_video(model, [tmp_path / "tone.wav"])


def test_a_file_name_that_is_not_utf8_is_opened_or_named_escaped(model, media, tmp_path):
    odd = copy_with_undecodable_name(media["short"], tmp_path)
    assert torch.equal(clip4vla.embed_video(model, [odd]), clip4vla.embed_video(model, [media["short"]]))  # by bytes
    try:
        sound = clip4vla.embed_audio(model, [odd])
    except MediaError as err:  # the audio decoder opens files by UTF-8 name only: a clear, printable reason
        assert str(err).startswith(f"{tmp_path}/caf\\xe9.mp4: the file name is not valid UTF-8")
        str(err).encode("utf-8")  # printable anywhere
    else:
        assert torch.equal(sound, clip4vla.embed_audio(model, [media["short"]]))
