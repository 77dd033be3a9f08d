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

from clip4vla.search import DEFAULT_NAME, SearchError, _load_query_model, check_query, embed_query, load_index, rank, \
    similar, staleness

__all__ = ["Library", "MAX_K", "MAX_QUERY_CHARS", "Unavailable"]

log = logging.getLogger(__name__)

MAX_K = 100  # results per request: a page of thumbnails, not a dump of the index
MAX_QUERY_CHARS = 1000  # far beyond any model's context; keeps the tokenizer's work bounded
STALE_CHECK_SECONDS = 30.0  # the folder walk behind the status line is repeated at most this often


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

    def index_command(self) -> str:
        """The command that builds or updates this index (what the page tells the user to run)."""
        model = self.model_path or (Path(self.index["model"]["path"]) if self.index else None)
        parts = ["clip4vla-search", "index", str(self.folder), "--model", str(model) if model else "MODEL.pt"]
        if self.index_path != self.folder / DEFAULT_NAME:
            parts += ["--index", str(self.index_path)]
        return " ".join(shlex.quote(p) if p != "MODEL.pt" else p for p in parts)

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
            raise Unavailable(f"{self.problem}. Run: {self.index_command()}")
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

    def search_sound(self, path: Path, modality: str, k: int) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows for an uploaded sound, by its audio embedding (``clip4vla.search.embed_sound_query``)."""
        from clip4vla.search import embed_sound_query

        _check_modality(modality)
        notes: list[str] = []
        k = self._cap(k, notes)
        with self._lock:
            index = self.require()
            query = embed_sound_query(self.model, path)
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
        path = self.folder / rel
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):  # gone, or a symlink loop
            raise KeyError(file_id) from None
        if not real.is_file() or not real.is_relative_to(self.root):  # a symlink out of the folder
            raise KeyError(file_id)
        return real, rel

    def thumbnail(self, file_id: int, window: int) -> bytes:
        """JPEG poster (or spectrogram) of window ``window`` of file ``file_id``; ``KeyError``: no such
        file or window; ``MediaError``: the file cannot be decoded."""
        from clip4vla.serve.thumbnails import file_key

        path, rel = self.file(file_id)
        index = self.index
        if not 0 <= window < int(index["count"][file_id]):
            raise KeyError(window)
        row = int(index["first"][file_id]) + window
        start, end = index["spans"][row].tolist()
        key = file_key(rel, int(index["size"][file_id]), int(index["mtime_ns"][file_id]), window)
        return self.thumbnails.get(path, key, start, end, sound_only=not bool(index["has_video"][row]))

    # ------------------------------------------------------------------ status line

    def status(self) -> dict[str, Any]:
        """What the page's status line shows: size, model, build time, unreadable and changed files."""
        self.refresh()
        with self._lock:
            if self.index is None:
                return {"ok": False, "problem": self.problem, "command": self.index_command(), "folder": str(self.folder)}
            index = self.index
            if self._stale is None or time.monotonic() - self._stale_at > STALE_CHECK_SECONDS:
                self._stale, self._stale_at = staleness(index, self.folder), time.monotonic()
            stale = self._stale
        built = datetime.datetime.fromtimestamp(self._stamp[1] / 1e9).astimezone()
        skipped = index.get("skipped", {})
        changed = sum(len(v) for v in stale.values())
        return {
            "ok": True, "folder": str(self.folder), "files": len(index["paths"]), "windows": int(index["count"].sum()),
            "model": index["model"]["path"], "built": built.isoformat(timespec="seconds"),
            "unreadable": [{"path": name, "reason": entry["reason"]} for name, entry in list(skipped.items())[:50]],
            "unreadable_count": len(skipped),
            "stale": {key: {"count": len(names), "examples": names[:5]} for key, names in stale.items()},
            "command": self.index_command() if changed else None,
        }


def _check_modality(modality: str) -> None:
    if modality not in ("v", "a", "av"):
        raise SearchError(f"modality must be v, a or av, got {modality!r}")
