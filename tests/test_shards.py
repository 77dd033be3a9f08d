"""WebDataset shards: writing (bad files left out, resumable, a cut index line repaired), any
WebDataset reader decoding them as ours does, the three media routes giving the same samples, bad
or old-layout shards named, and a 2-rank x 2-worker resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clip4vla.audio import load_audio
from clip4vla.data import shards as shards_mod
from clip4vla.data.corpora import read_split
from clip4vla.data.dataset import SampleOptions, TriModalDataset
from clip4vla.data.prepare import prepare_videos
from clip4vla.media_errors import MediaError
from clip4vla.data.shards import INDEX, SHARD_FORMAT, ShardFormatError, ShardStore, iter_samples, write_shards
from clip4vla.models.preprocessing import Preprocessing
from audio_media import write_sound
from conftest import micro_pretrain_settings
from media_factory import write_empty, write_garbage, write_video

REPO = Path(__file__).resolve().parent.parent
# measured bounds of the raw route against the prepared one (tests/test_prepare_data.py)
JPEG_MEAN_TOL = 0.02
JPEG_MAX_TOL = 0.4
# 16-bit audio against the float decode, in normalised log-mel units: measured mean |diff| per
# clip up to 0.047 on the synthetic test clips (quantisation of their near-silent stretches)
AUDIO_MEAN_TOL = 0.07


@pytest.fixture(scope="module")
def mixed(synthetic_root, tmp_path_factory) -> Path:
    """Eight synthetic clips, a silent video, a sound file, a corrupt and an empty file."""
    d = tmp_path_factory.mktemp("mixed_media")
    for video in sorted((synthetic_root / "videos").glob("*.mp4"))[:8]:
        shutil.copy(video, d / video.name)
    write_video(d / "quiet.mp4", seconds=2.0, fps=10, audio=False)
    t = np.arange(2 * 16000) / 16000
    write_sound(d / "tone.wav", (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32))
    write_garbage(d / "broken.mp4")
    write_empty(d / "empty.mp4")
    return d


@pytest.fixture(scope="module")
def written(mixed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "shards"
    summary = write_shards(mixed, out, shard_bytes=300_000, workers=2, progress=False)
    assert summary.written == 10 and sorted(summary.failed) == ["broken", "empty"] and summary.shards >= 3
    return out


def test_shards_follow_the_webdataset_convention_and_leave_bad_files_out(mixed, written):
    samples = list(iter_samples(written))  # read back by the webdataset library itself
    ids = {json.loads(s["json"])["id"]: s for s in samples}
    clips = [p.stem for p in mixed.glob("video*.mp4")]
    assert sorted(ids) == sorted(["quiet", "tone"] + clips)
    frames = lambda sample: sorted(k for k in sample if k.endswith(".jpg"))  # noqa: E731
    assert "wav" not in ids["quiet"] and not frames(ids["tone"]) and "wav" in ids["tone"]
    meta = json.loads(ids[clips[0]]["json"])
    # one member per frame, named in time order, as WebDataset users expect
    names = frames(ids[clips[0]])
    assert meta["format"] == SHARD_FORMAT and names == [f"{i:03d}.jpg" for i in range(len(meta["frame_seconds"]))]
    assert [len(ids[clips[0]][n]) for n in names] == meta["frame_bytes"] and meta["frame_seconds"]
    manifest = [json.loads(line) for line in (written / "manifest.jsonl").read_text().splitlines()]
    errors = {m["video_id"]: m["error"] for m in manifest if m["status"] == "error"}
    assert set(errors) == {"broken", "empty"} and all(errors.values())
    assert len({s["__url__"] for s in samples}) >= 3  # several shards


def test_writing_resumes_after_a_kill_without_rewriting_finished_shards(mixed, written, tmp_path, monkeypatch):
    real, calls = shards_mod._encode, []

    def killed(job):
        if len(calls) == 9:
            raise KeyboardInterrupt
        calls.append(job[0])
        return real(job)

    monkeypatch.setattr(shards_mod, "_encode", killed)
    with pytest.raises(KeyboardInterrupt):
        write_shards(mixed, tmp_path, shard_bytes=300_000, workers=1, progress=False)
    monkeypatch.undo()
    first = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("shard-*.tar")}
    assert first  # some shards were finished before the kill; the one in progress stayed temporary
    summary = write_shards(mixed, tmp_path, shard_bytes=300_000, workers=1, progress=False)
    assert summary.skipped == sum(len(json.loads(line)["ids"]) + len(json.loads(line)["failed"])
                                  for line in list((tmp_path / INDEX).read_text().splitlines())[:len(first)])
    assert not list(tmp_path.glob(".tmp-*"))  # the unfinished shard was thrown away and redone
    for name, (stamp, data) in first.items():  # finished shards untouched
        assert (tmp_path / name).stat().st_mtime_ns == stamp
    # and the result is the uninterrupted one, byte for byte
    assert sorted(p.name for p in tmp_path.glob("shard-*.tar")) == sorted(p.name for p in written.glob("shard-*.tar"))
    for p in written.glob("shard-*.tar"):
        assert (tmp_path / p.name).read_bytes() == p.read_bytes(), p.name


def test_a_cut_index_line_is_repaired_and_no_shard_name_is_reused(mixed, written, tmp_path, caplog):
    """A kill while a shard's line is appended leaves the line without its newline. The rerun removes
    it (saying so) and writes that shard again: the folder ends as the uninterrupted run left it.
    A shard that an unreadable index line mentions keeps its name: its clips go to a new shard."""
    out = tmp_path / "shards"
    shutil.copytree(written, out)
    lines = (out / INDEX).read_text().splitlines(keepends=True)
    assert len(lines) >= 3
    k = len(lines) - 2  # killed while appending line k: shard k is in place, later ones never written
    (out / INDEX).write_text("".join(lines[:k]) + lines[k][: len(lines[k]) // 2])
    for line in lines[k + 1:]:
        (out / json.loads(line)["shard"]).unlink()
    with caplog.at_level("WARNING", logger="clip4vla.data.shards"):
        summary = write_shards(mixed, out, shard_bytes=300_000, workers=1, progress=False)
    assert "last line was cut by a kill" in caplog.text
    assert summary.shards == len(lines)
    assert (out / INDEX).read_bytes() == (written / INDEX).read_bytes()  # complete, nothing glued or lost
    for p in written.glob("shard-*.tar"):
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    assert write_shards(mixed, out, shard_bytes=300_000, workers=1, progress=False).written == 0  # a second rerun

    # an index damaged by an earlier version: a complete but unreadable line in the middle
    damaged = [json.loads(line) for line in (out / INDEX).read_text().splitlines()]
    lost = damaged[1]
    text = (out / INDEX).read_text().splitlines(keepends=True)
    text[1] = text[1][:40] + "\n"  # still names its shard
    (out / INDEX).write_text("".join(text))
    kept = (out / lost["shard"]).read_bytes()
    caplog.clear()
    with caplog.at_level("WARNING", logger="clip4vla.data.shards"):
        summary = write_shards(mixed, out, shard_bytes=300_000, workers=1, progress=False)
    assert f"{INDEX}:2: unreadable line skipped" in caplog.text
    assert summary.written == len(lost["ids"]) and (out / lost["shard"]).read_bytes() == kept  # not overwritten
    listed = [json.loads(line) for line in (out / INDEX).read_text().splitlines() if line.startswith("{\"")
              and line.endswith("}")]
    names = [line["shard"] for line in listed]
    assert len(names) == len(set(names)) and lost["shard"] not in names
    assert max(names) == f"shard-{len(lines):06d}.tar"  # after every name the index mentions
    store = ShardStore([out])
    for line in listed:
        for vid in line["ids"]:  # every listed clip readable from its listed shard
            frames, mask = store.frames(vid, max_frames=2, size=32)
            assert (mask.any() or vid == "tone") and vid in store
    assert sorted(v for line in listed for v in line["ids"]) == sorted(v for line in damaged for v in line["ids"])


def test_any_webdataset_reader_decodes_the_frames_and_audio_our_reader_gives(written):
    """The shards are plain WebDataset: the ``webdataset`` package's own image decoder gives the very
    pixels our indexed reader gives, and the audio member is an ordinary WAV with the same samples."""
    import io

    import soundfile as sf
    import webdataset as wds

    from clip4vla.video.transform import clip_transform

    store = ShardStore([written])
    urls = sorted(str(p) for p in written.glob("shard-*.tar"))
    with_frames = with_sound = 0
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("rgb8"):
        vid = sample["json"]["id"]  # the JSON member, decoded by webdataset as well
        names = sorted(k for k in sample if k.endswith(".jpg"))
        if names:
            pictures = torch.from_numpy(np.stack([sample[n] for n in names])).permute(0, 3, 1, 2)  # [F, 3, H, W] uint8
            ours, mask = store.frames(vid, max_frames=len(names), size=64)  # every frame, in order
            assert bool(mask.all()) and torch.equal(clip_transform(pictures, 64), ours), vid
            with_frames += 1
        assert ("wav" in sample) == sample["json"]["has_audio"]
        if "wav" in sample:
            wave, rate = sf.read(io.BytesIO(sample["wav"]), dtype="float32", always_2d=True)  # [N, 2]
            assert rate == 16000 and torch.equal(torch.from_numpy(wave.T.copy()), store.audio(vid, None, None, None)), vid
            with_sound += 1
    assert with_frames == 9 and with_sound >= 2  # eight clips + the silent video; the sound file and clips with sound


def test_old_layout_shards_are_refused_with_the_way_out(mixed, written, synthetic_root, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(written, old)
    lines = [json.loads(line) for line in (old / INDEX).read_text().splitlines()]
    for line in lines:
        del line["format"]  # as format 1 wrote its index
    (old / INDEX).write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ShardFormatError, match=r"format 1 \(one '.frames' member per clip.*reads format 2.*"
                                               r"prepare_data.py --videos"):
        ShardStore([old])
    before = (old / INDEX).read_bytes()
    with pytest.raises(ShardFormatError, match="format 1"):  # never mixed with the new layout
        write_shards(mixed, old, workers=1, progress=False)
    from script_checks import load_script

    assert load_script("prepare_data").main(["--videos", str(mixed), "--out", str(old), "--shards", "--no-progress"]) == 2
    assert "error: " in capsys.readouterr().err
    assert (old / INDEX).read_bytes() == before
    training = subprocess.run([sys.executable, str(REPO / "scripts" / "pretrain.py"), "--set", "model.arch=micro",
                               "--set", f"data.synthetic.root={synthetic_root}", "--set", "data.synthetic.clips=24",
                               "--set", "data.media=shards", "--set", f"data.synthetic.shards_dir={old}",
                               "--set", f"train.output_dir={tmp_path / 'run'}"], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert training.returncode == 2 and "shards of format 1" in training.stderr and "Traceback" not in training.stderr


def test_raw_prepared_and_shard_routes_give_the_same_samples(synthetic_root, tmp_path):
    records = read_split(_data(synthetic_root), "synthetic", "test", "pretrain")[:6]
    videos = tmp_path / "videos"
    videos.mkdir()
    for r in records:
        shutil.copy(r.video_path, videos / r.video_path.name)
    prepared = tmp_path / "prepared"
    prepare_videos(videos, prepared, workers=1, audio_subtype="PCM_16", progress=False)  # shards hold 16-bit audio
    write_shards(videos, tmp_path / "shards", shard_bytes=10**9, workers=1, progress=False, audio_format="flac")
    write_shards(videos, tmp_path / "shards_wav", shard_bytes=10**9, workers=1, progress=False)  # WAV: the default
    import dataclasses

    with_prepared = [dataclasses.replace(r, frames_dir=prepared / "frames" / r.video_id,
                                         audio_path=prepared / "audio" / f"{r.video_id}.wav") for r in records]
    base = SampleOptions(inputs=Preprocessing(max_frames=3, max_segments=2), masked_audio=True)
    routes = {
        "raw": TriModalDataset(records, base),
        "prepared": TriModalDataset(with_prepared, dataclasses.replace(base, media="prepared")),
        "shards": TriModalDataset(records, dataclasses.replace(base, media="shards", shards=(("synthetic", str(tmp_path / "shards")),))),
        "wav": TriModalDataset(records, dataclasses.replace(base, media="shards", shards=(("synthetic", str(tmp_path / "shards_wav")),))),
    }
    for i in range(len(records)):
        raw, prep, shard = (routes[k][i] for k in ("raw", "prepared", "shards"))
        assert raw["valid"] and prep["valid"] and shard["valid"]
        for key in ("frames", "frame_mask", "audio_mask", "text"):
            assert torch.equal(prep[key], shard[key]), (i, key)  # the same JPEG bytes: identical frames
        wav = routes["wav"][i]
        for key in ("frames", "frame_mask", "audio", "audio_mask", "masked_audio", "text"):
            assert torch.equal(prep[key], wav[key]), (i, key)  # 16-bit WAV both ways: the very same sample
        # 16-bit samples both ways (WAV truncates to 16 bits, FLAC rounds): at most one step apart;
        # in the log-mel this shows only in near-silent bins, hence a bound on the mean
        if shard["audio_mask"].any():
            wave_prep = load_audio(with_prepared[i].audio_path)
            wave_shard = routes["shards"].stores["synthetic"].audio(records[i].video_id, None, None, 60.0)
            assert float((wave_prep - wave_shard).abs().max()) <= 1.0001 / 32768
        for other in (prep, raw):
            assert float((other["audio"] - shard["audio"]).abs().mean()) <= AUDIO_MEAN_TOL, i
        diff = (raw["frames"] - shard["frames"]).abs()
        assert float(diff.mean()) <= JPEG_MEAN_TOL and float(diff.max()) <= JPEG_MAX_TOL
        assert torch.equal(raw["frame_mask"], shard["frame_mask"]) and torch.equal(raw["audio_mask"], shard["audio_mask"])


def _data(root: Path):
    from clip4vla.config import DataConfig, SyntheticData

    return DataConfig(synthetic=SyntheticData(root=str(root), clips=24))


def test_bad_shards_skip_their_samples_with_the_shard_and_offset(written, tmp_path):
    broken = tmp_path / "shards"
    shutil.copytree(written, broken)
    lines = [json.loads(line) for line in (broken / INDEX).read_text().splitlines()]
    truncated, missing = lines[0], lines[1]
    data = (broken / truncated["shard"]).read_bytes()
    (broken / truncated["shard"]).write_bytes(data[: len(data) // 3])
    (broken / missing["shard"]).unlink()
    store = ShardStore([broken])
    reasons = {}
    for vid in truncated["ids"] + missing["ids"]:
        try:
            store.frames(vid, max_frames=2)
            store.audio(vid, None, None, 60.0)
        except shards_mod.ShardError as err:
            reasons[vid] = str(err)
        except shards_mod.NoAudioError:
            pass  # a clip stored without sound, readable
    assert set(missing["ids"]) <= set(reasons)
    assert all("cannot open the shard" in reasons[v] and missing["shard"] in reasons[v] for v in missing["ids"])
    cut = [v for v in truncated["ids"] if v in reasons]
    assert cut and all(truncated["shard"] in reasons[v] and "@" in reasons[v] and "truncated" in reasons[v] for v in cut)
    # a clip's JSON without a required field
    import webdataset as wds

    odd = tmp_path / "odd"
    odd.mkdir()
    with open(odd / "shard-000000.tar", "wb") as fh, wds.TarWriter(fh, encoder=False, mtime=0) as sink:
        sink.write({"__key__": "000000000", "json": json.dumps({"id": "x"}).encode()})
    (odd / INDEX).write_text(json.dumps({"format": SHARD_FORMAT, "shard": "shard-000000.tar",
                                         "bytes": (odd / "shard-000000.tar").stat().st_size, "ids": ["x"], "failed": {},
                                         "samples": [["x", "000000000",
                                         shards_mod._member_offsets(odd / "shard-000000.tar")["000000000"]]]}) + "\n")
    with pytest.raises(shards_mod.ShardError, match="JSON lacks"):
        ShardStore([odd]).frames("x")
    # a frame member whose tar header does not match the index: named, never misread
    damaged = tmp_path / "damaged"
    shutil.copytree(written, damaged)
    line = json.loads((damaged / INDEX).read_text().splitlines()[0])
    vid, _, members = next(s for s in line["samples"] if "frames" in s[2])
    with open(damaged / line["shard"], "r+b") as fh:
        fh.seek(members["frames"][0] - 512)
        fh.write(b"X")  # the first frame's header: its checksum fails
    with pytest.raises(shards_mod.ShardError, match=rf"{line['shard']}@{members['frames'][0]} \({vid} frame 0\)"):
        ShardStore([damaged]).frames(vid, max_frames=64)
    with pytest.raises(FileNotFoundError, match="not a shard folder"):
        ShardStore([tmp_path / "nowhere"])


def test_dataset_skips_a_clip_of_a_missing_shard_and_keeps_the_batch_shape(synthetic_root, written, tmp_path):
    broken = tmp_path / "shards"
    shutil.copytree(written, broken)
    line = json.loads((broken / INDEX).read_text().splitlines()[0])
    (broken / line["shard"]).unlink()
    records = [r for r in read_split(_data(synthetic_root), "synthetic", "train", "pretrain")
               + read_split(_data(synthetic_root), "synthetic", "test", "pretrain") if r.video_id in line["ids"]]
    assert records
    dataset = TriModalDataset(records, SampleOptions(inputs=Preprocessing(max_frames=2, max_segments=2), media="shards", shards=(("synthetic", str(broken)),)))
    sample = dataset[0]
    assert not sample["valid"] and line["shard"] in sample["skip_reason"]
    assert sample["frames"].shape == (2, 3, 224, 224)


def test_two_ranks_two_workers_resume_mid_epoch_on_shards(synthetic_root, tmp_path):
    shards = tmp_path / "shards"
    write_shards(synthetic_root / "videos", shards, shard_bytes=500_000, workers=2, progress=False)
    out = tmp_path / "run"
    settings = micro_pretrain_settings(synthetic_root, out)
    settings.update({"data.media": "shards", "data.synthetic.shards_dir": shards, "data.num_workers": 2,
                     "train.device": "cpu", "train.batch_size": 4, "train.max_steps": 4, "train.keep_last": 10,
                     "data.val_split": "null", "data.test_split": "null"})
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO)

    def run(*extra: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 str(REPO / "scripts" / "pretrain.py"), *args, *extra], capture_output=True, text=True,
                                env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        return result

    run()
    final = torch.load(out / "checkpoints" / "ckpt_000004.pt", weights_only=True)["model"]
    for step in (3, 4):  # as if killed after step 2, in the middle of the epoch
        (out / "checkpoints" / f"ckpt_{step:06d}.pt").unlink()
    resumed = run("--resume")
    assert "ckpt_000002.pt" in resumed.stderr
    again = torch.load(out / "checkpoints" / "ckpt_000004.pt", weights_only=True)["model"]
    for key in final:
        assert torch.equal(final[key], again[key]), key


def test_missing_shard_folder_or_setting_fails_at_start_up(synthetic_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, str(REPO / "scripts" / "pretrain.py"), "--set", f"data.synthetic.root={synthetic_root}",
            "--set", "data.synthetic.clips=24", "--set", "data.media=shards", "--set", f"train.output_dir={tmp_path / 'run'}"]
    unset = subprocess.run(base, capture_output=True, text=True, env=env, timeout=120)
    assert unset.returncode == 2 and "data.synthetic.shards_dir" in unset.stderr
    missing = subprocess.run(base + ["--set", f"data.synthetic.shards_dir={tmp_path / 'nowhere'}"], capture_output=True,
                             text=True, env=env, timeout=120)
    assert missing.returncode == 2 and "not a shard folder" in missing.stderr and "Traceback" not in missing.stderr


def test_evaluation_of_a_model_reads_the_configs_shards(synthetic_root, micro_export, tmp_path):
    from clip4vla import load_model
    from clip4vla.config import RetrievalConfig, load_config
    from clip4vla.cli import evaluation_split

    write_shards(synthetic_root / "videos", tmp_path / "shards", workers=1, progress=False)
    data = [f"data.synthetic.root={synthetic_root}", "data.synthetic.clips=24"]
    model = load_model(micro_export)
    raw_config = load_config(RetrievalConfig, None, data)
    shard_config = load_config(RetrievalConfig, None, data + ["data.media=shards",
                                                             f"data.synthetic.shards_dir={tmp_path / 'shards'}"])
    _, raw = evaluation_split(raw_config, model, "test", "retrieval")
    split, shard = evaluation_split(shard_config, model, None, "retrieval")  # the config's test split
    assert split == "test" and shard.options.media == "shards" and set(shard.stores) == {"synthetic"}
    assert len(shard) == len(raw) > 0
    for i in range(len(raw)):
        a, b = raw[i], shard[i]
        assert b["valid"] and torch.equal(a["frame_mask"], b["frame_mask"]) and torch.equal(a["audio_mask"], b["audio_mask"])
        diff = (a["frames"] - b["frames"]).abs()
        assert float(diff.mean()) <= JPEG_MEAN_TOL and float(diff.max()) <= JPEG_MAX_TOL


def test_cli_writes_shards_with_metadata_and_reports_unreadable_files(mixed, tmp_path):
    clip = sorted(p.stem for p in mixed.glob("video*.mp4"))[0]
    (tmp_path / "meta.json").write_text(json.dumps({clip: {"captions": ["a red circle"], "audio_type": "nb"}}))
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--videos", str(mixed), "--out",
                             str(tmp_path / "out"), "--shards", "--meta", str(tmp_path / "meta.json"), "--no-progress"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 0 and "10 written" in result.stdout and "2 unreadable" in result.stdout  # never fatal
    assert "unreadable: broken, empty" in result.stdout
    stored = {json.loads(s["json"])["id"]: json.loads(s["json"]) for s in iter_samples(tmp_path / "out")}
    assert stored[clip]["meta"] == {"captions": ["a red circle"], "audio_type": "nb"} and "meta" not in stored["tone"]


def _rewrite_shard(path: Path, edit) -> None:
    """Write the tar at ``path`` again with ``edit([(TarInfo, data), ...])``'s members, as a user's
    tool would after the shard was indexed."""
    import io
    import tarfile

    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar]
    with tarfile.open(path, "w") as tar:
        for info, data in edit(members):
            tar.addfile(info, io.BytesIO(data))


def _read_clip(store: ShardStore, vid: str) -> None:
    store.frames(vid, max_frames=64, size=32)
    try:
        store.audio(vid, None, None, None)
    except shards_mod.NoAudioError:
        pass  # a clip stored without sound


def test_a_shard_edited_after_indexing_is_named_with_the_command_that_rewrites_it(written, tmp_path):
    """Members reordered, a JSON member lost or a clip's members renamed after ``shards.jsonl`` was
    written: every read checks the member's full name (key and extension) and size, so the clip is
    skipped with the reason and the way out, never read as another clip's data."""
    line = next(json.loads(text) for text in (written / INDEX).read_text().splitlines()
                if sum("frames" in s[2] and "wav" in s[2] for s in json.loads(text)["samples"]) >= 2)
    shard = written / line["shard"]
    first, second = [(vid, key) for vid, key, members in line["samples"]
                     if "frames" in members and "wav" in members][:2]

    def edited(edit) -> ShardStore:
        folder = tmp_path / f"edit{len(list(tmp_path.iterdir()))}"
        shutil.copytree(written, folder)
        _rewrite_shard(folder / line["shard"], edit)
        return ShardStore([folder])

    unchanged = edited(lambda members: members)  # a rewrite alone moves nothing: the edits below are the cause
    for vid, _ in (first, second):
        _read_clip(unchanged, vid)

    def renamed(members):  # the first clip's members under a key of the same width (offsets unchanged)
        for info, _ in members:
            if info.name.startswith(first[1] + "."):
                info.name = "9" * len(first[1]) + info.name[len(first[1]):]
        return members

    def frames_renamed(members):  # only the frames: the JSON and audio members still match the index
        for info, _ in members:
            if info.name.startswith(first[1] + ".") and info.name.endswith(".jpg"):
                info.name = second[1] + info.name[len(first[1]):]
        return members

    def swapped(members):  # the two clips' keys exchanged: each read would give the other clip's data
        for info, _ in members:
            key, _, ext = info.name.partition(".")
            info.name = {first[1]: second[1], second[1]: first[1]}.get(key, key) + "." + ext
        return members

    edits = {
        "reordered": lambda members: list(reversed(members)),
        "json lost": lambda members: [(i, d) for i, d in members if i.name != f"{first[1]}.json"],
        "audio lost": lambda members: [(i, d) for i, d in members if i.name != f"{first[1]}.wav"],
        "renamed": renamed,
        "frames renamed": frames_renamed,
        "swapped": swapped,
    }
    messages = {}
    for what, edit in edits.items():
        try:
            _read_clip(edited(edit), first[0])
            messages[what] = "read without an error"
        except MediaError as err:  # a ShardError, or before it a decoder's error on another member's bytes
            messages[what] = f"{type(err).__name__}: {err}"
    report = "\n".join(f"{what}: {message}" for what, message in messages.items())
    assert all("the shard and its index disagree: rewrite it with" in m for m in messages.values()), report
    for what, message in messages.items():
        assert "python scripts/prepare_data.py --videos" in message and "--shards" in message, what
        assert line["shard"] in message and first[0] in message, (what, message)
    assert shard.read_bytes() == (written / line["shard"]).read_bytes()  # the module's shards untouched


def test_the_readmes_webdataset_example_decodes_frames_and_sound(mixed, written, tmp_path):
    """README, Real pre-training: its WebDataset example, run as written on our shards (WAV and FLAC),
    raises no warning from webdataset and gives each clip's frames as pictures, the very pixels our
    reader gives, and its sound as samples, the very samples our reader gives."""
    import re
    import warnings

    pytest.importorskip("webdataset", reason="webdataset is not installed (pip install -e '.[dev]')")
    from PIL import Image

    from clip4vla.video.transform import clip_transform

    text = (REPO / "README.md").read_text(encoding="utf-8")
    examples = [b for b in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M) if "import webdataset" in b]
    assert len(examples) == 1, "the README shows one Python example reading the shards with webdataset"
    example, folder_in_readme = examples[0], "data/howto100m/shards"
    assert folder_in_readme in example and example.rstrip("\n").splitlines()[-1].startswith("    ")  # ends in the loop
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in [p.name for p in sorted(mixed.glob("video*.mp4"))[:2]] + ["quiet.mp4", "tone.wav"]:
        shutil.copy(mixed / name, sources / name)
    flac = tmp_path / "flac"
    write_shards(sources, flac, workers=1, progress=False, audio_format="flac")
    for folder, clips in ((written, 10), (flac, 4)):
        seen: list = []
        code = example.replace(folder_in_readme, str(folder)) + "    seen.append((meta, frames, sound))\n"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec(compile(code, "README.md", "exec"), {"seen": seen})
        # (ResourceWarnings, hidden by default, are left aside: webdataset leaves its shard files to the collector)
        shown = [str(w.message) for w in caught if "webdataset" in w.filename and w.category is not ResourceWarning]
        assert not shown, folder
        store = ShardStore([folder])
        assert len(seen) == clips and len({meta["id"] for meta, _, _ in seen}) == clips
        for meta, frames, sound in seen:
            vid = meta["id"]
            assert len(frames) == len(meta["frame_seconds"]) and all(isinstance(f, Image.Image) for f in frames)
            if frames:
                pictures = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(0, 3, 1, 2)
                ours, mask = store.frames(vid, max_frames=len(frames), size=64)
                assert bool(mask.all()) and torch.equal(clip_transform(pictures, 64), ours), vid
            assert (sound is not None) == meta["has_audio"], vid
            if sound is not None:
                assert sound.dtype == np.float32 and sound.shape[1] == 2
                assert torch.equal(torch.from_numpy(sound.T.copy()), store.audio(vid, None, None, None)), vid
