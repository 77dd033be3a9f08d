"""What the search page serves from: the index, its model, and the folder, read and never written.

One ``Library`` per server. The model is loaded once (and again only when the index on disk was
rebuilt with another one); every query goes through ``clip4vla.search`` (``search`` / ``rank`` /
``similar``), so the page and ``clip4vla-search query --json`` return the same rows. Files are
handed out by their number in the index, and only when the file still resolves inside the folder
(a symlink to elsewhere, or a name that climbs out, is "not found"). A missing, unreadable or
stale index is reported with the command that fixes it; re-indexing is the user's call, because
it can take hours and needs a model the server may not have.
"""

from __future__ import annotations

import datetime
import logging
import shlex
import threading
import time
from pathlib import Path
from typing import Any

import torch

from clip4vla.models.model_folder import CONFIG_NAME, is_model_folder
from clip4vla.embed import printable_path
from clip4vla.search import DEFAULT_NAME, SearchError, _load_query_model, check_query, embed_query, load_index, rank, \
    readable_reason, resolve_inside, similar, staleness

__all__ = ["Library", "MAX_K", "MAX_QUERY_CHARS", "Unavailable"]

log = logging.getLogger(__name__)

MAX_K = 100  # results per request: a page of thumbnails, not a dump of the index
MAX_QUERY_CHARS = 1000  # far beyond any model's context; keeps the tokenizer's work bounded
STALE_CHECK_SECONDS = 30.0  # the folder walk behind the status line is repeated at most this often
NO_MODEL = ("No model was given or found: start the server with --model MODEL (a training run's model folder "
            "or a Hub id; the README's quick start, python scripts/pretrain.py, makes runs/pretrain_synthetic/model)")


class Unavailable(Exception):
    """No usable index (or model): the message says why and which command fixes it."""


class Library:
    """The served folder: index, model, thumbnails, staleness (module docstring)."""

    def __init__(self, folder: Path, index_path: Path, model_path: Path | None = None) -> None:
        from clip4vla.serve.thumbnails import ThumbnailCache, thumbnail_folder

        self.folder = folder
        self.root = folder.resolve()
        self.index_path = index_path
        self.model_path = model_path
        self.thumbnails = ThumbnailCache(thumbnail_folder(index_path))
        self.index: dict[str, Any] | None = None
        self.model: Any = None
        self.problem: str | None = None
        self._stamp: tuple[int, int] | None = None
        self._model_sha: str | None = None
        self._stale: dict[str, list[str]] | None = None
        self._stale_at = 0.0
        self._lock = threading.RLock()  # one model call and one reload at a time: bounded CPU per server
        self.refresh()

    # ------------------------------------------------------------------ index and model

    def index_command(self) -> str | None:
        """The command that builds or updates this index (what the page tells the user to run), with
        the model given to ``serve``, the index's own, or else the newest ``runs/*/model`` folder here
        (where the README's training commands write); ``None`` when there is no model to name."""
        model = self.model_path or (Path(self.index["model"]["path"]) if self.index else None)
        if model is None:
            found = sorted((p for p in Path("runs").glob("*/model") if is_model_folder(p)),
                           key=lambda p: (p / CONFIG_NAME).stat().st_mtime_ns, reverse=True)
            model = found[0] if found else None
        if model is None:
            return None
        parts = ["clip4vla-search", "index", str(self.folder), "--model", shown_path(model)]
        if self.index_path != self.folder / DEFAULT_NAME:
            parts += ["--index", str(self.index_path)]
        return " ".join(shlex.quote(printable_path(p)) for p in parts)

    def remedy(self) -> str:
        """What to do about a missing or stale index, in one sentence."""
        command = self.index_command()
        return f"Run: {command}" if command else NO_MODEL

    def refresh(self) -> None:
        """Load the index (and its model) when the file is new or was rebuilt since the last look."""
        with self._lock:
            try:
                st = self.index_path.stat()
                stamp = (st.st_size, st.st_mtime_ns)
            except OSError:
                stamp = None
            if stamp is not None and stamp == self._stamp:
                return
            self._stamp, self._stale = stamp, None
            if stamp is None:
                self.index, self.problem = None, f"no index at {printable_path(self.index_path)} yet"
                return
            try:
                index = load_index(self.index_path)
                if self.model is None or index["model"]["sha256"] != self._model_sha:
                    self.model = _load_query_model(index, self.model_path)
                    self._model_sha = index["model"]["sha256"]
                self.index, self.problem = index, None
            except SearchError as err:
                self.index, self.problem = None, str(err)
                log.info("%s", err)  # the page (and serve's start-up line) say it with the command to run

    def require(self) -> dict[str, Any]:
        """The loaded index, or ``Unavailable`` saying what to run."""
        self.refresh()
        if self.index is None:
            raise Unavailable(f"{self.problem}. {self.remedy()}")
        return self.index

    # ------------------------------------------------------------------ queries

    def search_text(self, text: str, modality: str, k: int) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows for a text query, and notes on what was cut (length, k)."""
        from clip4vla.models.preprocessing import Preprocessing
        from clip4vla.text import default_tokenizer

        notes = []
        if len(text) > MAX_QUERY_CHARS:
            text = text[:MAX_QUERY_CHARS]
            notes.append(f"the query was cut to its first {MAX_QUERY_CHARS} characters")
        check_query(text)
        _check_modality(modality)
        k = self._cap(k, notes)
        with self._lock:
            index = self.require()
            context = (self.model.preprocessing or Preprocessing()).max_words
            if len(default_tokenizer().encode(text)) > context - 2:
                notes.append(f"the query is longer than the model's context ({context} tokens): only its start was used")
            query = embed_query(self.model, text)  # what `clip4vla-search query` embeds with
            return rank(index, query, k, modality), notes

    def search_similar(self, file_id: int, window: int, modality: str, k: int) -> tuple[list[dict[str, Any]], list[str]]:
        """"More like this" rows for one window of one indexed file."""
        notes: list[str] = []
        k = self._cap(k, notes)
        with self._lock:
            return similar(self.require(), file_id, window, k, modality), notes

    def search_sound(self, path: Path, modality: str, k: int, name: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows for an uploaded sound, by its audio embedding (``clip4vla.search.embed_sound_query``);
        messages call the file ``name`` (the upload's own name)."""
        from clip4vla.search import embed_sound_query

        _check_modality(modality)
        notes: list[str] = []
        k = self._cap(k, notes)
        with self._lock:
            index = self.require()
            query = embed_sound_query(self.model, path, name=name)
            return rank(index, query, k, modality), notes

    @staticmethod
    def _cap(k: int, notes: list[str]) -> int:
        if k > MAX_K:
            notes.append(f"at most {MAX_K} results per query: showing {MAX_K}")
        return min(k, MAX_K)

    # ------------------------------------------------------------------ files

    def file(self, file_id: int) -> tuple[Path, str]:
        """The file with number ``file_id`` in the index and its indexed name, if it is still a file
        inside the folder; ``KeyError`` otherwise (the page says "not found")."""
        index = self.require()
        if not 0 <= file_id < len(index["paths"]):
            raise KeyError(file_id)
        rel = index["paths"][file_id]
        real = resolve_inside(self.folder / rel, self.root)  # what `index` embeds: a link made since is refused
        if real is None:
            raise KeyError(file_id)
        return real, rel

    def thumbnail(self, file_id: int, window: int, sound: bool = False) -> bytes:
        """JPEG poster of window ``window`` of file ``file_id``, or its spectrogram (``sound``, and
        for a file without pictures); ``KeyError``: no such file or window; ``MediaError``: the file
        cannot be decoded (or has no sound, for a spectrogram)."""
        from clip4vla.serve.thumbnails import file_key

        path, rel = self.file(file_id)
        index = self.index
        if not 0 <= window < int(index["count"][file_id]):
            raise KeyError(window)
        row = int(index["first"][file_id]) + window
        start, end = index["spans"][row].tolist()
        spectrogram = sound or not bool(index["has_video"][row])
        key = file_key(rel, int(index["size"][file_id]), int(index["mtime_ns"][file_id]), window, spectrogram)
        return self.thumbnails.get(path, key, start, end, sound_only=spectrogram)

    def browse(self, offset: int, k: int) -> tuple[list[dict[str, Any]], int, list[str]]:
        """The indexed files, newest first (by the modification time they were indexed with), rows
        ``offset`` to ``offset + k``: the page's first screen. Also the number of files, and notes."""
        notes: list[str] = []
        k = self._cap(k, notes)
        with self._lock:
            index = self.require()
            order = torch.argsort(index["mtime_ns"], descending=True, stable=True)[offset:offset + k].tolist()
            rows = []
            for i in order:
                first, count = int(index["first"][i]), int(index["count"][i])
                modified = datetime.datetime.fromtimestamp(int(index["mtime_ns"][i]) / 1e9).astimezone()
                rows.append({"path": printable_path(Path(index["root"]) / index["paths"][i]), "id": i, "window": 0,
                             "start": 0.0, "end": round(float(index["spans"][first + count - 1][1]), 2),
                             "windows": count, "modified": modified.isoformat(timespec="seconds")})
            return rows, len(index["paths"]), notes

    # ------------------------------------------------------------------ status line

    def status(self) -> dict[str, Any]:
        """What the page's status line shows: size, model, build time, unreadable and changed files."""
        self.refresh()
        with self._lock:
            if self.index is None:
                command = self.index_command()
                return {"ok": False, "problem": self.problem, "command": command, "hint": None if command else NO_MODEL,
                        "folder": printable_path(self.folder)}
            index = self.index
            if self._stale is None or time.monotonic() - self._stale_at > STALE_CHECK_SECONDS:
                self._stale, self._stale_at = staleness(index, self.folder), time.monotonic()
            stale = self._stale
        built = datetime.datetime.fromtimestamp(self._stamp[1] / 1e9).astimezone()
        skipped = index.get("skipped", {})
        changed = sum(len(v) for v in stale.values())
        return {
            "ok": True, "folder": printable_path(self.folder), "files": len(index["paths"]),
            "windows": int(index["count"].sum()), "model": shown_path(Path(index["model"]["path"])),
            "built": built.isoformat(timespec="seconds"),
            "unreadable": [{"path": printable_path(name), "reason": readable_reason(entry["reason"])}  # also an older index's
                           for name, entry in list(skipped.items())[:50]],
            "unreadable_count": len(skipped),
            "stale": {key: {"count": len(names), "examples": [printable_path(n) for n in names[:5]]}
                      for key, names in stale.items()},
            "command": self.index_command() if changed else None,
        }


def shown_path(path: Path) -> str:
    """``path`` as the page shows it: relative to the working folder when inside it (the machine's
    own layout stays off screenshots), escaped where it is not UTF-8."""
    try:
        path = path.resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError, RuntimeError):
        pass
    return printable_path(path)


def _check_modality(modality: str) -> None:
    if modality not in ("v", "a", "av"):
        raise SearchError(f"modality must be v, a or av, got {modality!r}")
