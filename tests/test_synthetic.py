"""The built-in synthetic dataset: format, determinism, and that sound follows sight."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest

from clip4vla.data import synthetic as syn
from clip4vla.video import read_one_fps

NUM = 20


def decode_all(path):
    """(video frames uint8 [T,H,W,3], audio float [2,N] or None) straight from PyAV."""
    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], 1) if c.streams.audio else None
    return frames, audio


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    t0 = time.perf_counter()
    syn.make_synthetic_dataset(out, num_clips=NUM, seed=0, workers=2, progress=False)
    return out, time.perf_counter() - t0


def annotations(out):
    return json.loads((out / "MSRVTT_data.json").read_text())


def test_generation_is_fast(dataset):
    _, seconds = dataset
    # ~1 s on the 2-core reference machine; the bound leaves room for a busy machine
    assert seconds < 20.0


def test_msrvtt_layout(dataset):
    out, _ = dataset
    ann = annotations(out)
    videos, sentences = ann["videos"], ann["sentences"]
    assert [v["video_id"] for v in videos] == [f"video{i}" for i in range(NUM)]
    assert {v["split"] for v in videos} == {"train", "validate", "test"}
    counts = {s: sum(v["split"] == s for v in videos) for s in ("train", "validate", "test")}
    assert counts == {"train": 14, "validate": 2, "test": 4}
    assert all(v["audio_type"] in ("vb", "nb") for v in videos)
    assert {v["audio_type"] for v in videos} == {"vb", "nb"}
    assert [s["sen_id"] for s in sentences] == list(range(len(sentences)))
    assert len(sentences) == 5 * NUM

    with open(out / "MSRVTT_train.9k.csv", newline="") as fh:
        train_ids = [row["video_id"] for row in csv.DictReader(fh)]
    assert train_ids == [v["video_id"] for v in videos if v["split"] == "train"]
    with open(out / "MSRVTT_JSFUSION_test.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["key", "vid_key", "video_id", "sentence"]
    test_ids = [v["video_id"] for v in videos if v["split"] == "test"]
    assert [r["video_id"] for r in rows] == test_ids
    first_caption = {s["video_id"]: s["caption"] for s in reversed(sentences)}
    assert all(r["sentence"] == first_caption[r["video_id"]] for r in rows)
    meta = json.loads((out / "synthetic_meta.json").read_text())
    assert meta["seed"] == 0 and meta["num_clips"] == NUM


def test_media_are_h264_aac_and_silent_clips_have_no_audio_stream(dataset):
    out, _ = dataset
    videos = annotations(out)["videos"]
    silent = [v for v in videos if not v["has_audio"]]
    assert len(silent) == round(syn.SILENT_FRACTION * NUM) >= 1
    for v in videos:
        with av.open(str(out / "videos" / f"{v['video_id']}.mp4")) as c:
            vs = c.streams.video[0]
            assert vs.codec_context.name == "h264"
            assert (vs.width, vs.height) == (syn.FRAME_SIZE, syn.FRAME_SIZE)
            assert float(vs.average_rate) == syn.FPS
            if v["has_audio"]:
                a = c.streams.audio[0]
                assert a.codec_context.name == "aac" and a.sample_rate == syn.SAMPLE_RATE and a.channels == 2
            else:
                assert len(c.streams.audio) == 0


def test_captions_name_attributes_of_both_modalities(dataset):
    out, _ = dataset
    ann = annotations(out)
    caps: dict[str, list[str]] = {}
    for s in ann["sentences"]:
        caps.setdefault(s["video_id"], []).append(s["caption"])
    for v in ann["videos"]:
        a = v["attributes"]
        first = caps[v["video_id"]][0]
        for word in (a["shape"], a["colour"], a["size"], a["direction"]):  # what is seen
            assert word in first, (word, first)
        if v["has_audio"]:  # what is heard: register, pattern, background
            assert ("high" if a["size"] == "small" else "low") in first
            sound_word = {"hum": "hum", "beeps": "beep", "chirps": "chirp", "bursts": "burst", "ticks": "ticking",
                          "siren": "siren", "voice": "voice"}[a["sound"]]
            assert sound_word in first
            assert syn._NOISE_OVER[a["noise"]] in first
        else:
            assert "silence" in first
        assert len(set(caps[v["video_id"]])) == 5  # five different paraphrases


def test_enough_combinations_for_retrieval():
    specs = syn.sample_clip_specs(300, seed=0)
    combos = {(s.shape, s.colour, s.size, s.direction, s.sound, s.noise) for s in specs}
    assert len(combos) > 270  # nearly every clip is its own combination
    assert len({syn.captions_for(s)[0] for s in specs}) == len(combos)


def test_same_seed_same_dataset_other_seed_differs(dataset, tmp_path):
    out, _ = dataset
    again = syn.make_synthetic_dataset(tmp_path / "again", num_clips=NUM, seed=0, workers=2, progress=False)
    for name in ("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv", "MSRVTT_val.csv"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    for vid in ("video0", "video7", "video13"):
        f1, a1 = decode_all(out / "videos" / f"{vid}.mp4")
        f2, a2 = decode_all(again / "videos" / f"{vid}.mp4")
        assert np.array_equal(f1, f2)
        assert (a1 is None and a2 is None) or np.array_equal(a1, a2)
    other = syn.sample_clip_specs(NUM, seed=1)
    assert [syn.captions_for(s)[0] for s in other] != [syn.captions_for(s)[0] for s in syn.sample_clip_specs(NUM, 0)]


def test_idempotent_and_repairs_missing_clips(dataset, tmp_path):
    out = syn.make_synthetic_dataset(tmp_path / "d", num_clips=6, seed=3, workers=1, progress=False)
    stamp = (out / "videos" / "video0.mp4").stat().st_mtime_ns
    t0 = time.perf_counter()
    syn.make_synthetic_dataset(out, num_clips=6, seed=3, workers=1, progress=False)
    assert time.perf_counter() - t0 < 0.5
    assert (out / "videos" / "video0.mp4").stat().st_mtime_ns == stamp  # untouched
    (out / "videos" / "video4.mp4").unlink()
    assert not syn.is_complete(out, 6, 3)
    syn.make_synthetic_dataset(out, num_clips=6, seed=3, workers=1, progress=False)
    assert syn.is_complete(out, 6, 3)
    # a smaller dataset in the same folder removes the clips it no longer has
    syn.make_synthetic_dataset(out, num_clips=3, seed=3, workers=1, progress=False)
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["video0.mp4", "video1.mp4", "video2.mp4"]
    assert not syn.is_complete(out, 6, 3) and syn.is_complete(out, 3, 3)


def test_script_entry_point(tmp_path):
    module = _load_make_synthetic()
    module.main(["--out", str(tmp_path / "s"), "--num-clips", "2", "--seed", "5", "--workers", "1", "--no-progress"])
    assert syn.is_complete(tmp_path / "s", 2, 5)


def _load_make_synthetic():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_synthetic", Path(__file__).resolve().parents[1] / "scripts" / "make_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones too), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_format_twin_never_changes_its_source(dataset, tmp_path, monkeypatch):
    """A twin with fewer clips than its source once shrank the source to that size (deleting the
    quick start's clips): the source is now only read, and the twin's own clips live under --out."""
    source = tmp_path / "data" / "synthetic"
    shutil.copytree(dataset[0], source)
    before = _fingerprint(source)
    script = _load_make_synthetic()
    quiet = ["--workers", "1", "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:  # these clips are not the source's: refused, not made there
        script.main(["--format", "vatex", "--out", str(tmp_path / "twin"), "--source", str(source), "--num-clips", "8"]
                    + quiet)
    assert exit_info.value.code == 2
    assert _fingerprint(source) == before

    monkeypatch.chdir(tmp_path)  # data/synthetic is where the old default --source pointed
    assert script.main(["--format", "vatex", "--out", "twins/vatex", "--num-clips", "8"] + quiet) == 0
    assert _fingerprint(source) == before
    twin = tmp_path / "twins" / "vatex"
    assert syn.is_complete(twin / "synthetic", 8, 0)
    entries = sum(len(json.loads((twin / name).read_text())) for name in (
        "vatex_training_v1.0.json", "vatex_validation_v1.0.json", "vatex_public_test_english_v1.1.json"))
    assert entries == len(list((twin / "videos").glob("*.mp4"))) == 8

    # the source's own clips, laid out as a twin: read, never written
    assert script.main(["--format", "esc50", "--out", "twins/esc50", "--source", str(source)] + quiet) == 0
    assert _fingerprint(source) == before
    assert len(list((tmp_path / "twins" / "esc50" / "audio").glob("*.wav"))) == sum(
        v["has_audio"] for v in annotations(source)["videos"])
    with pytest.raises(ValueError, match="outside its source"):
        from clip4vla.data.synthetic_formats import write_corpus_format

        write_corpus_format(source, "msrvtt", source / "twin")
    assert _fingerprint(source) == before


def test_script_refuses_to_replace_another_dataset(tmp_path):
    script = _load_make_synthetic()
    out = tmp_path / "s"
    assert script.main(["--out", str(out), "--num-clips", "2", "--workers", "1", "--no-progress"]) == 0
    before = _fingerprint(out)
    with pytest.raises(SystemExit):
        script.main(["--out", str(out), "--num-clips", "1", "--workers", "1", "--no-progress"])
    assert _fingerprint(out) == before
    assert script.main(["--out", str(out), "--num-clips", "1", "--overwrite", "--workers", "1", "--no-progress"]) == 0
    assert syn.is_complete(out, 1, 0)


def test_decoded_frames_show_the_shape_in_its_colour(dataset):
    out, _ = dataset
    ann = annotations(out)
    specs = syn.sample_clip_specs(NUM, seed=0)
    for spec in specs[:4]:
        _, rgb, _ = read_one_fps(out / "videos" / f"{spec.video_id}.mp4")
        x, y = syn._positions(spec, np.arange(len(rgb), dtype=np.float64))  # frames at whole seconds
        for img, cx, cy in zip(rgb, x, y):
            centre = img[int(cy) - 1 : int(cy) + 2, int(cx) - 1 : int(cx) + 2].reshape(-1, 3).mean(0)
            assert np.abs(centre - np.array(spec.rgb)).max() < 25, spec
    assert ann["videos"][0]["attributes"]["colour"] == specs[0].colour


# ------------------------------------------------------------------- sound follows the picture
def _spec(**changes) -> syn.ClipSpec:
    base = syn.sample_clip_specs(1, seed=0)[0]
    defaults = dict(sound="hum", shape="circle", noise="quiet", size="small", radius=10.0, speed=40.0,
                    start_xy=(40.0, 50.0), duration=5.0)
    defaults.update(changes)
    return dataclasses.replace(base, **defaults)


def _windows(x: np.ndarray, hop: int = 800, win: int = 1024):
    starts = np.arange(0, x.shape[-1] - win, hop)
    return starts + win // 2, np.stack([x[..., s : s + win] for s in starts], -2)


def test_pitch_follows_height():
    spec = _spec(direction="up")
    audio = syn.render_audio(spec)
    centres, frames = _windows(audio.sum(0))
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(frames.shape[-1]), n=8192))
    measured = np.fft.rfftfreq(8192, 1 / syn.SAMPLE_RATE)[spectrum.argmax(-1)]
    _, y = syn._positions(spec, centres / syn.SAMPLE_RATE)
    height = 1 - (y - spec.radius) / (syn.FRAME_SIZE - 2 * spec.radius)
    expected = syn.EVENT_PITCH["small"] * 2.0 ** (height - 0.5)
    assert np.median(np.abs(measured / expected - 1)) < 0.03
    assert np.corrcoef(measured, height)[0, 1] > 0.95
    low = syn.render_audio(_spec(direction="up", size="large", radius=20.0))
    spec_low = np.abs(np.fft.rfft(low.sum(0)))
    assert np.fft.rfftfreq(low.shape[1], 1 / syn.SAMPLE_RATE)[spec_low.argmax()] < 450  # large = low


def test_pan_follows_horizontal_position():
    spec = _spec(direction="right")
    audio = syn.render_audio(spec)
    centres, frames = _windows(audio)
    left, right = np.sqrt((frames**2).mean(-1))
    x, _ = syn._positions(spec, centres / syn.SAMPLE_RATE)
    assert np.corrcoef(right / (left + right), x)[0, 1] > 0.95


def test_clicks_at_wall_bounces():
    spec = _spec(direction="left")  # pure sine: energy above 3 kHz comes only from the clicks
    bounces = syn.bounce_times(spec)
    assert len(bounces) >= 2
    audio = syn.render_audio(spec).sum(0)
    spectrum = np.fft.rfft(audio)
    spectrum[np.fft.rfftfreq(len(audio), 1 / syn.SAMPLE_RATE) < 3000] = 0
    high = np.fft.irfft(spectrum, n=len(audio)) ** 2
    energy = high[: len(high) // 160 * 160].reshape(-1, 160).sum(1)  # 10 ms bins
    bounce_bins = (bounces * 100).astype(int)
    assert energy[bounce_bins].min() > 20 * np.median(energy)
    top = set(np.argsort(energy)[-len(bounces):])
    assert top <= set(bounce_bins) | set(bounce_bins + 1)


def test_modality_exclusive_attributes():
    spec = _spec(direction="down", sound="beeps", noise="rain")
    # the shape is only in the picture, the sound pattern and background only in the sound
    reshaped = dataclasses.replace(spec, shape="triangle")
    resounded = dataclasses.replace(spec, sound="siren", noise="wind")
    assert np.array_equal(syn.render_audio(spec), syn.render_audio(reshaped))
    assert np.array_equal(syn.render_frames(spec), syn.render_frames(resounded))
    assert not np.array_equal(syn.render_frames(spec), syn.render_frames(reshaped))
    assert not np.array_equal(syn.render_audio(spec), syn.render_audio(resounded))


def test_colour_chooses_the_sound():
    """What is heard follows the colour: the event pattern, or the vowels of a voice."""
    specs = syn.sample_clip_specs(300, seed=0)
    events = [s for s in specs if s.sound not in ("voice", "silent")]
    assert events and all(s.sound == syn.COLOUR_EVENTS[s.colour] for s in events)
    assert len(set(syn.COLOUR_EVENTS.values())) == len(syn.COLOURS)  # one pattern per colour
    assert len(set(syn.COLOUR_VOWELS.values())) == len(syn.COLOURS)
    voice = _spec(sound="voice", colour="red")
    assert not np.array_equal(syn.render_audio(voice), syn.render_audio(dataclasses.replace(voice, colour="green")))
    assert syn.COLOUR_VOWELS["red"][0] in " ".join(syn.captions_for(voice))
