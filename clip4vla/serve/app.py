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
- ``GET /api/files?offset=O&k=N``: the indexed files, newest first (the first screen's "browse").
- ``POST /api/sound`` (multipart field ``file``, form fields ``modality``, ``k``): rank by an
  uploaded sound's audio embedding; at most ``MAX_UPLOAD_BYTES`` (413 beyond).
- ``GET /media/<id>``: the indexed file number ``id`` (HTTP Range requests answered with 206, so
  the player can seek); ``GET /thumb/<id>/<window>[?show=sound]``: its poster, or its spectrogram.

Files are only ever looked up by their number in the index (``Library.file``): no route takes a
path, so ``../``, absolute paths and encoded variants have nothing to address and get 404.

Every request must name the server by a host name it was started for (``AllowedHosts``), so a page
on another site that resolves its own name to this machine (DNS rebinding) gets a 403, not the
folder. ``http_server`` is werkzeug's threaded server with the answers it gives on its own (a
request line over 64 KB, a malformed request) in JSON too, and a request body left unread (a
refused upload) drained only while it keeps coming.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import mimetypes
import os
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, jsonify, request, send_file, send_from_directory
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler

from clip4vla.data.records import AUDIO_EXTENSIONS
from clip4vla.embed import printable_path
from clip4vla.media_errors import MediaError
from clip4vla.search import SearchError
from clip4vla.serve.library import MAX_K, Library, Unavailable

__all__ = ["AllowedHosts", "MAX_FORM_PARTS", "MAX_UPLOAD_BYTES", "create_app", "http_server", "listen", "serve"]

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a sound query is a few seconds; 20 MB is minutes of wav
MAX_FORM_PARTS = 100  # a sound query sends three (file, modality, k)
DRAIN_SECONDS = 1.0  # after the answer, an unread request body is read on only while it keeps coming
STATIC = Path(__file__).with_name("static")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def _host_name(host: str) -> str | None:
    """The name in a ``Host`` header, lower case and without its port ("[::1]:8765" -> "::1");
    ``None`` for what is not a host (a bare IPv6 address, two ports, an empty name)."""
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        has_port, port = bool(rest), rest[1:]
    else:
        name, colon, port = host.partition(":")
        has_port = bool(colon)
    if has_port and not (port.isascii() and port.isdigit()):
        return None
    return name.lower() or None


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AllowedHosts:
    """The host names a request may address the server by (its ``Host`` header, port aside).

    A browser sends the name it resolved: a page on attacker.example that re-resolves that name to
    127.0.0.1 (DNS rebinding) reaches the server as "attacker.example" and is refused. An address
    literal cannot be re-resolved, so a server bound to every interface answers any address."""

    names: frozenset[str]
    any_address: bool = False  # bound to 0.0.0.0 or ::

    @classmethod
    def for_bind(cls, host: str, extra: Iterable[str] = ()) -> AllowedHosts:
        """The loopback names for a loopback bind, the bound name itself otherwise, and ``extra``
        (``--allow-host``)."""
        host = host.strip("[]").lower()
        names = {host, *(name.strip("[]").lower() for name in extra)}
        wildcard = host in ("", "0.0.0.0", "::")
        if wildcard or _is_loopback(host):
            names.update(LOOPBACK_NAMES)
        return cls(frozenset(names - {"", "0.0.0.0", "::"}), any_address=wildcard)

    def allows(self, host: str) -> bool:
        name = _host_name(host)
        return name is not None and (name in self.names or (self.any_address and _is_address(name)))

    def describe(self) -> str:
        shown = sorted(f"[{n}]" if ":" in n else n for n in self.names)
        return ", ".join(shown) + (" or any address of this machine" if self.any_address else "")


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


class _AsciiInt(IntegerConverter):
    """werkzeug's ``int`` with ASCII digits only: its ``\\d+`` also takes "０" (a full-width 0) as 0."""

    regex = r"[0-9]+"


def _too_large() -> str:
    """What a 413 means: werkzeug raises it for a body over ``MAX_CONTENT_LENGTH`` and for a form
    of more than ``MAX_FORM_PARTS`` fields (in-memory fields may be as large as the body)."""
    length = request.content_length
    if length is not None and length <= MAX_UPLOAD_BYTES:
        return (f"too many form fields: more than {MAX_FORM_PARTS} (a sound query sends three: the file, "
                "modality and k)")
    too_big = f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MB: use a shorter sound"
    return too_big if length is not None else f"{too_big} (or the form has more than {MAX_FORM_PARTS} fields)"


def create_app(library: Library, hosts: AllowedHosts | None = None) -> Flask:
    """The Flask application serving ``library`` (routes: module docstring) to requests addressed
    to ``hosts`` (default: the loopback names)."""
    hosts = hosts or AllowedHosts.for_bind("127.0.0.1")
    app = Flask(__name__, static_folder=None)  # our own static route, added after the next line
    app.url_map.merge_slashes = False  # "//etc/passwd" is a 404, not a redirect to a tidier path
    app.url_map.converters["int"] = _AsciiInt
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES  # werkzeug stops reading past it: 413
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_UPLOAD_BYTES  # so a 413 within the size is always MAX_FORM_PARTS
    app.config["MAX_FORM_PARTS"] = MAX_FORM_PARTS
    app.json.sort_keys = False  # rows keep query --json's key order

    @app.before_request
    def check_host() -> tuple[Response, int] | None:
        host = request.headers.get("Host", request.host)  # the header as sent (request.host drops a ":80")
        if hosts.allows(host):
            return None
        return _error(f"this server answers to {hosts.describe()}, not to {host[:100]!r} (a page of another "
                      "site can reach a local server through its own name). To allow that name, start the server "
                      "with --allow-host NAME", 403)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> tuple[Response, int]:
        if err.code == 413:
            return _error(_too_large(), 413)
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
        name = printable_path(Path(upload.filename).name)[:200]  # what messages call it
        suffix = Path(upload.filename).suffix.lower()
        suffix = suffix if suffix.isascii() and suffix[1:].isalnum() and len(suffix) <= 6 else ".bin"
        with tempfile.TemporaryDirectory(prefix="clip4vla-sound-query-") as tmp:
            path = Path(tmp) / f"query{suffix}"  # our own name: the upload's name never touches the disk
            upload.save(path)
            rows, notes = library.search_sound(path, request.form.get("modality", "a"), _int_arg("k", 10, low=1),
                                               name=name)
        return jsonify({"results": rows, "notes": notes})

    @app.get("/media/<int:file_id>")
    def media(file_id: int) -> Any:
        try:
            path, rel = library.file(file_id)
        except KeyError:
            return _error("not found", 404)
        st = path.stat()  # our own ETag: werkzeug's hashes the name, which fails for names that are not UTF-8
        response = send_file(path, mimetype=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                             conditional=True, etag=f"{file_id}-{st.st_size}-{st.st_mtime_ns}",
                             max_age=0, download_name="media")  # conditional: Range requests answered with 206
        # werkzeug's header fails (500) for a name that is not UTF-8 or holds a newline: RFC 6266's
        # filename* carries the name as the page shows it, filename an ASCII stand-in for old clients
        shown = printable_path(Path(rel).name)
        plain = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in shown)
        response.headers["Content-Disposition"] = f"inline; filename=\"{plain}\"; filename*=UTF-8''{quote(shown, safe='')}"
        return response

    @app.get("/api/files")
    def browse() -> Response:
        rows, total, notes = library.browse(_int_arg("offset", 0), _int_arg("k", 24, low=1))
        return jsonify({"results": rows, "total": total, "notes": notes})

    @app.get("/thumb/<int:file_id>/<int:window>")
    def thumbnail(file_id: int, window: int) -> Any:
        show = request.args.get("show", "picture")
        if show not in ("picture", "sound"):
            raise SearchError(f"show must be picture or sound, got {show[:40]!r}")
        try:
            data = library.thumbnail(file_id, window, sound=show == "sound")
        except KeyError:
            return _error("not found", 404)
        except MediaError as err:
            return _error(f"no picture: {err}", 404)
        response = Response(data, mimetype="image/jpeg")
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    return app


class _RequestHandler(WSGIRequestHandler):
    """werkzeug's request handler, whose own answers (given before the app runs) are JSON too."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server answers a request line over 64 KB (414), a header over 64 KB or more than 100
        # headers (431) and a request it cannot parse (400) with an HTML page of its own
        if code == 414:
            text = "the request line is longer than 64 KB (a query is cut to 1000 characters anyway)"
        elif code == 431:
            text = "a request header is longer than 64 KB, or there are more than 100 of them"
        else:
            text = f"malformed request: {message or self.responses.get(code, ('',))[0]}"[:300]
        body = json.dumps({"error": text}).encode()
        self.log_error("code %d, message %s", code, message)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)
        self.close_connection = True


class _ThenDrainBriefly:
    """A response body that, once written, gives its connection a ``DRAIN_SECONDS`` timeout.

    After every answer werkzeug reads what is left of the request body, so that the client sees the
    answer (a 413) rather than a reset; it reads until the body stops coming, and a client that
    announced 21 MB, sent 100 KB and waits for the answer would hold the connection for its own
    timeout (30-120 s). With the timeout, the close follows the last byte received within a second."""

    def __init__(self, body: Iterable[bytes], sock: socket.socket) -> None:
        self.body, self.sock = body, sock

    def __iter__(self) -> Iterator[bytes]:
        yield from self.body
        self.sock.settimeout(DRAIN_SECONDS)  # not earlier: a video's reader may pause for longer

    def close(self) -> None:
        if hasattr(self.body, "close"):
            self.body.close()


def _drain_briefly(app: Flask) -> Any:
    def wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = app(environ, start_response)
        sock = environ.get("werkzeug.socket")
        return body if sock is None else _ThenDrainBriefly(body, sock)

    return wsgi


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: any free port), or ``SearchError`` naming the flag to
    change (bound here, not by werkzeug, which prints its own lines and exits 1 for a busy port)."""
    address = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    other_host = "pass another --host (an address of this machine, e.g. 127.0.0.1)"
    try:
        return socket.create_server((address, port), family=socket.AF_INET6 if ":" in address else socket.AF_INET)
    except socket.gaierror as err:  # its errno is a resolver code: os.strerror(-2) is "Unknown error -2"
        raise SearchError(f"cannot listen on {host}:{port} (the host name cannot be resolved: {err.strerror}); "
                          f"{other_host}") from err
    except (OSError, OverflowError) as err:
        code = getattr(err, "errno", None)
        reason = os.strerror(code) if code else err
        fix = other_host if code in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) else "pass another --port (0: any free one)"
        raise SearchError(f"cannot listen on {host}:{port} ({reason}); {fix}") from err


def http_server(app: Flask, sock: socket.socket) -> BaseWSGIServer:
    """werkzeug's threaded server for ``app`` on the bound ``sock`` (which it takes over), with
    ``_RequestHandler``'s JSON errors and a request body left unread drained only while it comes."""
    from werkzeug.serving import make_server

    host, port = sock.getsockname()[:2]
    try:
        return make_server(host, port, _drain_briefly(app), threaded=True, request_handler=_RequestHandler,
                           fd=sock.fileno())
    finally:
        sock.close()  # the server works on its own duplicate


def serve(folder: Path, index_path: Path, model_path: Path | None, host: str = "127.0.0.1", port: int = 8765,
          allow_hosts: Iterable[str] = ()) -> int:
    """Run the page until Ctrl-C; prints where. ``SearchError`` when the address cannot be used.
    Requests are answered when addressed to ``host`` (the loopback names, for a loopback address)
    or to a name in ``allow_hosts`` (``AllowedHosts``)."""
    if not folder.is_dir():
        raise SearchError(f"{folder}: not a folder")
    library = Library(folder, index_path, model_path)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request (a page is 20 thumbnails)
    sock = listen(host, port)
    port = sock.getsockname()[1]  # the one chosen, for --port 0
    hosts = AllowedHosts.for_bind(host, allow_hosts)
    server = http_server(create_app(library, hosts), sock)
    bare = host.strip("[]")
    shown = f"[{bare}]" if ":" in bare else bare
    if not _is_loopback(bare):
        print(f"warning: listening on {host}: anyone who can reach this machine on the network can search and play "
              f"every indexed file in {folder}. It answers to {hosts.describe()}; "
              "--allow-host NAME adds a name", file=sys.stderr)
    if library.index is None:
        print(f"warning: no usable index yet ({library.problem}); the page says so. {library.remedy()}",
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
    return 0
