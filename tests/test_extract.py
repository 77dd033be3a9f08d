"""Feature extraction: sharded, resumable without duplicates or losses, unreadable files listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import clip4vla
from clip4vla import extract as extract_mod
from clip4vla.extract import extract_features, find_media, model_identity, read_shards
from audio_media import write_sound
from media_factory import write_garbage, write_video
from script_checks import assert_help_is_complete, copy_with_undecodable_name, load_script

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("extract_media")
    for i in range(4):
        write_video(d / f"clip{i}.mp4", seconds=2.0 + i, fps=10)
    (d / "sub").mkdir()
    write_video(d / "sub" / "silent.mp4", seconds=2.0, fps=10, audio=False)
    t = np.arange(2 * 16000) / 16000
    write_sound(d / "tone.wav", (0.2 * np.sin(2 * np.pi * 500 * t)).astype(np.float32))
    write_garbage(d / "broken.mp4")
    return d


@pytest.fixture(scope="module")
def model(micro_export):
    return clip4vla.load_model(micro_export)


def _media(folder: Path) -> list[tuple[str, Path]]:
    return [(p.relative_to(folder).as_posix(), p) for p in find_media(folder)]


def test_shards_hold_every_readable_file_once_with_the_model_identity(model, micro_export, media_dir, tmp_path):
    identity = model_identity(model, micro_export)
    counts = extract_features(model, _media(media_dir), tmp_path, identity, shard_size=3, progress=False)
    assert counts == {"done_before": 0, "skipped_before": 0, "extracted": 6, "skipped": 1, "duplicates": 0}
    assert sorted(p.name for p in tmp_path.glob("shard_*.pt")) == ["shard_00000.pt", "shard_00001.pt"]
    items, stored = read_shards(tmp_path)
    assert stored["sha256"] == identity["sha256"]
    by_id = {item["id"]: item for item in items}
    assert sorted(by_id) == ["clip0.mp4", "clip1.mp4", "clip2.mp4", "clip3.mp4", "sub/silent.mp4", "tone.wav"]
    skipped = [json.loads(line) for line in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert [s["id"] for s in skipped] == ["broken.mp4"] and skipped[0]["reason"]
    clip = by_id["clip3.mp4"]
    dim = model.clip.config.embed_dim
    assert clip["video"].shape == (dim,) and clip["audio"].shape == (dim,)
    assert clip["frames"].shape[0] == clip["window_video"].shape[0] == len(clip["spans"])
    assert clip["segments"].shape[:2] == clip["segment_mask"].shape
    assert by_id["sub/silent.mp4"]["audio"] is None and by_id["tone.wav"]["video"] is None
    torch.testing.assert_close(clip["video"], clip4vla.embed_video(model, [media_dir / "clip3.mp4"])[0], rtol=0, atol=0)


def test_a_killed_run_resumes_without_duplicates_or_losses(model, micro_export, media_dir, tmp_path, monkeypatch):
    identity = model_identity(model, micro_export)
    whole = tmp_path / "whole"
    extract_features(model, _media(media_dir), whole, identity, shard_size=2, progress=False)
    reference = {item["id"]: item for item in read_shards(whole)[0]}

    real_item, calls = extract_mod._item, []

    def killed_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the kill arrives in the middle of the fourth file
        calls.append(args[1])
        return real_item(*args, **kwargs)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(extract_mod, "_item", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        extract_features(model, _media(media_dir), resumed, identity, shard_size=2, progress=False)
    monkeypatch.undo()
    assert len(read_shards(resumed)[0]) == 2  # one full shard landed, the half-full one was lost with the kill
    counts = extract_features(model, _media(media_dir), resumed, identity, shard_size=2, progress=False)
    assert counts["done_before"] == 2 and counts["extracted"] == 4
    items = read_shards(resumed)[0]
    ids = [item["id"] for item in items]
    assert len(ids) == len(set(ids)) == len(reference)
    for item in items:  # the same rows, bit for bit
        for key in ("video", "audio", "frames", "segments"):
            a, b = item[key], reference[item["id"]][key]
            assert (a is None and b is None) or torch.equal(a, b)
    again = extract_features(model, _media(media_dir), resumed, identity, shard_size=2, progress=False)
    assert again["extracted"] == 0 and again["skipped_before"] == 1  # nothing done twice, the broken file not retried


def test_another_models_folder_is_refused(model, micro_export, media_dir, tmp_path):
    identity = model_identity(model, micro_export)
    extract_features(model, _media(media_dir)[:1], tmp_path, identity, progress=False)
    with pytest.raises(ValueError, match="another model"):
        extract_features(model, _media(media_dir), tmp_path, {**identity, "sha256": "0" * 64}, progress=False)


def test_script_reads_a_manifest_and_reports(micro_export, media_dir, tmp_path):
    manifest = tmp_path / "files.txt"
    manifest.write_text(f"{media_dir / 'clip0.mp4'}\n{media_dir / 'broken.mp4'}\n{tmp_path / 'missing.mp4'}\n")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "extract_features.py"), "--model", str(micro_export),
                          "--manifest", str(manifest), "--out", str(tmp_path / "features"), "--no-progress"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "1 files extracted, 2 skipped" in out.stdout
    skipped = (tmp_path / "features" / "skipped.jsonl").read_text()
    assert "missing.mp4" in skipped and "broken.mp4" in skipped


def test_a_path_listed_twice_is_extracted_once_and_the_duplicates_counted(micro_export, media_dir, tmp_path, capsys,
                                                                          caplog):
    manifest = tmp_path / "files.txt"
    clip, tone = media_dir / "clip0.mp4", media_dir / "tone.wav"
    manifest.write_text(f"{clip}\n{tone}\n{clip}\n\n{clip}\n")
    out = tmp_path / "features"
    with caplog.at_level("WARNING", logger="clip4vla.extract"):
        assert load_script("extract_features").main(["--model", str(micro_export), "--manifest", str(manifest),
                                                      "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("2 files extracted, 0 skipped") and "0 done before, 2 duplicate(s) dropped" in printed
    assert "2 duplicate id(s) dropped" in caplog.text
    items = read_shards(out)[0]
    assert sorted(item["id"] for item in items) == sorted([str(clip), str(tone)])  # one row per id


def test_a_missing_manifest_and_bad_flags_are_errors_not_tracebacks(micro_export, tmp_path, capsys):
    script = load_script("extract_features")
    common = ["--model", str(micro_export), "--out", str(tmp_path / "features")]
    for manifest, reason in ((tmp_path / "nowhere.txt", "No such file or directory"), (tmp_path, "Is a directory")):
        with pytest.raises(SystemExit) as exit_:
            script.main([*common, "--manifest", str(manifest)])
        assert exit_.value.code == 2 and f"error: --manifest {manifest}: {reason}" in capsys.readouterr().err
    for flag, value, message in (("--shard-size", "0", "expected a whole number >= 1"),
                                 ("--audio-type", "nan", "expected vb, nb, auto or a number in [0, 1]"),
                                 ("--audio-type", "2", "expected vb, nb, auto or a number in [0, 1]"),
                                 ("--device", "gpu0", "expected auto, cpu, cuda or cuda:N")):
        with pytest.raises(SystemExit) as exit_:
            script.main([*common, "--media", str(tmp_path), flag, value])
        assert exit_.value.code == 2 and message in capsys.readouterr().err, flag
    assert not (tmp_path / "features").exists()  # nothing written


def test_help_describes_every_flag_with_its_default():
    assert_help_is_complete(load_script("extract_features").build_parser())


def test_the_audio_type_defaults_to_auto_as_search_and_the_embedding_example_do(model, micro_export, media_dir,
                                                                                tmp_path):
    """One default for every way of embedding your own files: ``clip4vla-search index`` and the
    README's ``embed_audio(..., audio_type="auto")`` let the speech detector choose the token per file,
    and so does the script; each row records the token chosen."""
    from clip4vla.embed import embed_windows

    script = load_script("extract_features")
    args = script.build_parser().parse_args(["--model", "m", "--media", "d", "--out", "o"])
    assert args.audio_type == "auto"
    out = tmp_path / "features"
    assert script.main(["--model", str(micro_export), "--media", str(media_dir), "--out", str(out),
                        "--no-progress"]) == 0
    rows = {item["id"]: item for item in read_shards(out)[0]}
    for item_id in ("clip0.mp4", "tone.wav"):
        chosen = embed_windows(model, media_dir / item_id, video=False, audio_type="auto")
        assert rows[item_id]["audio_type"] == chosen.audio_type in ("vb", "nb"), item_id
        assert torch.equal(rows[item_id]["audio"], chosen.pooled("audio")), item_id


def test_a_file_name_that_is_not_utf8_is_listed_or_extracted_never_fatal(model, micro_export, media_dir, tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    odd = copy_with_undecodable_name(media_dir / "clip1.mp4", folder)
    good = folder / "clip0.mp4"
    good.write_bytes((media_dir / "clip0.mp4").read_bytes())
    out = tmp_path / "features"
    counts = extract_features(model, _media(folder), out, model_identity(model, micro_export), shard_size=10,
                              progress=False)
    assert counts["extracted"] + counts["skipped"] == 2 and counts["extracted"] >= 1
    ids = [item["id"] for item in read_shards(out)[0]]
    assert "clip0.mp4" in ids  # the pending shard was written, whatever happened to the odd name
    if counts["skipped"]:  # the audio decoder opens files by UTF-8 name only: listed, the name escaped
        skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
        assert skipped[0]["id"] == odd.name and "caf\\xe9.mp4: the file name is not valid UTF-8" in skipped[0]["reason"]
    else:
        assert odd.name in ids
