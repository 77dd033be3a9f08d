"""``clip4vla-search serve``: the page's JSON API through Flask's test client over a tiny index.

The rows are the CLI's rows; files are reachable only by their number in the index (every
traversal attempt is a 404); uploads and requests are bounded; a missing or stale index is
reported with the command to run and is never rewritten.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flask")

import clip4vla
from clip4vla.search import DEFAULT_NAME, load_index, main
from clip4vla.serve.app import MAX_UPLOAD_BYTES, create_app
from clip4vla.serve.library import MAX_K, Library
from clip4vla.serve.thumbnails import thumbnail_folder
from audio_media import write_sound
from media_factory import frame_index, write_garbage, write_video
from script_checks import copy_with_undecodable_name

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A video outside the served folder, that a symlink inside it points to."""
    d = tmp_path_factory.mktemp("elsewhere")
    return write_video(d / "private.mp4", seconds=2.0, fps=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory, micro_export, outside) -> Path:
    """A folder with a long video (4 windows), a short one, a silent one, a sound file, a broken
    file and a symlink out of the folder (not indexed), indexed through the command line."""
    d = tmp_path_factory.mktemp("served") / "videos"
    d.mkdir()
    write_video(d / "long.mp4", seconds=14.0, fps=5)
    write_video(d / "short.mp4", seconds=3.0, fps=10)
    write_video(d / "silent.mp4", seconds=2.0, fps=10, audio=False)
    t = np.arange(3 * 16000) / 16000
    write_sound(d / "rain.wav", (0.2 * np.sin(2 * np.pi * 300 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32))
    write_garbage(d / "broken.mp4")
    (d / "link.mp4").symlink_to(outside)
    assert main(["index", str(d), "--model", str(micro_export), "--no-progress"]) == 0
    return d


@pytest.fixture(scope="module")
def library(served) -> Library:
    return Library(served, served / DEFAULT_NAME)


@pytest.fixture(scope="module")
def client(library):
    return create_app(library).test_client()


def file_id(library: Library, name: str) -> int:
    return library.index["paths"].index(name)


def test_search_rows_are_the_query_commands_json_rows(served, client, capsys):
    for modality in ("av", "v", "a"):
        got = client.get("/api/search", query_string={"q": "a siren wails", "modality": modality, "k": 3})
        assert got.status_code == 200 and got.is_json
        body = got.get_json()
        assert main(["query", "a siren wails", "--dir", str(served), "--json", "--modality", modality, "--top-k", "3"]) == 0
        assert body["results"] == json.loads(capsys.readouterr().out) and body["notes"] == []
        assert len(body["results"]) == 3
    row = body["results"][0]
    assert list(row) == ["path", "score", "start", "end", "windows", "id", "window", "vision", "sound", "per_window"]
    index = load_index(served / DEFAULT_NAME)
    assert Path(row["path"]).name == index["paths"][row["id"]]
    assert row["start"] == round(float(index["spans"][int(index["first"][row["id"]]) + row["window"]][0]), 2)


def test_status_line_reports_size_model_time_and_unreadable_files(client, served, micro_export):
    status = client.get("/api/status").get_json()
    assert status["ok"] and status["files"] == 4 and status["windows"] == 7  # long.mp4 is 4 windows
    assert status["model"] == str(Path(micro_export).resolve())
    assert status["built"][:4].isdigit()
    assert [u["path"] for u in status["unreadable"]] == ["broken.mp4"] and status["unreadable_count"] == 1
    reason = status["unreadable"][0]["reason"]  # the decoder's words, not its error number
    assert "[Errno" not in reason and "the decoder says: Invalid data found when processing input" in reason
    assert {k: v["count"] for k, v in status["stale"].items()} == {"changed": 0, "deleted": 0, "new": 0}
    assert status["command"] is None and status["max_k"] == MAX_K and ".wav" in status["audio_extensions"]


def test_more_like_this_ranks_by_the_windows_own_embeddings(client, library):
    index = library.index
    source = file_id(library, "long.mp4")
    row = int(index["first"][source]) + 2
    for modality, side in (("v", "video"), ("a", "audio")):
        body = client.get("/api/similar", query_string={"id": source, "window": 2, "modality": modality, "k": 10}).get_json()
        has = index["has_video" if side == "video" else "has_audio"]
        expected = {}
        for i, name in enumerate(index["paths"]):
            lo, n = int(index["first"][i]), int(index["count"][i])
            rows = [r for r in range(lo, lo + n) if bool(has[r])]
            if i != source and rows:
                expected[name] = max(float(index[side][r] @ index[side][row]) for r in rows)
        got = {index["paths"][r["id"]]: r["score"] for r in body["results"]}
        assert set(got) == set(expected)  # the file itself is left out; only files with that side
        for name, score in got.items():
            assert score == pytest.approx(expected[name], abs=1e-4)
        assert [r["score"] for r in body["results"]] == sorted(got.values(), reverse=True)
    silent = file_id(library, "silent.mp4")
    bad = client.get("/api/similar", query_string={"id": silent, "window": 0, "modality": "a"})
    assert bad.status_code == 400 and "no sound" in bad.get_json()["error"]
    for query, message in (({"id": 99}, "no file 99"), ({"id": source, "window": 4}, "has 4 windows"),
                           ({"id": "x"}, "must be a whole number"), ({}, "id is missing")):
        bad = client.get("/api/similar", query_string=query)
        assert bad.status_code == 400 and message in bad.get_json()["error"]


def test_a_sound_query_finds_that_sound_first(client, served, micro_export):
    sound = (served / "rain.wav").read_bytes()
    got = client.post("/api/sound", data={"file": (io.BytesIO(sound), "my recording.wav"), "modality": "a", "k": "3"})
    assert got.status_code == 200, got.get_json()
    rows = got.get_json()["results"]
    assert Path(rows[0]["path"]).name == "rain.wav" and rows[0]["score"] == pytest.approx(1.0, abs=1e-3)
    # the same embedding as the library's own, with the model's preprocessing and auto audio type
    model = clip4vla.load_model(micro_export)
    query = clip4vla.embed_audio(model, [served / "rain.wav"], audio_type="auto")[0]
    index = load_index(served / DEFAULT_NAME)
    assert rows == clip4vla.search.rank(index, query, 3, "a")


def test_bad_and_oversize_uploads_get_a_json_message(client):
    big = client.post("/api/sound", data={"file": (io.BytesIO(b"\0" * (MAX_UPLOAD_BYTES + 1024)), "big.wav")})
    assert big.status_code == 413 and "larger than 20 MB" in big.get_json()["error"]
    garbage = client.post("/api/sound", data={"file": (io.BytesIO(os.urandom(4096)), "noise.wav")})
    assert garbage.status_code == 400 and "not a readable sound" in garbage.get_json()["error"]
    missing = client.post("/api/sound", data={})
    assert missing.status_code == 400 and "no sound file" in missing.get_json()["error"]


def test_rows_say_why_a_file_matched_per_side_and_per_window(client, library):
    index = library.index
    long_id = file_id(library, "long.mp4")
    for modality in ("av", "v", "a"):
        rows = client.get("/api/search", query_string={"q": "a red circle", "modality": modality, "k": 10}).get_json()["results"]
        for row in rows:
            first = int(index["first"][row["id"]])
            assert len(row["per_window"]) == row["windows"]
            best = row["per_window"][row["window"]]
            assert (best["start"], best["end"], best["score"]) == (row["start"], row["end"], row["score"])
            assert (best["vision"], best["sound"]) == (row["vision"], row["sound"])
            assert row["score"] == max(w["score"] for w in row["per_window"] if w["score"] is not None)
            for w, has_v, has_a in zip(row["per_window"], index["has_video"][first:], index["has_audio"][first:]):
                assert (w["vision"] is None) == (not bool(has_v)) and (w["sound"] is None) == (not bool(has_a))
                if modality == "v":
                    assert w["score"] == w["vision"]
                elif modality == "a":
                    assert w["score"] == w["sound"]
                elif w["vision"] is not None and w["sound"] is not None:
                    assert w["score"] == pytest.approx((w["vision"] + w["sound"]) / 2, abs=2e-4)
    assert any(r["id"] == long_id for r in rows)
    silent = next(r for r in client.get("/api/search", query_string={"q": "a red circle", "k": 10}).get_json()["results"]
                  if r["path"].endswith("silent.mp4"))
    assert silent["sound"] is None and silent["vision"] is not None  # its sound side took the query's average


def test_browse_lists_the_indexed_files_newest_first(client, library):
    body = client.get("/api/files", query_string={"k": 2}).get_json()
    assert body["total"] == 4 and len(body["results"]) == 2
    by_time = sorted(range(4), key=lambda i: (-int(library.index["mtime_ns"][i]), library.index["paths"][i]))
    assert [r["id"] for r in body["results"]] == by_time[:2]
    rest = client.get("/api/files", query_string={"k": 10, "offset": 2}).get_json()["results"]
    assert [r["id"] for r in rest] == by_time[2:]
    row = body["results"][0]
    assert {"path", "id", "window", "start", "end", "windows", "modified"} <= set(row) and row["window"] == 0
    assert row["modified"][:4].isdigit()
    assert client.get("/api/files", query_string={"offset": -1}).status_code == 400


def test_sound_thumbnails_are_spectrograms_for_videos_too(client, library):
    from PIL import Image

    long_id = file_id(library, "long.mp4")
    picture = client.get(f"/thumb/{long_id}/1")
    sound = client.get(f"/thumb/{long_id}/1", query_string={"show": "sound"})
    assert sound.status_code == 200 and Image.open(io.BytesIO(sound.data)).size == (320, 180)
    assert Image.open(io.BytesIO(picture.data)).size != (320, 180) and sound.data != picture.data
    assert client.get(f"/thumb/{file_id(library, 'silent.mp4')}/0", query_string={"show": "sound"}).status_code == 404
    assert client.get(f"/thumb/{long_id}/1", query_string={"show": "x"}).status_code == 400


def test_a_name_that_is_not_utf8_is_shown_escaped_by_the_page_and_the_command(tmp_path, micro_export, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "clip.mp4", seconds=1.0)
    copy_with_undecodable_name(folder / "clip.mp4", folder)
    assert main(["index", str(folder), "--model", str(micro_export), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["query", "a red circle", "--dir", str(folder), "--json"]) == 0
    printed = capsys.readouterr().out
    assert "caf\\\\xe9.mp4" in printed and "udce9" not in printed  # JSON's escape of the backslash in caf\xe9
    rows = json.loads(printed)
    client = create_app(Library(folder, folder / DEFAULT_NAME)).test_client()
    api = client.get("/api/search", query_string={"q": "a red circle"}).get_json()["results"]
    assert api == rows and {Path(r["path"]).name for r in rows} == {"clip.mp4", "caf\\xe9.mp4"}
    assert client.get(f"/media/{next(r['id'] for r in rows if 'caf' in r['path'])}").status_code == 200


def test_without_an_index_the_page_gets_a_runnable_command(tmp_path, micro_export, monkeypatch):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "a.mp4", seconds=1.0)
    monkeypatch.chdir(tmp_path)
    relative = Path("videos")
    status = create_app(Library(relative, relative / DEFAULT_NAME)).test_client().get("/api/status").get_json()
    assert status["problem"] == f"no index at {relative / DEFAULT_NAME} yet" and "`" not in status["problem"]
    assert status["command"] is None and "--model" in status["hint"]  # no model anywhere: says how to get one
    (tmp_path / "runs" / "pretrain_synthetic").mkdir(parents=True)
    shutil.copytree(micro_export, tmp_path / "runs" / "pretrain_synthetic" / "model")
    status = create_app(Library(relative, relative / DEFAULT_NAME)).test_client().get("/api/status").get_json()
    assert status["command"] == "clip4vla-search index videos --model runs/pretrain_synthetic/model"
    assert main(status["command"].split()[1:] + ["--no-progress"]) == 0  # it runs as shown
    assert create_app(Library(relative, relative / DEFAULT_NAME)).test_client().get("/api/status").get_json()["ok"]


def test_range_requests_get_206_with_the_right_bytes(client, library, served):
    data = (served / "long.mp4").read_bytes()
    url = f"/media/{file_id(library, 'long.mp4')}"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.data == data and whole.headers["Accept-Ranges"] == "bytes"
    assert whole.mimetype == "video/mp4"
    part = client.get(url, headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206 and part.data == data[100:1124]
    assert part.headers["Content-Range"] == f"bytes 100-1123/{len(data)}"
    tail = client.get(url, headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.data == data[-500:]
    beyond = client.get(url, headers={"Range": f"bytes={len(data) + 10}-"})
    assert beyond.status_code == 416


@pytest.mark.parametrize("url", [
    "/media/../../etc/passwd", "/media/..%2F..%2Fetc%2Fpasswd", "/media/%2e%2e/%2e%2e/etc/passwd",
    "/media/%252e%252e%252fetc%252fpasswd", "/media//etc/passwd", "/media/%2Fetc%2Fpasswd", "/media/-1",
    "/media/99", "/media/1.0", "/media/long.mp4", "/media/0x1", "/media/1/../2", "/thumb/../0/0", "/thumb/0/99",
    "/thumb/99/0", "/thumb/0/-1", "/static/../search.py", "/static/..%2f..%2fsearch.py", "/static/%2e%2e/app.py",
    "/static//etc/passwd", "/static/%2Fetc%2Fpasswd", "/etc/passwd", "/..%2f..%2fetc%2fpasswd",
    "/media/０", "/media/٣", "/%2e%2e/clip4vla/search.py",
])
def test_traversal_attempts_are_404(client, url):
    got = client.get(url)
    assert got.status_code == 404, (url, got.status_code)
    assert got.get_json() == {"error": "not found"}
    assert b"root:" not in got.data


def test_a_symlink_out_of_the_folder_is_not_served(client, library, served, outside, tmp_path):
    assert "link.mp4" not in library.index["paths"]  # never indexed: the page lists only what it can play
    assert client.get(f"/media/{file_id(library, 'short.mp4')}").status_code == 200
    folder = tmp_path / "videos"  # an indexed file replaced by a link out of the folder after indexing
    shutil.copytree(served, folder, symlinks=True)
    (folder / "short.mp4").unlink()
    (folder / "short.mp4").symlink_to(outside)
    copy = Library(folder, folder / DEFAULT_NAME)
    other = create_app(copy).test_client()
    assert other.get(f"/media/{file_id(copy, 'short.mp4')}").status_code == 404
    assert other.get(f"/thumb/{file_id(copy, 'short.mp4')}/0").status_code == 404
    assert other.get(f"/media/{file_id(copy, 'silent.mp4')}").status_code == 200


def test_thumbnails_show_the_matched_window_and_are_made_once(client, library, served):
    from PIL import Image

    long_id = file_id(library, "long.mp4")
    got = client.get(f"/thumb/{long_id}/1")
    assert got.status_code == 200 and got.mimetype == "image/jpeg"
    picture = np.asarray(Image.open(io.BytesIO(got.data)).convert("RGB"))
    start, end = library.index["spans"][int(library.index["first"][long_id]) + 1].tolist()
    assert frame_index(picture) == math.ceil((start + end) / 2 * 5)  # first frame at the window's middle, 5 fps
    cached = list(thumbnail_folder(served / DEFAULT_NAME).glob("*.jpg"))
    assert cached and any(p.read_bytes() == got.data for p in cached)
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    assert client.get(f"/thumb/{long_id}/1").data == got.data
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps  # served from the cache, not made again
    sound = client.get(f"/thumb/{file_id(library, 'rain.wav')}/0")
    assert sound.status_code == 200 and sound.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(sound.data)).size == (320, 180)  # a spectrogram (the videos are 64 x 48)


def test_requests_are_bounded(client):
    many = client.get("/api/search", query_string={"q": "a dog", "k": 100000}).get_json()
    assert f"at most {MAX_K} results" in many["notes"][0] and len(many["results"]) == 4
    long = client.get("/api/search", query_string={"q": " ".join(["dog"] * 50)}).get_json()
    assert "longer than the model's context" in long["notes"][0] and long["results"]
    huge = client.get("/api/search", query_string={"q": "dog " * 2000}).get_json()
    assert "cut to its first 1000 characters" in huge["notes"][0]
    for query, message in (({"q": "  "}, "is empty"), ({"q": "a dog", "k": 0}, "k must be >= 1"),
                           ({"q": "a dog", "k": "ten"}, "must be a whole number"),
                           ({"q": "a dog", "modality": "x"}, "modality must be v, a or av")):
        got = client.get("/api/search", query_string=query)
        assert got.status_code == 400 and message in got.get_json()["error"]


def test_an_unexpected_failure_is_a_json_500_not_a_traceback(library, monkeypatch):
    client = create_app(library).test_client()
    monkeypatch.setattr(library, "search_text", lambda *a: 1 / 0)
    got = client.get("/api/search", query_string={"q": "a dog"})
    assert got.status_code == 500 and got.get_json() == {"error": "internal error (ZeroDivisionError); the server log has the details"}


def test_missing_index_is_shown_with_the_command_and_never_written(tmp_path, micro_export):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "a.mp4", seconds=1.0)
    client = create_app(Library(folder, folder / DEFAULT_NAME, micro_export)).test_client()
    status = client.get("/api/status").get_json()
    assert not status["ok"] and "no index at" in status["problem"]
    assert status["command"] == f"clip4vla-search index {folder} --model {micro_export}"
    got = client.get("/api/search", query_string={"q": "a dog"})
    assert got.status_code == 503 and "Run: clip4vla-search index" in got.get_json()["error"]
    assert sorted(p.name for p in folder.iterdir()) == ["a.mp4"]
    # an index built while the server runs is picked up at the next request
    assert main(["index", str(folder), "--model", str(micro_export), "--no-progress"]) == 0
    assert client.get("/api/search", query_string={"q": "a dog"}).status_code == 200


def test_stale_index_is_reported_with_the_command_and_kept(served, micro_export, tmp_path):
    folder = tmp_path / "videos"
    shutil.copytree(served, folder, symlinks=True)
    assert main(["index", str(folder), "--model", str(micro_export), "--no-progress"]) == 0
    index_file = folder / DEFAULT_NAME
    before = index_file.read_bytes()
    write_video(folder / "short.mp4", seconds=4.0, fps=10)  # changed
    write_video(folder / "new.mp4", seconds=1.0)  # new
    (folder / "silent.mp4").unlink()  # deleted
    client = create_app(Library(folder, index_file)).test_client()
    status = client.get("/api/status").get_json()
    assert {k: v["examples"] for k, v in status["stale"].items()} == {
        "changed": ["short.mp4"], "deleted": ["silent.mp4"], "new": ["new.mp4"]}
    assert status["command"] == f"clip4vla-search index {folder} --model {Path(micro_export).resolve()}"
    assert client.get("/api/search", query_string={"q": "a dog"}).status_code == 200
    assert index_file.read_bytes() == before


def test_serve_prints_the_address_and_warns_for_every_interface(served, monkeypatch, capsys):
    started = []

    class FakeSocket:  # nothing is bound: the test only reads what serve prints
        def getsockname(self):
            return ("127.0.0.1", 8765)

        def fileno(self):
            return -1

        def close(self):
            pass

    class FakeServer:
        server_port = 8765

        def serve_forever(self):
            started.append(True)

        def server_close(self):
            pass

    monkeypatch.setattr("clip4vla.serve.app.http_server", lambda app, sock: FakeServer())
    monkeypatch.setattr("clip4vla.serve.app.socket.create_server", lambda address, family: FakeSocket())
    assert main(["serve", "--dir", str(served)]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"serving {served} (4 files indexed with {load_index(served / DEFAULT_NAME)['model']['path']})",
                                    "open http://127.0.0.1:8765/ in a browser (Ctrl-C stops)"]
    assert "warning" not in out.err
    assert main(["serve", "--dir", str(served), "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0: anyone who can reach this machine on the network" in err
    assert "It answers to 127.0.0.1, [::1], localhost or any address of this machine; --allow-host NAME adds a name" in err
    assert started == [True, True]


def test_serve_refuses_a_bad_port_a_busy_port_or_a_missing_folder(served, tmp_path, capsys):
    import socket

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--port", "70000"])
    assert exit_.value.code == 2 and "expected a port number from 0 to 65535" in capsys.readouterr().err
    assert main(["serve", "--dir", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["serve", "--dir", str(served), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port} (Address already in use); pass another --port")
    assert err.count("\n") == 1  # one line, nothing from werkzeug


def test_the_command_serves_the_page_on_a_free_port(served):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "search.py"), "serve", "--dir", str(served), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[0].startswith(f"serving {served} (4 files"), (lines, proc.stderr.read() if proc.poll() else "")
        address = lines[1].split()[1]
        assert address.startswith("http://127.0.0.1:") and not address.endswith(":0/")
        with urllib.request.urlopen(address, timeout=30) as page:
            html = page.read().decode()
        assert '<input id="q"' in html and "/static/app.js" in html
        with urllib.request.urlopen(address + "static/app.js", timeout=30) as script:
            assert b"/api/search" in script.read()
        with urllib.request.urlopen(address + "api/status", timeout=30) as status:
            assert json.load(status)["files"] == 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)
