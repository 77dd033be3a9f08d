"""Data preparation: outputs, raw-vs-prepared agreement, resumability, bad files."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clip4vla.audio import NoAudioError, load_audio
from clip4vla.data.prepare import MANIFEST, find_videos, prepare_videos, read_manifest
from clip4vla.video import list_prepared_seconds, load_prepared_frames, load_video_frames, read_one_fps
from media_factory import frame_index, write_garbage, write_video

# Measured (JPEG quality 95, 4:4:4 chroma, after the CLIP transform) on all 300 clips of the
# synthetic dataset: mean |raw - prepared| per clip <= 0.0125 (0.0062 on average; one grey level is
# 1/255/0.27 = 0.0146 in normalised units), max 0.284 at single pixels on hard shape edges. The
# bounds keep a margin over that; PNG frames are compared for exact equality below.
JPEG_MEAN_TOL = 0.02
JPEG_MAX_TOL = 0.4

GOOD = ("a_tone", "b_long", "c_silent", "d_wide")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    write_video(d / "a_tone.mp4", seconds=3.5, fps=10, gop=10)
    write_video(d / "b_long.mp4", seconds=9.0, fps=25, gop=50, width=96, height=64)
    write_video(d / "c_silent.mp4", seconds=2.2, fps=10, audio=False)
    (d / "sub").mkdir()
    write_video(d / "sub" / "d_wide.mkv", seconds=4.0, fps=10, width=160, height=48)  # found recursively
    write_garbage(d / "e_broken.mp4")
    (d / "notes.txt").write_text("not a video")
    return d


@pytest.fixture(scope="module")
def prepared(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    summary = prepare_videos(videos, out, workers=2, progress=False)
    return out, summary


def test_find_videos(videos):
    found = find_videos(videos)
    assert sorted(found) == sorted(GOOD + ("e_broken",))
    assert found["d_wide"].suffix == ".mkv"


def test_outputs_and_manifest(videos, prepared):
    out, summary = prepared
    assert (summary.total, summary.skipped, summary.done, summary.failed) == (5, 0, 4, ["e_broken"])
    records = read_manifest(out)
    assert sorted(records) == sorted(GOOD + ("e_broken",))
    for vid in GOOD:
        rec = records[vid]
        assert rec["status"] == "ok" and rec["error"] is None
        seconds, _, info = read_one_fps(find_videos(videos)[vid])
        assert sorted(list_prepared_seconds(out / "frames" / vid)) == seconds  # same 1-fps rule
        assert rec["n_frames"] == len(seconds)
        assert rec["duration"] == pytest.approx(info.duration)
        assert rec["has_audio"] == (vid != "c_silent")
        wav = out / "audio" / f"{vid}.wav"
        assert (sf.info(str(wav)).frames > 0) == rec["has_audio"]
    assert records["b_long"]["n_frames"] == 9 and records["c_silent"]["n_frames"] == 3
    bad = records["e_broken"]
    assert bad["status"] == "error" and "VideoDecodeError" in bad["error"] and "e_broken.mp4" in bad["error"]
    assert not (out / "frames" / "e_broken").exists()
    assert not list((out / "frames").glob(".tmp-*")) and not list((out / "audio").glob(".tmp-*"))


def test_prepared_frames_keep_their_identity(prepared):
    out, _ = prepared
    from PIL import Image

    files = list_prepared_seconds(out / "frames" / "b_long")
    assert [frame_index(np.asarray(Image.open(files[s]))) for s in sorted(files)] == [25 * s for s in range(9)]


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(max_frames=4, sampling="uniform"),
        dict(max_frames=3, sampling="tail", order="reversed"),
        dict(max_frames=12, start=2.5, end=6.0),
        dict(max_frames=5, order="shuffled", seed=7),
    ],
)
def test_raw_and_prepared_routes_agree(videos, prepared, options):
    out, _ = prepared
    options = dict(options)
    seed = options.pop("seed", None)
    for vid in GOOD:
        path = find_videos(videos)[vid]
        if "start" in options and vid != "b_long":
            continue
        gen = (lambda: torch.Generator().manual_seed(seed)) if seed is not None else (lambda: None)
        raw, raw_mask = load_video_frames(path, generator=gen(), **options)
        prep, prep_mask = load_prepared_frames(out / "frames" / vid, generator=gen(), **options)
        assert torch.equal(raw_mask, prep_mask)
        diff = (raw - prep).abs()[raw_mask]
        assert diff.mean() < JPEG_MEAN_TOL, (vid, diff.mean())
        assert diff.max() < JPEG_MAX_TOL, (vid, diff.max())
        assert torch.count_nonzero(prep[~prep_mask]) == 0


def test_png_prepared_frames_are_exact(videos, tmp_path):
    src = tmp_path / "v"
    src.mkdir()
    shutil.copy(find_videos(videos)["b_long"], src / "b_long.mp4")
    prepare_videos(src, tmp_path / "out", workers=0, image_format="png", progress=False)
    for kw in (dict(max_frames=4), dict(start=3.0, end=7.5, order="reversed")):
        raw, raw_mask = load_video_frames(src / "b_long.mp4", **kw)
        prep, prep_mask = load_prepared_frames(tmp_path / "out" / "frames" / "b_long", **kw)
        assert torch.equal(raw, prep) and torch.equal(raw_mask, prep_mask)


def test_prepared_audio_equals_raw_audio(videos, prepared):
    out, _ = prepared
    for vid in ("a_tone", "b_long", "d_wide"):
        path = find_videos(videos)[vid]
        wav = out / "audio" / f"{vid}.wav"
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 2, "FLOAT")
        assert torch.equal(load_audio(wav), load_audio(path))
        assert torch.equal(load_audio(wav, start=0.5, end=2.0), load_audio(path, start=0.5, end=2.0))
    # no audio stream -> an empty wav, so both routes raise the same NoAudioError
    for source in (out / "audio" / "c_silent.wav", find_videos(videos)["c_silent"]):
        with pytest.raises(NoAudioError):
            load_audio(source)


def _copy_prepared(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_rerun_does_nothing(videos, prepared, tmp_path):
    out = _copy_prepared(prepared[0], tmp_path / "out")
    lines = (out / MANIFEST).read_text().splitlines()
    summary = prepare_videos(videos, out, workers=2, progress=False)
    assert (summary.skipped, summary.done, summary.failed) == (5, 0, [])
    assert (out / MANIFEST).read_text().splitlines() == lines


def test_resume_after_a_lost_manifest_line_redoes_only_that_item(videos, prepared, tmp_path):
    out = _copy_prepared(prepared[0], tmp_path / "out")
    records = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    kept = [r for r in records if r["video_id"] != "b_long"]
    (out / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in kept))
    stamps = {vid: (out / "frames" / vid / "000000.jpg").stat().st_mtime_ns for vid in ("a_tone", "c_silent")}
    summary = prepare_videos(videos, out, workers=2, progress=False)
    assert (summary.done, summary.skipped) == (1, 4)
    assert read_manifest(out)["b_long"]["status"] == "ok"
    assert len(list((out / "frames" / "b_long").iterdir())) == 9
    for vid, stamp in stamps.items():  # finished items were not touched
        assert (out / "frames" / vid / "000000.jpg").stat().st_mtime_ns == stamp


def test_resume_after_a_kill(videos, prepared, tmp_path):
    """What a kill can leave: temporary outputs and a half-written last manifest line."""
    out = _copy_prepared(prepared[0], tmp_path / "out")
    text = (out / MANIFEST).read_text().splitlines()
    kept = [line for line in text if json.loads(line)["video_id"] != "d_wide"]
    (out / MANIFEST).write_text("\n".join(kept) + '\n{"video_id": "d_wide", "sta')  # cut mid-write
    shutil.rmtree(out / "frames" / "d_wide")
    tmp_frames = out / "frames" / ".tmp-d_wide-999"
    tmp_frames.mkdir()
    (tmp_frames / "000000.jpg").write_bytes(b"partial")
    (out / "audio" / ".tmp-d_wide-999.wav").write_bytes(b"partial")
    summary = prepare_videos(videos, out, workers=0, progress=False)
    assert summary.done == 1 and summary.skipped == 4
    assert not tmp_frames.exists() and not (out / "audio" / ".tmp-d_wide-999.wav").exists()
    assert read_manifest(out)["d_wide"]["status"] == "ok"
    for line in (out / MANIFEST).read_text().splitlines()[:-1]:
        if line.startswith('{"video_id": "d_wide", "sta') and not line.endswith("}"):
            continue  # the broken line stays, on its own line, and is ignored
        json.loads(line)
    assert len(list((out / "frames" / "d_wide").iterdir())) == 4


def test_retry_errors(videos, prepared, tmp_path):
    out = _copy_prepared(prepared[0], tmp_path / "out")
    src = tmp_path / "videos"
    shutil.copytree(videos, src)
    write_video(src / "e_broken.mp4", seconds=2.0)  # the file was fixed
    assert prepare_videos(src, out, workers=0, progress=False).done == 0  # errors are skipped by default
    summary = prepare_videos(src, out, workers=0, retry_errors=True, progress=False)
    assert summary.done == 1 and read_manifest(out)["e_broken"]["status"] == "ok"


def test_cli_counts_and_lists_failures_and_exits_0(videos, tmp_path, capsys):
    """Unreadable files are never fatal (README, Data): the run ends with status 0, counting and
    naming them; status 2 is kept for a run that could not start (a missing folder, a bad flag)."""
    spec = importlib.util.spec_from_file_location(
        "prepare_data", Path(__file__).resolve().parents[1] / "scripts" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src = tmp_path / "v"
    src.mkdir()
    shutil.copy(videos / "c_silent.mp4", src)
    shutil.copy(videos / "e_broken.mp4", src)
    rc = module.main(["--videos", str(src), "--out", str(tmp_path / "o"), "--workers", "1", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "2 videos: 1 prepared, 0 already done, 1 failed" in printed and "failed: e_broken" in printed
    assert read_manifest(tmp_path / "o")["c_silent"]["status"] == "ok"


def test_invalid_arguments(videos, tmp_path):
    with pytest.raises(ValueError):
        prepare_videos(videos, tmp_path, image_format="webp")
    with pytest.raises(FileNotFoundError):
        prepare_videos(tmp_path / "missing", tmp_path / "o")


def test_help_describes_every_flag_with_its_default():
    from script_checks import assert_help_is_complete, load_script

    assert_help_is_complete(load_script("prepare_data").build_parser())


@pytest.mark.parametrize("flag, value, message", [
    ("--shard-mb", "nan", "expected a size in MiB above 0"),
    ("--shard-mb", "0", "expected a size in MiB above 0"),
    ("--quality", "101", "expected a whole number in [1, 100]"),
    ("--workers", "-1", "--workers: expected 0 or more"),
])
def test_bad_flag_values_and_a_missing_folder_are_errors_not_tracebacks(flag, value, message, tmp_path, capsys):
    from script_checks import load_script

    script = load_script("prepare_data")
    with pytest.raises(SystemExit) as exit_:
        script.main(["--videos", str(tmp_path), "--out", str(tmp_path / "o"), flag, value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert script.main(["--videos", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "error: " in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_file_name_that_is_not_utf8_is_prepared_by_both_routes(videos, tmp_path):
    """One rule for folders and shards: the file is readable, so both write it under the name the
    file system gave (its id carries the undecodable byte as Python does, ``caf\\udce9``), and both
    read it back."""
    import os

    from clip4vla.data.shards import ShardStore, write_shards
    from script_checks import copy_with_undecodable_name, load_script

    src = tmp_path / "v"
    src.mkdir()
    vid = copy_with_undecodable_name(videos / "a_tone.mp4", src).stem
    assert vid == os.fsdecode(b"caf\xe9")
    script = load_script("prepare_data")
    assert script.main(["--videos", str(src), "--out", str(tmp_path / "folders"), "--workers", "0", "--no-progress",
                        "--audio-subtype", "PCM_16"]) == 0
    assert script.main(["--videos", str(src), "--out", str(tmp_path / "shards"), "--shards", "--workers", "0",
                        "--no-progress"]) == 0
    assert read_manifest(tmp_path / "folders")[vid]["status"] == "ok"
    frames, mask = load_prepared_frames(tmp_path / "folders" / "frames" / vid, max_frames=4, size=32)
    store = ShardStore([tmp_path / "shards"])
    assert vid in store
    shard_frames, shard_mask = store.frames(vid, max_frames=4, size=32)
    assert mask.any() and torch.equal(mask, shard_mask) and torch.equal(frames, shard_frames)  # the same JPEGs
    wave = load_audio(tmp_path / "folders" / "audio" / f"{vid}.wav")
    assert wave.shape[1] > 0 and torch.equal(wave, store.audio(vid, None, None, 60.0))  # 16-bit both ways
