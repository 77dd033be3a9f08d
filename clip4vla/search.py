"""Search your own videos by what they show and what they sound like: ``clip4vla-search``.

    clip4vla-search index ~/Videos --model runs/pretrain_synthetic/model   # once, then after changes
    clip4vla-search query "a dog barking in the rain" --dir ~/Videos --top-k 5
    clip4vla-search query "a siren wails" --dir ~/Videos --modality a --json
    clip4vla-search serve --dir ~/Videos          # then open the address it prints

``index`` embeds every video and sound file under the folder (vision and audio, per window of
the model's clip length; ``clip4vla.embed``) into one index file, by default
``<folder>/.clip4vla-index.pt``. Re-running it embeds only new or changed files (size or
modification time) and drops deleted ones. The index is written atomically — a kill or a full disk
never leaves a half-written index, the previous one stays usable — and records which model made
it: querying or extending it with another model is refused (``--rebuild`` starts over).

``serve`` starts a local web page over the index (``clip4vla.serve``): a query box, thumbnails,
and a player that starts at the matched window; "more like this" and sound queries too. It binds to
127.0.0.1 unless told otherwise, answers only requests addressed to the name it listens on (plus
``--allow-host`` names) and serves only the files in the index, which holds only the files that
resolve inside the folder.

``query`` embeds the text with that model and ranks the files by their best-matching window
(vision ``v``, audio ``a``, or both ``av``: the average of the two, as G2G retrieval scores), with
the window's time span for long files. In ``av`` a window without sound (or a sound file, without
pictures) takes the query's average over the index for the side it lacks, so it neither wins nor
loses on it; ``a`` ranks only files with sound, ``v`` only files with pictures. An empty query
(nothing but spaces or control characters) has no meaning and is refused.

Unreadable files are listed, never fatal; names that are not valid UTF-8 are shown escaped
(``bad\\xff.mp4``). ``python -m clip4vla.search`` is the same program.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from clip4vla.models.loading import CheckpointError, read_weights_only

__all__ = ["SearchError", "build_index", "check_query", "embed_query", "embed_sound_query", "load_index", "main", "rank",
           "readable_reason", "resolve_inside", "search", "servable_media", "similar", "staleness"]

log = logging.getLogger(__name__)

INDEX_FORMAT = "clip4vla-search-index"
INDEX_VERSION = 1
DEFAULT_NAME = ".clip4vla-index.pt"
SAVE_EVERY = 200  # files embedded between two saves of a growing index


class SearchError(Exception):
    """Something the user can fix (message says what)."""


def _default_index(folder: Path) -> Path:
    return folder / DEFAULT_NAME


def resolve_inside(path: Path, root: Path) -> Path | None:
    """``path`` resolved, if it is a file inside ``root`` (a resolved folder); ``None`` for a
    symlink out of it (or a loop, or a file gone). The one rule for what ``index`` embeds and what
    ``serve`` hands out, so the page never lists a file it cannot play."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # gone, or a symlink loop
        return None
    return real if real.is_file() and real.is_relative_to(root) else None


def servable_media(folder: Path) -> list[Path]:
    """The media files under ``folder`` (``clip4vla.extract.find_media``) that resolve inside it."""
    from clip4vla.extract import find_media

    root = folder.resolve()
    return [p for p in find_media(folder) if resolve_inside(p, root) is not None]


# FFmpeg's errors read "[Errno 1094995529] Invalid data found when processing input: '/the/path'"
_DECODER_ERROR = re.compile(r"\[Errno -?\d+\] ([^:()'\[\]]+?)(?:: '.*?')?(?=\)*$)")


def readable_reason(reason: str, path: Path | None = None, name: str | None = None) -> str:
    """Why a file could not be read, for people: a decoder error number as the decoder's own words
    ("the decoder says: Invalid data found when processing input"), and ``path`` (an upload's
    temporary copy) shown as ``name`` (the user's file)."""
    if path is not None and name is not None:
        reason = reason.replace(str(path), name)
    return _DECODER_ERROR.sub(lambda m: f"the decoder says: {m.group(1)}", reason)


# The index on disk is packed: one row per window of every file, so a query is two matrix-vector
# products and a scatter-max, whatever the number of files, and loading it is a handful of tensors.
#   files:  paths [F] (relative to root), size [F], mtime_ns [F], first [F] (first window row), count [F]
#   rows:   video [T, D], audio [T, D] (zeros where absent), has_video [T], has_audio [T], spans [T, 2]
# While indexing it is unpacked into one entry per file (``_unpack`` / ``_pack``).


def _pack(entries: dict[str, dict[str, Any]], dim: int) -> dict[str, Any]:
    names = sorted(entries)
    counts = torch.tensor([len(entries[n]["spans"]) for n in names], dtype=torch.long)
    first = torch.cumsum(counts, 0) - counts

    def rows(key: str) -> torch.Tensor:
        parts = []
        for n in names:
            e = entries[n]
            parts.append(e[key] if e[key] is not None else torch.zeros(len(e["spans"]), dim))
        return torch.cat(parts) if parts else torch.zeros(0, dim)

    def flags(key: str) -> torch.Tensor:
        parts = [entries[n][key] for n in names]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)

    return {
        "paths": names,
        "size": torch.tensor([entries[n]["size"] for n in names], dtype=torch.long),
        "mtime_ns": torch.tensor([entries[n]["mtime_ns"] for n in names], dtype=torch.long),
        "first": first, "count": counts,
        "video": rows("video"), "audio": rows("audio"),
        "has_video": flags("has_video"), "has_audio": flags("has_audio"),
        "spans": torch.tensor([s for n in names for s in entries[n]["spans"]], dtype=torch.float64).reshape(-1, 2),
    }


def _unpack(index: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = {}
    for i, name in enumerate(index["paths"]):
        lo, n = int(index["first"][i]), int(index["count"][i])
        sl = slice(lo, lo + n)
        has_video, has_audio = index["has_video"][sl], index["has_audio"][sl]
        entries[name] = {
            "size": int(index["size"][i]), "mtime_ns": int(index["mtime_ns"][i]),
            "spans": index["spans"][sl].tolist(), "has_video": has_video, "has_audio": has_audio,
            "video": index["video"][sl] if bool(has_video.any()) else None,
            "audio": index["audio"][sl] if bool(has_audio.any()) else None,
        }
    return entries


def load_index(path: Path) -> dict[str, Any]:
    """Read an index file, refusing what is not one of this version (message says what to do)."""
    if not path.is_file():
        raise SearchError(f"no index at {path}: build one with `clip4vla-search index <folder> --model <model>`")
    try:
        index = read_weights_only(path, what="search index")
    except CheckpointError as err:  # the one reader of torch files: never runs pickled code
        raise SearchError(f"{err}: not a readable index; rebuild it with --rebuild") from err
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise SearchError(f"{path}: not a clip4vla search index")
    if index.get("version") != INDEX_VERSION:
        raise SearchError(f"{path}: index version {index.get('version')!r}, this clip4vla reads {INDEX_VERSION}: "
                          "rebuild it with `clip4vla-search index <folder> --model <model> --rebuild`")
    return index


def _check_writable(path: Path) -> None:
    """Fail before hours of embedding, not at the first save."""
    folder = path.parent
    if not folder.is_dir():
        raise SearchError(f"cannot write the index to {path}: {folder} is not a folder. Pass --index with a writable location")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SearchError(f"cannot write the index to {path}: no write permission in {folder}. "
                          "Pass --index with a writable location (the videos themselves are only read)")


def _save(header: dict[str, Any], entries: dict[str, dict[str, Any]], skipped: dict[str, Any], dim: int,
          path: Path) -> None:
    from clip4vla.files import save_checkpoint

    try:
        save_checkpoint(path, {**header, **_pack(entries, dim), "skipped": skipped})
    except OSError as err:
        raise SearchError(f"cannot write the index to {path} ({err.strerror or err}); the previous index is unchanged. "
                          "Pass --index with a writable location") from err


def build_index(folder: Path, model_path: Path, index_path: Path, rebuild: bool = False,
                audio_type: Any = "auto", progress: bool = True) -> dict[str, Any]:
    """Create or update the index of ``folder`` (module docstring); returns what changed."""
    from tqdm.auto import tqdm

    from clip4vla import load_model
    from clip4vla.embed import embed_windows, is_audio_file
    from clip4vla.extract import model_identity, model_stamp
    from clip4vla.media_errors import MediaError
    from clip4vla.models.hub import locate_model
    from clip4vla.models.loading import CheckpointError

    try:
        files = servable_media(folder)
    except FileNotFoundError as err:
        raise SearchError(str(err)) from err
    if not files:
        raise SearchError(f"{folder}: no video or audio files to index")
    _check_writable(index_path)
    try:
        model_path = locate_model(model_path)  # a Hub id: its snapshot folder in the cache
        model = load_model(model_path)  # first: a missing or foreign model is named before anything
    except CheckpointError as err:
        raise SearchError(str(err)) from err
    size, mtime_ns = model_stamp(model_path)
    identity = {**model_identity(model, model_path.resolve()), "size": size, "mtime_ns": mtime_ns}  # hashed once
    digest = identity["sha256"]
    entries: dict[str, dict[str, Any]] = {}
    skipped: dict[str, Any] = {}
    if index_path.is_file() and not rebuild:
        index = load_index(index_path)
        if index["model"]["sha256"] != digest:
            raise SearchError(f"{index_path} was built with another model ({index['model']['path']}); pass --rebuild "
                              "to index again with this one, or query with the index's model")
        entries, skipped = _unpack(index), index["skipped"]
    dim = model.clip.config.embed_dim
    header = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "model": identity, "root": str(folder.resolve())}
    present = {p.relative_to(folder).as_posix(): p for p in files}
    stats = {"files": len(present), "kept": 0, "embedded": 0, "dropped": 0, "skipped": 0}
    for gone in set(entries) - set(present):
        del entries[gone]
        stats["dropped"] += 1
    skipped = {k: v for k, v in skipped.items() if k in present}
    todo = []
    for rel, path in present.items():
        st = path.stat()
        known = entries.get(rel) or skipped.get(rel)
        if known and known["size"] == st.st_size and known["mtime_ns"] == st.st_mtime_ns:
            stats["kept"] += 1
            continue
        todo.append((rel, path, st))
    since_save = 0
    for rel, path, st in tqdm(todo, desc="indexing", unit="file", disable=not progress):
        entries.pop(rel, None)
        skipped.pop(rel, None)
        try:
            w = embed_windows(model, path, video=not is_audio_file(path), audio_type=audio_type)
            if w.video is None and w.audio is None:
                raise MediaError(f"{path}: a sound file without sound")
        except MediaError as err:
            skipped[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "reason": readable_reason(str(err))}
            continue
        n = len(w.spans)
        entries[rel] = {
            "size": st.st_size, "mtime_ns": st.st_mtime_ns, "spans": [list(s) for s in w.spans],
            "video": None if w.video is None else w.video.cpu(), "audio": None if w.audio is None else w.audio.cpu(),
            "has_video": torch.full((n,), w.video is not None),
            "has_audio": torch.zeros(n, dtype=torch.bool) if w.audio is None else w.segment_mask.any(dim=1).cpu(),
        }
        stats["embedded"] += 1
        since_save += 1
        if since_save >= SAVE_EVERY:  # a kill loses at most this much work
            _save(header, entries, skipped, dim, index_path)
            since_save = 0
    _save(header, entries, skipped, dim, index_path)
    stats["skipped"] = len(skipped)  # every file still unreadable, from this run or an earlier one
    return stats


def _window_scores(index: dict[str, Any], query: torch.Tensor, modality: str,
                   audio_query: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per window row ``[T]``: the ranking score (-inf: nothing to match in this modality) and the
    two cosines it is made of, vision and sound (nan where the window lacks that side).
    ``audio_query`` (default: ``query``) is what the audio rows are compared with: "more like this"
    compares pictures with the window's picture and sound with its sound."""
    has_video, has_audio = index["has_video"], index["has_audio"]
    score_v = index["video"] @ query  # [T]
    score_a = index["audio"] @ (query if audio_query is None else audio_query)
    if modality == "v":
        scores = torch.where(has_video, score_v, -torch.inf)
    elif modality == "a":
        scores = torch.where(has_audio, score_a, -torch.inf)
    else:  # av: G2G's average of the two similarities
        # A silent window (or a sound file's missing picture) must neither win nor lose on the side
        # it lacks: that term is the query's average over the index. (Scoring a silent video by
        # vision alone put silent red clips above every red clip with a siren for "a red circle
        # with a siren": one good similarity beats the mean of a good and a fair one.)
        neutral_v = score_v[has_video].mean() if bool(has_video.any()) else score_v.new_zeros(())
        neutral_a = score_a[has_audio].mean() if bool(has_audio.any()) else score_a.new_zeros(())
        scores = (torch.where(has_video, score_v, neutral_v) + torch.where(has_audio, score_a, neutral_a)) / 2
        scores = torch.where(has_video | has_audio, scores, -torch.inf)
    return scores, torch.where(has_video, score_v, torch.nan), torch.where(has_audio, score_a, torch.nan)


def _best_windows(index: dict[str, Any], scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per file: the best window's score (-inf: nothing to match) and its row."""
    owner = torch.repeat_interleave(torch.arange(len(index["count"])), index["count"])
    best = torch.full((len(index["count"]),), -torch.inf, dtype=scores.dtype).scatter_reduce(
        0, owner, scores, reduce="amax")
    rows = torch.arange(len(scores))
    is_best = (scores == best[owner]) & torch.isfinite(scores)
    best_row = torch.zeros(len(best), dtype=torch.long).scatter_reduce(
        0, owner[is_best], rows[is_best], reduce="amin", include_self=False)
    return best, best_row


def _number(value: float) -> float | None:
    """A score for a JSON row: ``None`` where there is none (a side the window lacks)."""
    return round(value, 4) if math.isfinite(value) else None


def check_query(text: str) -> str:
    """The query as given, or ``SearchError`` for one with nothing to match: empty, or only spaces
    and control characters (the tokenizer would reduce it to the bare start/end tokens, and every
    ranking of it is noise)."""
    if not any(ch.isprintable() and not ch.isspace() for ch in text):
        raise SearchError(f"the query {text!r} is empty (nothing but spaces or control characters): "
                          "give words to search for")
    return text


def search(index: dict[str, Any], model: Any, text: str, top_k: int = 10, modality: str = "av") -> list[dict[str, Any]]:
    """The ``top_k`` files for ``text``: path, score, and the best window's time span."""
    if modality not in ("v", "a", "av"):
        raise SearchError(f"modality must be v, a or av, got {modality!r}")
    check_query(text)
    return rank(index, embed_query(model, text), top_k, modality)


@torch.no_grad()
def embed_query(model: Any, text: str) -> torch.Tensor:
    """The unit embedding ``[D]`` of one query text (on the CPU), as one row through the text tower.

    ``embed_text`` pads every call to 32 rows so that a text's bits do not depend on what else is in
    the call; a query is always alone, so one row is just as repeatable at 1/32 of the cost (a
    ViT-B/32-sized text tower on one CPU thread: ~1.6 s per query padded, ~0.1 s alone;
    ``benchmarks/serve_latency.py``). ``query`` and ``serve`` both embed through here, so they
    return the same rows. A text longer than the model's context is cut there, with a warning.
    """
    import torch.nn.functional as F

    from clip4vla.models.preprocessing import Preprocessing
    from clip4vla.text import default_tokenizer, tokenize

    context = (model.preprocessing or Preprocessing()).max_words
    if len(default_tokenizer().encode(text)) > context - 2:
        log.warning("the query is longer than the model's %d tokens and is truncated: %r", context, text[:80])
    tokens = tokenize([text], context_length=context, truncate=True)
    device = next(model.parameters()).device
    return F.normalize(model.encode_text(tokens.to(device))[0].float(), dim=-1).cpu()


def rank(index: dict[str, Any], query: torch.Tensor, top_k: int = 10, modality: str = "av",
         audio_query: torch.Tensor | None = None, exclude: int | None = None) -> list[dict[str, Any]]:
    """``search`` for an embedded query (what the latency benchmark times).

    Each row also carries the file's number in the index (``id``) and its best window's number
    (``window``): the browser page (``clip4vla-search serve``) fetches media and thumbnails by
    them, never by a path from the request. ``vision`` and ``sound`` are that window's two cosines
    with the query (``None``: the window has no pictures / no sound), the parts of ``score``;
    ``per_window`` has the same three for every window of the file. ``exclude``: a file id left out
    ("more like this" does not return the file it started from). The path of a name that is not
    UTF-8 is shown escaped (``caf\\xe9.mp4``), as everywhere else.
    """
    from clip4vla.embed import printable_path

    scores, vision, sound = _window_scores(index, query, modality, audio_query)
    best, best_row = _best_windows(index, scores)
    if exclude is not None:
        best[exclude] = -torch.inf
    k = min(top_k, int(torch.isfinite(best).sum()))
    top, order = best.topk(k)
    out = []
    for score, i in zip(top.tolist(), order.tolist()):
        first, count = int(index["first"][i]), int(index["count"][i])
        window = int(best_row[i]) - first
        rows = slice(first, first + count)  # this file's windows only: the index may hold millions
        windows = [{"start": round(start, 2), "end": round(end, 2), "score": _number(s), "vision": _number(v),
                    "sound": _number(a)} for (start, end), s, v, a in
                   zip(index["spans"][rows].tolist(), scores[rows].tolist(), vision[rows].tolist(), sound[rows].tolist())]
        best_window = windows[window]
        out.append({"path": printable_path(Path(index["root"]) / index["paths"][i]), "score": round(score, 4),
                    "start": best_window["start"], "end": best_window["end"], "windows": count, "id": i,
                    "window": window, "vision": best_window["vision"], "sound": best_window["sound"],
                    "per_window": windows})
    return out


def similar(index: dict[str, Any], file_id: int, window: int, top_k: int = 10, modality: str = "av") -> list[dict[str, Any]]:
    """"More like this": the files whose windows look (``v``), sound (``a``) or both (``av``) like
    window ``window`` of file ``file_id``, by that window's own embeddings (no text). The file
    itself is left out. A side the window lacks cannot be asked for (``SearchError``); in ``av``
    it is left to the side the window has."""
    if modality not in ("v", "a", "av"):
        raise SearchError(f"modality must be v, a or av, got {modality!r}")
    if not 0 <= file_id < len(index["paths"]):
        raise SearchError(f"no file {file_id} in the index ({len(index['paths'])} files)")
    if not 0 <= window < int(index["count"][file_id]):
        raise SearchError(f"file {file_id} has {int(index['count'][file_id])} windows, not a window {window}")
    row = int(index["first"][file_id]) + window
    has_v, has_a = bool(index["has_video"][row]), bool(index["has_audio"][row])
    if modality == "av" and not (has_v and has_a):
        modality = "v" if has_v else "a"
    if (modality == "v" and not has_v) or (modality == "a" and not has_a):
        raise SearchError(f"{index['paths'][file_id]} has no {'pictures' if modality == 'v' else 'sound'} in that window "
                          "to compare with")
    return rank(index, index["video"][row], top_k, modality, audio_query=index["audio"][row], exclude=file_id)


def embed_sound_query(model: Any, path: Path, max_windows: int = 8, name: str | None = None) -> torch.Tensor:
    """The audio embedding ``[D]`` of a sound used as a query, with the model's own preprocessing
    and ``audio_type="auto"`` (what indexing uses), through the bounded decoder: at most
    ``max_windows`` windows of at most ``max_seconds`` each are decoded, whatever the file's length.
    ``SearchError`` for a file without readable sound, calling the file ``name`` (an upload's own
    name, not the server's temporary copy)."""
    from clip4vla.embed import embed_windows, printable_path
    from clip4vla.media_errors import MediaError

    name = name or printable_path(path)
    try:
        embedded = embed_windows(model, path, video=False, audio=True, audio_type="auto", max_windows=max_windows)
    except MediaError as err:
        raise SearchError(f"not a readable sound: {readable_reason(str(err), path, name)}") from err
    pooled = embedded.pooled("audio")
    if pooled is None:
        raise SearchError(f"{name} has no sound to search with")
    return pooled.cpu()


def staleness(index: dict[str, Any], folder: Path) -> dict[str, list[str]]:
    """What changed in ``folder`` since the index was built: ``changed`` (size or modification
    time), ``deleted`` and ``new`` files (relative paths), as ``index`` would see them; read only."""
    known = {name: (int(size), int(mtime)) for name, size, mtime in
             zip(index["paths"], index["size"].tolist(), index["mtime_ns"].tolist())}
    known.update({name: (e["size"], e["mtime_ns"]) for name, e in index.get("skipped", {}).items()})
    try:
        present = {p.relative_to(folder).as_posix(): p for p in servable_media(folder)}
    except FileNotFoundError:
        present = {}
    changed = []
    for name, path in present.items():
        if name in known:
            try:
                st = path.stat()
            except OSError:
                continue
            if (st.st_size, st.st_mtime_ns) != known[name]:
                changed.append(name)
    return {"changed": sorted(changed), "deleted": sorted(set(known) - set(present)),
            "new": sorted(set(present) - set(known))}


def _load_query_model(index: dict[str, Any], override: Path | None) -> Any:
    from clip4vla import load_model
    from clip4vla.extract import model_digest, model_stamp
    from clip4vla.models.hub import locate_model
    from clip4vla.models.loading import CheckpointError

    known = index["model"]
    try:
        path = locate_model(override) if override is not None else Path(known["path"])
    except CheckpointError as err:
        raise SearchError(str(err)) from err
    if not path.exists():
        raise SearchError(f"the index's model {path} is gone: pass --model with the same model")
    unchanged = path.resolve() == Path(known["path"]) and model_stamp(path) == (known["size"], known["mtime_ns"])
    if not unchanged and model_digest(path) != known["sha256"]:  # hashing a 600 MB model costs a second
        raise SearchError(f"{path} is not the model this index was built with; rebuild the index with it")
    try:
        return load_model(path)
    except CheckpointError as err:
        raise SearchError(str(err)) from err


def build_parser() -> argparse.ArgumentParser:
    from clip4vla.cli import HelpFormatter, audio_type_arg, port_arg, positive_int

    parser = argparse.ArgumentParser(prog="clip4vla-search", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{index,query,serve}")
    p_index = sub.add_parser("index", help="index (or update the index of) a folder of videos",
                             formatter_class=HelpFormatter,
                             description="Embed every video / sound file under DIR; again: only new or changed ones.")
    p_index.add_argument("dir", type=Path, help="the folder to index (searched recursively)")
    p_index.add_argument("--model", type=Path, required=True,
                         help="a model: a training run's model folder (runs/NAME/model), any model file, or a Hub id")
    p_index.add_argument("--index", type=Path, default=None, help=f"index file (when not given: DIR/{DEFAULT_NAME})")
    p_index.add_argument("--rebuild", action="store_true", help="start over (e.g. with another model)")
    p_index.add_argument("--audio-type", type=audio_type_arg, default="auto",
                         help="audio type token: vb, nb, auto (a speech detector picks per file) "
                              "or a mixing ratio in [0, 1]")
    p_index.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_query = sub.add_parser("query", help="find the files that best match a text", formatter_class=HelpFormatter,
                             description="Rank the indexed files by their best window for TEXT.")
    p_query.add_argument("text", help="what to look for, in words")
    p_query.add_argument("--dir", type=Path, default=Path("."), help="the indexed folder")
    p_query.add_argument("--index", type=Path, default=None, help=f"index file (when not given: DIR/{DEFAULT_NAME})")
    p_query.add_argument("--top-k", type=positive_int, default=10, help="how many files to list")
    p_query.add_argument("--modality", choices=("v", "a", "av"), default="av",
                         help="what to match: vision, audio, or both")
    p_query.add_argument("--model", type=Path, default=None, help="the index's model file, if it moved")
    p_query.add_argument("--json", action="store_true", help="print the results as JSON")
    p_serve = sub.add_parser("serve", help="search the indexed folder in a web browser", formatter_class=HelpFormatter,
                             description="Serve a local page: type a query, see thumbnails, play the matched "
                                         "seconds. Only files in the index are served; the index is only read.")
    p_serve.add_argument("--dir", type=Path, default=Path("."), help="the indexed folder")
    p_serve.add_argument("--index", type=Path, default=None, help=f"index file (when not given: DIR/{DEFAULT_NAME})")
    p_serve.add_argument("--model", type=Path, default=None, help="the index's model file, if it moved")
    p_serve.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (0.0.0.0: every machine on the network can see the folder)")
    p_serve.add_argument("--port", type=port_arg, default=8765, help="port to listen on (0: any free port)")
    p_serve.add_argument("--allow-host", action="append", type=_host_arg, default=None, metavar="NAME",
                         help="also answer requests addressed to this host name (repeatable); without it the page "
                              "answers only to the address it listens on (for 127.0.0.1: 127.0.0.1, localhost, [::1])")
    return parser


def _host_arg(text: str) -> str:
    """A host name or address for ``--allow-host`` (no scheme, port or path)."""
    name = text.strip().lower()
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        ipaddress.ip_address(bare)
        return bare
    except ValueError:
        if re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", bare):
            return bare
    raise argparse.ArgumentTypeError(f"expected a host name or address (e.g. media.lan or 192.168.1.7), "
                                     f"without scheme or port, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from clip4vla.embed import printable_path

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "index":
            index_path = args.index or _default_index(args.dir)
            start = time.perf_counter()
            stats = build_index(args.dir, args.model, index_path, args.rebuild, args.audio_type, not args.no_progress)
            print(f"{stats['files']} files: {stats['embedded']} embedded, {stats['kept']} unchanged, {stats['dropped']} "
                  f"dropped (deleted), {stats['skipped']} unreadable ({time.perf_counter() - start:.1f} s) -> {index_path}")
            skipped = load_index(index_path)["skipped"]
            for rel, entry in list(skipped.items())[:10]:
                print(f"  unreadable: {printable_path(rel)}: {printable_path(entry['reason'])}")
            if len(skipped) > 10:
                print(f"  ... and {len(skipped) - 10} more (the index lists them under 'skipped')")
            return 0
        if args.command == "serve":
            from clip4vla.serve.app import serve

            return serve(args.dir, args.index or _default_index(args.dir), args.model, args.host, args.port,
                         args.allow_host or ())
        index_path = args.index or _default_index(args.dir)
        check_query(args.text)  # before loading anything
        index = load_index(index_path)
        model = _load_query_model(index, args.model)
        results = search(index, model, args.text, args.top_k, args.modality)
    except SearchError as err:
        print(f"error: {printable_path(str(err))}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results))
    else:
        for place, r in enumerate(results, 1):
            span = f"  [{r['start']:.1f}-{r['end']:.1f} s]" if r["windows"] > 1 else ""
            print(f"{place:>3}. {r['score']:.3f}  {printable_path(r['path'])}{span}")
        if not results:
            print(f"no indexed file has {'sound' if args.modality == 'a' else 'anything'} to match", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # `python -m clip4vla.search` runs this file as __main__, a second copy whose SearchError is not
    # the one clip4vla.serve raises: run the imported module's main, so that errors stay one line
    from clip4vla.search import main as search_main

    sys.exit(search_main())
