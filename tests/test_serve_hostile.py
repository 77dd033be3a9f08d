"""``clip4vla-search serve`` against hostile input, over a real socket where the HTTP server itself
is what is tested: a foreign ``Host`` header (DNS rebinding) is refused; odd file names play; a
refused upload names the user's file, never the server's temporary one, and its connection is
closed at once; a too-long request line is JSON like every other error; only files that resolve
inside the folder are indexed; an address that cannot be bound names the flag to change.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flask")

from clip4vla.search import DEFAULT_NAME, load_index, main, staleness
from clip4vla.serve.app import AllowedHosts, create_app, http_server, listen
from clip4vla.serve.library import Library
from audio_media import write_sound
from media_factory import write_video
from script_checks import copy_with_undecodable_name

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("elsewhere")
    return write_video(d / "private.mp4", seconds=1.0, fps=10)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, micro_export, outside) -> Path:
    """A video, a sound, a name that is not UTF-8, a name with a newline, a symlink out of the
    folder and one to a file inside it, indexed through the command line."""
    d = tmp_path_factory.mktemp("hostile") / "videos"
    d.mkdir()
    write_video(d / "clip.mp4", seconds=2.0, fps=10)
    t = np.arange(2 * 16000) / 16000
    write_sound(d / "tone.wav", (0.2 * np.sin(2 * np.pi * 400 * t)).astype(np.float32))
    copy_with_undecodable_name(d / "clip.mp4", d)  # caf\xe9.mp4
    shutil.copy(d / "clip.mp4", d / "two\nlines.mp4")
    (d / "out.mp4").symlink_to(outside)
    (d / "again.mp4").symlink_to(d / "clip.mp4")
    assert main(["index", str(d), "--model", str(micro_export), "--no-progress"]) == 0
    return d


@pytest.fixture(scope="module")
def library(folder) -> Library:
    return Library(folder, folder / DEFAULT_NAME)


@pytest.fixture(scope="module")
def client(library):
    return create_app(library).test_client()


@pytest.fixture(scope="module")
def live(library):
    """The app behind the server ``serve`` runs, on a free 127.0.0.1 port, in a thread."""
    server = http_server(create_app(library), listen("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.port
    server.shutdown()
    server.server_close()


def raw_exchange(port: int, head: bytes, body: bytes = b"", wait: float = 20.0) -> tuple[bytes, float]:
    """Send ``head`` and ``body`` on a fresh connection, then read until the server closes it;
    returns what came back and how many seconds after the last byte sent the close came."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        conn.sendall(head + body)
        sent = time.monotonic()
        data = b""
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except (socket.timeout, ConnectionResetError):
            return data, float("inf") if not data else time.monotonic() - sent
        return data, time.monotonic() - sent


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


# ---------------------------------------------------------------- Host header (DNS rebinding)

@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8765", "127.0.0.1.attacker.example",
                                  "localhost.attacker.example:8765", "localhost.", "10.0.0.7", "[::2]:8765",
                                  "127.0.0.1:80:80", "::1"])
def test_a_foreign_host_name_is_refused_on_every_route(client, library, host):
    for url in ("/api/status", "/", "/static/app.js", "/media/0", "/thumb/0/0", "/api/search?q=a+dog"):
        got = client.get(url, headers={"Host": host})
        assert got.status_code == 403 and got.is_json, (host, url, got.status_code)
        error = got.get_json()["error"]
        assert "--allow-host" in error and str(library.folder) not in error
    assert client.post("/api/sound", headers={"Host": host}).status_code == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8765", "localhost", "LocalHost:8765", "[::1]", "[::1]:8765"])
def test_loopback_names_are_answered_with_or_without_the_port(client, host):
    assert client.get("/api/status", headers={"Host": host}).status_code == 200


def test_other_binds_answer_their_own_address_and_allowed_names(library):
    def status(hosts: AllowedHosts, host: str) -> int:
        return create_app(library, hosts).test_client().get("/api/status", headers={"Host": host}).status_code

    lan = AllowedHosts.for_bind("192.168.1.7", ["Box.lan"])
    assert [status(lan, h) for h in ("192.168.1.7:8765", "box.lan", "BOX.LAN:8765", "localhost", "attacker.example")] == [
        200, 200, 200, 403, 403]
    every = AllowedHosts.for_bind("0.0.0.0")  # any address literal: an address cannot be rebound elsewhere
    assert [status(every, h) for h in ("10.1.2.3:8765", "[fe80::1]:8765", "localhost", "attacker.example")] == [
        200, 200, 200, 403]
    assert [status(AllowedHosts.for_bind("::1"), h) for h in ("[::1]:1", "localhost", "attacker.example")] == [200, 200, 403]


def test_serve_allows_the_names_given_with_allow_host(folder, monkeypatch, capsys):
    apps = []

    class FakeServer:
        server_port = 8765

        def serve_forever(self):
            pass

        def server_close(self):
            pass

    def fake_http_server(app, sock):
        apps.append(app)
        sock.close()
        return FakeServer()

    monkeypatch.setattr("clip4vla.serve.app.http_server", fake_http_server)
    assert main(["serve", "--dir", str(folder), "--port", "0", "--allow-host", "media.lan", "--allow-host", "[::1]"]) == 0
    client = apps[0].test_client()
    assert client.get("/api/status", headers={"Host": "media.lan:8765"}).status_code == 200
    assert client.get("/api/status", headers={"Host": "other.lan"}).status_code == 403
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["serve", "--allow-host", "http://media.lan/"])
    assert "--allow-host: expected a host name or address" in capsys.readouterr().err


def test_the_real_server_refuses_a_foreign_host(live):
    data, _ = raw_exchange(live, b"GET /api/status HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n")
    code, headers, body = split_response(data)
    assert code == 403 and headers["content-type"] == "application/json" and "attacker.example" in json.loads(body)["error"]


# ---------------------------------------------------------------- odd file names play

def test_names_that_are_not_utf8_or_hold_a_newline_play(client, library, folder):
    data = (folder / "clip.mp4").read_bytes()
    odd = os.fsdecode(b"caf\xe9.mp4")
    for name in (odd, "two\nlines.mp4"):
        got = client.get(f"/media/{library.index['paths'].index(name)}")
        assert got.status_code == 200 and got.data == data and got.mimetype == "video/mp4", name
        disposition = got.headers["Content-Disposition"]
        assert disposition.isascii() and "\n" not in disposition and disposition.startswith("inline; filename=")
        part = client.get(f"/media/{library.index['paths'].index(name)}", headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.data == data[:100]
    got = client.get(f"/media/{library.index['paths'].index(odd)}")
    assert "filename*=UTF-8''caf%5Cxe9.mp4" in got.headers["Content-Disposition"]  # as the page shows it


# ---------------------------------------------------------------- uploads

def wav_bytes(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((3000 * np.sin(np.arange(int(seconds * 16000)) / 5)).astype("<i2").tobytes())
    return out.getvalue()


def refused_uploads(tmp: Path) -> dict[str, bytes]:
    """Eight ways a sound query can be unusable, by the name the user's file had."""
    silent = write_video(tmp / "silent.mp4", seconds=1.0, audio=False).read_bytes()
    return {"noise.wav": os.urandom(4096), "empty.wav": b"", "notes.mp3": b"hello world\n" * 10,
            "picture.ogg": b"\x89PNG\r\n\x1a\n" + os.urandom(200), "cut.wav": wav_bytes(1.0)[:30],
            "silent film.mp4": silent, "header only.wav": wav_bytes(0.0), "no extension": os.urandom(3000)}


def test_a_refused_upload_names_the_users_file_not_the_servers(client, tmp_path):
    for name, data in refused_uploads(tmp_path).items():
        got = client.post("/api/sound", data={"file": (io.BytesIO(data), name), "modality": "a"})
        assert got.status_code == 400, (name, got.get_json())
        error = got.get_json()["error"]
        assert name in error and tempfile.gettempdir() not in error and "query" not in error, error
        assert "[Errno" not in error, error  # the decoder's message in words, not its error number


def test_an_oversize_upload_is_answered_and_closed_at_once(live):
    body = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"long.wav\"\r\n\r\n" + b"\0" * 100_000
    head = (b"POST /api/sound HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (21 * 2**20))  # announced, then only 100 KB sent
    data, closed_after = raw_exchange(live, head, body)
    code, headers, payload = split_response(data)
    assert code == 413 and "larger than 20 MB" in json.loads(payload)["error"]
    assert closed_after < 5.0  # werkzeug alone waits for the 21 MB that never come (30-120 s)


def test_a_form_with_too_many_fields_is_told_so(client):
    fields = {f"f{i}": "x" for i in range(3000)}  # ~40 KB: far below the size limit
    got = client.post("/api/sound", data={**fields, "file": (io.BytesIO(wav_bytes(1.0)), "a.wav")})
    assert got.status_code == 413
    error = got.get_json()["error"]
    assert "too many form fields" in error and "20 MB" not in error


# ---------------------------------------------------------------- what the HTTP server says itself

def test_a_request_line_over_64_kb_gets_json(live):
    data, _ = raw_exchange(live, b"GET /api/search?q=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    code, headers, body = split_response(data)
    assert code == 414 and headers["content-type"] == "application/json"
    assert "longer than 64 KB" in json.loads(body)["error"]
    data, _ = raw_exchange(live, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n")
    code, headers, body = split_response(data)
    assert code == 431 and headers["content-type"] == "application/json" and json.loads(body)["error"]


# ---------------------------------------------------------------- what is indexed is what is served

def test_only_files_inside_the_folder_are_indexed_and_all_of_them_are_served(folder, library, client):
    index = load_index(folder / DEFAULT_NAME)
    assert "out.mp4" not in index["paths"] and "out.mp4" not in index["skipped"]
    assert "again.mp4" in index["paths"]  # a symlink to a file inside the folder is that file
    for i in range(len(index["paths"])):
        assert client.get(f"/media/{i}", headers={"Range": "bytes=0-0"}).status_code == 206
    assert staleness(index, folder) == {"changed": [], "deleted": [], "new": []}  # the link is not "new" either


# ---------------------------------------------------------------- start-up errors

def test_an_address_that_cannot_be_used_names_the_host_flag(folder, monkeypatch, capsys):
    def unresolvable(address, family):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")  # what 256.1.1.1 gets, without DNS

    with monkeypatch.context() as patch:
        patch.setattr("clip4vla.serve.app.socket.create_server", unresolvable)
        assert main(["serve", "--dir", str(folder), "--host", "256.1.1.1"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: cannot listen on 256.1.1.1:8765 (the host name cannot be resolved: Name or service not known); "
                   "pass another --host (an address of this machine, e.g. 127.0.0.1)\n")
    assert main(["serve", "--dir", str(folder), "--host", "192.0.2.1"]) == 2  # TEST-NET: no interface has it
    err = capsys.readouterr().err
    assert "cannot listen on 192.0.2.1:8765" in err and "pass another --host" in err and "--port" not in err


def test_python_m_is_the_same_program_with_the_same_clean_errors(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    commands = [[sys.executable, "-m", "clip4vla.search"]]  # scripts/search.py: test_serve_api, a page served
    if shutil.which("clip4vla-search"):
        commands.append([shutil.which("clip4vla-search")])
    for command in commands:
        got = subprocess.run(command + ["serve", "--dir", str(tmp_path / "nowhere")], capture_output=True, text=True,
                             env=env, timeout=120)
        assert (got.returncode, got.stderr) == (2, f"error: {tmp_path / 'nowhere'}: not a folder\n"), command
