"""``clip4vla-search``: index a folder once, update it incrementally, query it; bad input is named."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import clip4vla
from clip4vla import search as search_mod
from clip4vla.embed import embed_windows
from clip4vla.search import DEFAULT_NAME, SearchError, load_index, main, rank
from audio_media import write_sound
from media_factory import write_empty, write_garbage, write_video
from script_checks import assert_help_is_complete, copy_with_undecodable_name

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A user's folder: short and long videos, a silent one, a sound file, two broken files, a note."""
    d = tmp_path_factory.mktemp("my_videos")
    write_video(d / "short.mp4", seconds=3.0, fps=10)
    (d / "holiday").mkdir()
    write_video(d / "holiday" / "long.mp4", seconds=14.0, fps=5)
    write_video(d / "silent.mp4", seconds=2.0, fps=10, audio=False)
    t = np.arange(3 * 16000) / 16000
    write_sound(d / "rain.wav", (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))
    write_garbage(d / "broken.mp4")
    write_empty(d / "empty.mp4")
    (d / "notes.txt").write_text("not media")
    return d


@pytest.fixture(scope="module")
def indexed(folder, micro_export, tmp_path_factory) -> Path:
    """A private copy of ``folder`` with its index built through the command line."""
    d = tmp_path_factory.mktemp("indexed") / "videos"
    shutil.copytree(folder, d)
    assert main(["index", str(d), "--model", str(micro_export), "--no-progress"]) == 0
    return d


def test_index_embeds_every_readable_file_and_lists_the_rest(indexed, capsys):
    index = load_index(indexed / DEFAULT_NAME)
    assert index["paths"] == ["holiday/long.mp4", "rain.wav", "short.mp4", "silent.mp4"]
    assert sorted(index["skipped"]) == ["broken.mp4", "empty.mp4"]
    assert all(index["skipped"][k]["reason"] for k in index["skipped"])
    assert index["count"].tolist() == [4, 1, 1, 1]  # the 14-s video is 4 windows
    # what has no pictures / no sound is flagged, not filled with a made-up embedding
    assert index["has_video"].tolist() == [True] * 4 + [False, True, True]
    assert index["has_audio"].tolist() == [True] * 4 + [True, True, False]


def test_query_ranks_by_the_best_window_as_computed_independently(indexed, micro_export):
    model = clip4vla.load_model(micro_export)
    index = load_index(indexed / DEFAULT_NAME)
    text = "a red circle moves left"
    query = clip4vla.embed_text(model, [text])[0]
    embedded = {name: embed_windows(model, indexed / name, video=name != "rain.wav", audio_type="auto")
                for name in ("holiday/long.mp4", "short.mp4", "silent.mp4", "rain.wav")}
    # the side a file lacks takes the query's mean over every window that has it
    mean_v = torch.cat([w.video @ query for w in embedded.values() if w.video is not None]).mean()
    mean_a = torch.cat([w.audio @ query for w in embedded.values() if w.audio is not None]).mean()
    expected = {}
    for name, w in embedded.items():
        v = w.video @ query if w.video is not None else mean_v.expand(len(w.spans))
        a = w.audio @ query if w.audio is not None else mean_a.expand(len(w.spans))
        scores = (v + a) / 2
        best = int(scores.argmax())
        parts = (float(v[best]) if w.video is not None else None, float(a[best]) if w.audio is not None else None)
        expected[name] = (float(scores.max()), w.spans[best], parts)
    results = search_mod.search(index, model, text, top_k=10, modality="av")
    assert [Path(r["path"]).relative_to(indexed).as_posix() for r in results] == sorted(
        expected, key=lambda n: -expected[n][0])
    for r in results:
        score, span, (vision, sound) = expected[Path(r["path"]).relative_to(indexed).as_posix()]
        assert r["score"] == pytest.approx(score, abs=1e-4)
        assert (r["start"], r["end"]) == (round(span[0], 2), round(span[1], 2))
        # the parts of the score: the best window's two cosines, None for the side a file lacks
        assert (r["vision"] is None, r["sound"] is None) == (vision is None, sound is None)
        assert r["vision"] is None or r["vision"] == pytest.approx(vision, abs=1e-4)
        assert r["sound"] is None or r["sound"] == pytest.approx(sound, abs=1e-4)
    assert [r["windows"] for r in results if r["path"].endswith("long.mp4")] == [4]
    # each modality only ranks files that have it
    audio_only = {Path(r["path"]).name for r in rank(index, query, 10, "a")}
    vision_only = {Path(r["path"]).name for r in rank(index, query, 10, "v")}
    assert audio_only == {"long.mp4", "short.mp4", "rain.wav"}
    assert vision_only == {"long.mp4", "short.mp4", "silent.mp4"}
    assert len(rank(index, query, 2, "av")) == 2


def test_query_command_prints_table_and_json(indexed, capsys):
    assert main(["query", "a siren wails", "--dir", str(indexed), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("  1. ")
    assert main(["query", "a siren wails", "--dir", str(indexed), "--json", "--modality", "a"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {Path(r["path"]).name for r in rows} == {"long.mp4", "short.mp4", "rain.wav"}
    assert all(set(r) == {"path", "score", "start", "end", "windows", "id", "window", "vision", "sound", "per_window"}
               for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)


def test_a_query_longer_than_the_context_is_truncated_with_a_warning(indexed, capsys, caplog):
    with caplog.at_level("WARNING"):
        assert main(["query", " ".join(["dog"] * 100), "--dir", str(indexed), "--top-k", "1"]) == 0
    assert "truncated" in caplog.text and capsys.readouterr().out.startswith("  1. ")


def test_reindex_embeds_only_new_and_changed_files_and_drops_deleted(folder, micro_export, tmp_path, capsys):
    d = tmp_path / "videos"
    shutil.copytree(folder, d)
    assert main(["index", str(d), "--model", str(micro_export), "--no-progress"]) == 0
    before = load_index(d / DEFAULT_NAME)
    capsys.readouterr()
    assert main(["index", str(d), "--model", str(micro_export), "--no-progress"]) == 0
    assert "6 files: 0 embedded, 6 unchanged, 0 dropped" in capsys.readouterr().out
    (d / "silent.mp4").unlink()
    write_video(d / "short.mp4", seconds=5.0, fps=10)  # changed
    write_video(d / "new.mkv", seconds=2.0, fps=10)  # added
    assert main(["index", str(d), "--model", str(micro_export), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "6 files: 2 embedded, 4 unchanged, 1 dropped (deleted), 2 unreadable" in out
    assert "unreadable: broken.mp4" in out
    after = load_index(d / DEFAULT_NAME)
    assert after["paths"] == ["holiday/long.mp4", "new.mkv", "rain.wav", "short.mp4"]
    row = lambda idx, name: idx["video"][int(idx["first"][idx["paths"].index(name)])]  # noqa: E731
    assert torch.equal(row(before, "holiday/long.mp4"), row(after, "holiday/long.mp4"))  # kept, not re-embedded
    assert not torch.equal(row(before, "short.mp4"), row(after, "short.mp4"))


def test_another_model_or_version_is_refused_and_the_index_kept(indexed, micro_export, tmp_path, capsys):
    from clip4vla.models.checkpoints import export_model
    from clip4vla.models.clip import CLIPConfig
    from clip4vla.models.clip4vla import CLIP4VLA
    from clip4vla.models.preprocessing import Preprocessing

    torch.manual_seed(1)
    other = export_model(CLIP4VLA.from_config(CLIPConfig.micro()), tmp_path / "other.pt",
                         Preprocessing(max_frames=2, max_segments=2), task="pretrain")
    index_file = indexed / DEFAULT_NAME
    before = index_file.read_bytes()
    assert main(["index", str(indexed), "--model", str(other), "--no-progress"]) == 2
    assert "built with another model" in capsys.readouterr().err
    assert main(["query", "a dog", "--dir", str(indexed), "--model", str(other)]) == 2
    assert "not the model this index was built with" in capsys.readouterr().err
    assert index_file.read_bytes() == before
    old = tmp_path / "old.pt"
    torch.save({**torch.load(index_file, weights_only=True), "version": 0}, old)
    with pytest.raises(SearchError, match="index version 0.*--rebuild"):
        load_index(old)
    old.write_bytes(b"half an index")
    with pytest.raises(SearchError, match="not a readable index"):
        load_index(old)


def test_unwritable_location_and_failed_save_lose_nothing(indexed, micro_export, monkeypatch, capsys):
    index_file = indexed / DEFAULT_NAME
    before = index_file.read_bytes()
    # tests may run as root, for whom every folder is writable: make the check see a read-only one
    monkeypatch.setattr(search_mod.os, "access", lambda path, mode: False)
    assert main(["index", str(indexed), "--model", str(micro_export), "--rebuild", "--no-progress"]) == 2
    assert "no write permission" in capsys.readouterr().err
    monkeypatch.undo()

    def disk_full(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("clip4vla.files.save_checkpoint", disk_full)
    assert main(["index", str(indexed), "--model", str(micro_export), "--rebuild", "--no-progress"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert index_file.read_bytes() == before
    assert main(["query", "a dog", "--dir", str(indexed), "--top-k", "1"]) == 0  # still usable


def test_empty_or_missing_folder_and_missing_index(micro_export, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["index", str(tmp_path / "empty"), "--model", str(micro_export)]) == 2
    assert "no video or audio files" in capsys.readouterr().err
    assert main(["index", str(tmp_path / "nowhere"), "--model", str(micro_export)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["query", "a dog", "--dir", str(tmp_path / "empty")]) == 2
    assert "no index at" in capsys.readouterr().err


def test_script_and_console_entry_point_are_the_same_program():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "search.py"), "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "clip4vla-search index" in out and "{index,query,serve}" in out
    console = shutil.which("clip4vla-search")
    if console is not None:  # installed by `pip install -e .`
        assert subprocess.run([console, "query", "--help"], capture_output=True, text=True, check=True).stdout.count("--modality")
    setup = (REPO / "setup.py").read_text()
    assert '"clip4vla-search = clip4vla.search:main"' in setup


@pytest.mark.parametrize("text", ["", "   ", "\x01\x02", "\t\x00\u200b"])
def test_an_empty_query_is_refused(indexed, text, capsys):
    assert main(["query", text, "--dir", str(indexed)]) == 2
    assert "is empty (nothing but spaces or control characters): give words to search for" in capsys.readouterr().err
    with pytest.raises(SearchError, match="is empty"):
        search_mod.search(load_index(indexed / DEFAULT_NAME), None, text)


@pytest.mark.parametrize("args, message", [
    (["index", "DIR", "--model", "M", "--audio-type", "2"], "expected vb, nb, auto or a number in [0, 1], got '2'"),
    (["index", "DIR", "--model", "M", "--audio-type", "nan"], "expected vb, nb, auto or a number in [0, 1], got 'nan'"),
    (["query", "a dog", "--top-k", "0"], "expected a whole number >= 1, got 0"),
    (["query", "a dog", "--top-k", "-3"], "expected a whole number >= 1, got -3"),
])
def test_bad_flag_values_are_argument_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_help_describes_every_flag_with_its_default():
    assert_help_is_complete(search_mod.build_parser())


def test_a_file_name_that_is_not_utf8_is_indexed_or_listed_never_fatal(folder, micro_export, tmp_path, capsys):
    d = tmp_path / "videos"
    d.mkdir()
    shutil.copy(folder / "short.mp4", d / "short.mp4")
    odd = copy_with_undecodable_name(folder / "silent.mp4", d)
    odd_sound = copy_with_undecodable_name(folder / "rain.wav", d, b"r\xe4in")
    assert main(["index", str(d), "--model", str(micro_export), "--no-progress"]) == 0
    printed = capsys.readouterr().out  # printable: the odd bytes are shown escaped
    index = load_index(d / DEFAULT_NAME)
    assert "short.mp4" in index["paths"]
    for path, shown in ((odd, "caf\\xe9.mp4"), (odd_sound, "r\\xe4in.wav")):
        if path.name in index["skipped"]:
            assert f"unreadable: {shown}: " in printed and "not valid UTF-8" in index["skipped"][path.name]["reason"]
        else:
            assert path.name in index["paths"]
    assert main(["query", "a red circle", "--dir", str(d)]) == 0
    assert "short.mp4" in capsys.readouterr().out
    assert main(["index", str(d), "--model", str(micro_export), "--no-progress"]) == 0  # a rerun: nothing new
    assert "0 embedded, 3 unchanged" in capsys.readouterr().out
