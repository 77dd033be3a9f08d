"""``clip4vla-search serve``: a local web page over a search index (Flask; WSGI).

Routes (every answer of ``/api/...`` is JSON; an error is ``{"error": "..."}`` with its HTTP status,
never a traceback page):

- ``GET /``: the page (``static/index.html`` + ``app.js`` + ``style.css``, shipped in the package:
  no CDN, no build step, works offline).
- ``GET /api/status``: index size, model, build time, unreadable files, files changed since
  indexing, or why there is no usable index and the command that makes one.
- ``GET /api/search?q=TEXT&modality=v|a|av&k=N``: ``{"results": rows, "notes": [...]}``; ``rows`` are
  exactly what ``clip4vla-search query --json`` prints.
- ``GET /api/similar?id=FILE&window=W&modality=...&k=N``: "more like this" by that window's own
  embeddings.
- ``POST /api/sound`` (multipart field ``file``, form fields ``modality``, ``k``): rank by an
  uploaded sound's audio embedding; at most ``MAX_UPLOAD_BYTES`` (413 beyond).
- ``GET /media/<id>``: the indexed file number ``id`` (HTTP Range requests answered with 206, so
  the player can seek); ``GET /thumb/<id>/<window>``: its poster or spectrogram.

Files are only ever looked up by their number in the index (``Library.file``): no route takes a
path, so ``../``, absolute paths and encoded variants have nothing to address and get 404.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request, send_file, send_from_directory
from werkzeug.exceptions import HTTPException

from clip4vla.data.records import AUDIO_EXTENSIONS
from clip4vla.media_errors import MediaError
from clip4vla.search import SearchError
from clip4vla.serve.library import MAX_K, Library, Unavailable

__all__ = ["MAX_UPLOAD_BYTES", "create_app", "serve"]

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a sound query is a few seconds; 20 MB is minutes of wav
STATIC = Path(__file__).with_name("static")


def _error(message: str, status: int) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def _int_arg(name: str, default: int | None = None, low: int = 0) -> int:
    text = request.values.get(name)
    if text is None or text == "":
        if default is None:
            raise SearchError(f"{name} is missing")
        return default
    try:
        value = int(text)
    except ValueError:
        raise SearchError(f"{name} must be a whole number, got {text[:40]!r}") from None
    if value < low:
        raise SearchError(f"{name} must be >= {low}, got {value}")
    return value


def create_app(library: Library) -> Flask:
    """The Flask application serving ``library`` (routes: module docstring)."""
    app = Flask(__name__, static_folder=None)  # our own static route, added after the next line
    app.url_map.merge_slashes = False  # "//etc/passwd" is a 404, not a redirect to a tidier path
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES  # werkzeug stops reading past it: 413
    app.json.sort_keys = False  # rows keep query --json's key order

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> tuple[Response, int]:
        if err.code == 413:
            return _error(f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MB: use a shorter sound", 413)
        return _error(err.description if err.code != 404 else "not found", err.code or 500)

    @app.errorhandler(SearchError)
    def bad_request(err: SearchError) -> tuple[Response, int]:
        return _error(str(err), 400)

    @app.errorhandler(Unavailable)
    def unavailable(err: Unavailable) -> tuple[Response, int]:
        return _error(str(err), 503)

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> tuple[Response, int]:  # logged here, never shown as a traceback page
        log.exception("request failed: %s", request.path)
        return _error(f"internal error ({type(err).__name__}); the server log has the details", 500)

    @app.get("/")
    def page() -> Response:
        return send_from_directory(STATIC, "index.html")

    @app.get("/static/<path:name>")
    def static_file(name: str) -> Response:
        return send_from_directory(STATIC, name)  # safe_join: a name that leaves the folder is a 404

    @app.get("/api/status")
    def status() -> Response:
        return jsonify({**library.status(), "max_k": MAX_K, "max_upload_mb": MAX_UPLOAD_BYTES // 2**20,
                        "audio_extensions": list(AUDIO_EXTENSIONS)})  # the page plays these in <audio>

    @app.get("/api/search")
    def search_text() -> Response:
        rows, notes = library.search_text(request.args.get("q", ""), request.args.get("modality", "av"),
                                          _int_arg("k", 10, low=1))
        return jsonify({"results": rows, "notes": notes})

    @app.get("/api/similar")
    def search_similar() -> Response:
        rows, notes = library.search_similar(_int_arg("id"), _int_arg("window", 0), request.args.get("modality", "av"),
                                             _int_arg("k", 10, low=1))
        return jsonify({"results": rows, "notes": notes})

    @app.post("/api/sound")
    def search_sound() -> Any:
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            return _error("no sound file in the request (multipart field 'file')", 400)
        suffix = Path(upload.filename).suffix.lower()
        suffix = suffix if suffix.isascii() and suffix[1:].isalnum() and len(suffix) <= 6 else ".bin"
        with tempfile.TemporaryDirectory(prefix="clip4vla-sound-query-") as tmp:
            path = Path(tmp) / f"query{suffix}"  # our own name: the upload's name never touches the disk
            upload.save(path)
            rows, notes = library.search_sound(path, request.form.get("modality", "a"), _int_arg("k", 10, low=1))
        return jsonify({"results": rows, "notes": notes})

    @app.get("/media/<int:file_id>")
    def media(file_id: int) -> Any:
        try:
            path, _ = library.file(file_id)
        except KeyError:
            return _error("not found", 404)
        st = path.stat()  # our own ETag: werkzeug's hashes the name, which fails for names that are not UTF-8
        return send_file(path, conditional=True, etag=f"{file_id}-{st.st_size}-{st.st_mtime_ns}",
                         max_age=0)  # conditional: Range requests answered with 206

    @app.get("/thumb/<int:file_id>/<int:window>")
    def thumbnail(file_id: int, window: int) -> Any:
        try:
            data = library.thumbnail(file_id, window)
        except KeyError:
            return _error("not found", 404)
        except MediaError as err:
            return _error(f"no picture: {err}", 404)
        response = Response(data, mimetype="image/jpeg")
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(folder: Path, index_path: Path, model_path: Path | None, host: str = "127.0.0.1", port: int = 8765) -> int:
    """Run the page until Ctrl-C; prints where. ``SearchError`` when the address cannot be used."""
    from werkzeug.serving import make_server

    if not folder.is_dir():
        raise SearchError(f"{folder}: not a folder")
    library = Library(folder, index_path, model_path)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request (a page is 20 thumbnails)
    try:  # bound here, not by werkzeug, which prints its own lines and exits 1 for a busy port
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except (OSError, OverflowError) as err:
        reason = os.strerror(err.errno) if getattr(err, "errno", None) else err
        raise SearchError(f"cannot listen on {host}:{port} ({reason}); "
                          "pass another --port (0: any free one)") from err
    port = sock.getsockname()[1]  # the one chosen, for --port 0
    server = make_server(host, port, create_app(library), threaded=True, fd=sock.fileno())
    shown = f"[{host}]" if ":" in host else host
    if not _is_loopback(host):
        print(f"warning: listening on {host}: anyone who can reach this machine on the network can search and play "
              f"every indexed file in {folder}", file=sys.stderr)
    if library.index is None:
        print(f"warning: no usable index yet ({library.problem}); the page says so. Run: {library.index_command()}",
              file=sys.stderr)
        what = "no index yet"
    else:
        what = f"{len(library.index['paths'])} files indexed with {library.index['model']['path']}"
    print(f"serving {folder} ({what})", flush=True)
    print(f"open http://{shown}:{port}/ in a browser (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sock.close()
    return 0
