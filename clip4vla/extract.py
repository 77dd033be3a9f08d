"""Feature extraction: a folder (or a list) of media -> sharded feature files, resumable.

Each shard ``shard_<n>.pt`` (``torch.load(..., weights_only=True)``) holds up to ``shard_size``
items and the identity of the model that made them::

    {"format": "clip4vla-features", "model": {...identity...}, "items": [
        {"id", "path", "spans": [[start, end], ...],            # the clip's windows (clip4vla.embed)
         "video": [D], "audio": [D] or None,                   # pooled unit embeddings
         "window_video": [W, D], "window_audio": [W, D] or None,
         "frames": [W, F, D], "frame_mask": [W, F], "segments": [W, L, D] or None, "segment_mask": ...,
         # a sound file (.wav, ...) has no pictures: its video, window_video and frames are None
         "audio_type"}, ...]}

``model.json`` names the model too, from the start. Resumable and exact: shards are written
atomically when full (and the last one at the end); a rerun reads the ids already in shards and
``skipped.jsonl`` and continues with the rest, so a killed run never duplicates or loses a row. An id
given twice is extracted once (the later copies are dropped, with a count in the log). Unreadable
files (a file name that is not valid UTF-8 among them) are listed in ``skipped.jsonl`` with their
reason and never stop the run; an unexpected error saves the rows extracted so far, names the file,
and stops. A folder made with another model is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from tqdm.auto import tqdm

from clip4vla.data.records import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS
from clip4vla.embed import embed_windows, is_audio_file, printable_path
from clip4vla.files import drop_cut_last_line, save_checkpoint, write_text_atomic
from clip4vla.media_errors import MediaError
from clip4vla.models.checkpoints import model_architecture
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.loading import read_weights_only

__all__ = ["FEATURES_FORMAT", "extract_features", "find_media", "model_digest", "model_identity", "model_stamp",
           "read_shards"]

log = logging.getLogger(__name__)

FEATURES_FORMAT = "clip4vla-features"
SKIPPED = "skipped.jsonl"
MODEL_FILE = "model.json"  # the identity of the model, written before the first file


def find_media(folder: str | os.PathLike) -> list[Path]:
    """Every video or audio file under ``folder`` (recursive, sorted, hidden files left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    suffixes = set(VIDEO_EXTENSIONS) | set(AUDIO_EXTENSIONS)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_digest(path: str | os.PathLike) -> str:
    """The content hash of a model: a file's bytes, or a model folder's weights and config (its
    card is words about the model and may be edited without changing what the model computes)."""
    if not Path(path).is_dir():
        return file_digest(path)
    from clip4vla.models.model_folder import folder_files

    return hashlib.sha256("".join(file_digest(f) for f in folder_files(path)).encode()).hexdigest()


def model_stamp(path: str | os.PathLike) -> tuple[int, int]:
    """``(bytes, newest mtime_ns)`` of a model file or folder: a cheap "has it changed" check."""
    from clip4vla.models.model_folder import folder_files

    stats = [f.stat() for f in (folder_files(path) if Path(path).is_dir() else [Path(path)])]
    return sum(st.st_size for st in stats), max(st.st_mtime_ns for st in stats)


def model_identity(model: CLIP4VLA, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """What makes two feature sets comparable: the model's content, architecture, preprocessing.
    ``path`` is what the model was loaded from; a Hub id is hashed as its cached snapshot."""
    if path is not None:
        from clip4vla.models.hub import locate_model

        path = locate_model(path)
    return {
        "path": str(path) if path is not None else None,
        "sha256": model_digest(path) if path is not None else None,
        "architecture": model_architecture(model),
        "preprocessing": model.preprocessing.to_dict() if model.preprocessing else None,
    }


def read_shards(out_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every item of every shard in ``out_dir`` (shard order) and the model identity they share."""
    items, identity = [], None
    for shard in sorted(Path(out_dir).glob("shard_*.pt")):
        data = read_weights_only(shard, what="feature shard")  # the one reader of torch files: never runs pickled code
        if not isinstance(data, dict) or data.get("format") != FEATURES_FORMAT:
            raise ValueError(f"{shard}: not a clip4vla feature shard")
        if identity is not None and data["model"]["sha256"] != identity["sha256"]:
            raise ValueError(f"{shard} was made by another model than the shards before it")
        identity = data["model"]
        items.extend(data["items"])
    return items, identity


def _item(model: CLIP4VLA, item_id: str, path: Path, audio_type: Any) -> dict[str, Any]:
    w = embed_windows(model, path, video=not is_audio_file(path), audio_type=audio_type)
    cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
    return {
        "id": item_id, "path": str(path), "spans": [list(s) for s in w.spans],
        "video": cpu(w.pooled("video")), "audio": cpu(w.pooled("audio")),
        "window_video": cpu(w.video), "window_audio": cpu(w.audio),
        "frames": cpu(w.frames), "frame_mask": cpu(w.frame_mask),
        "segments": cpu(w.segments), "segment_mask": cpu(w.segment_mask),
        "audio_type": w.audio_type if isinstance(w.audio_type, (str, float, int)) or w.audio_type is None else str(w.audio_type),
    }


def extract_features(
    model: CLIP4VLA,
    media: Iterable[tuple[str, Path]],
    out_dir: str | os.PathLike,
    identity: dict[str, Any],
    shard_size: int = 1000,
    audio_type: Any = "nb",
    progress: bool = True,
) -> dict[str, int]:
    """Extract ``(id, path)`` items into shards under ``out_dir`` (module docstring); the counts."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done, previous = read_shards(out)
    if previous is None and (out / MODEL_FILE).exists():
        previous = json.loads((out / MODEL_FILE).read_text())
    if previous is not None and previous["sha256"] != identity["sha256"]:
        raise ValueError(f"{out} holds features of another model ({previous['path']}); choose another folder")
    write_text_atomic(out / MODEL_FILE, json.dumps(identity, indent=1, default=str))
    done_ids = {item["id"] for item in done}
    skipped_path = out / SKIPPED
    skipped_ids = set()
    if skipped_path.exists():
        for line in skipped_path.read_text().splitlines():
            try:
                skipped_ids.add(json.loads(line)["id"])
            except (ValueError, KeyError):
                continue  # a line cut by a kill
    todo, seen, duplicates = [], set(), []
    for item_id, path in media:
        if item_id in seen:
            duplicates.append(item_id)
            continue
        seen.add(item_id)
        if item_id not in done_ids and item_id not in skipped_ids:
            todo.append((item_id, path))
    if duplicates:
        log.warning("%d duplicate id(s) dropped (each is extracted once), e.g. %s", len(duplicates),
                    printable_path(duplicates[0]))
    n_shard = len(list(out.glob("shard_*.pt")))
    pending: list[dict[str, Any]] = []
    counts = {"done_before": len(done_ids), "skipped_before": len(skipped_ids), "extracted": 0, "skipped": 0,
              "duplicates": len(duplicates)}

    def flush() -> None:
        nonlocal n_shard, pending
        if pending:
            save_checkpoint(out / f"shard_{n_shard:05d}.pt", {"format": FEATURES_FORMAT, "model": identity, "items": pending})
            n_shard += 1
            pending = []

    drop_cut_last_line(skipped_path, "its file is tried again")
    with open(skipped_path, "a", encoding="utf-8") as skipped_file:
        for item_id, path in tqdm(todo, desc="features", unit="file", disable=not progress):
            try:
                pending.append(_item(model, item_id, path, audio_type))
                counts["extracted"] += 1
            except MediaError as err:
                skipped_file.write(json.dumps({"id": item_id, "path": str(path), "reason": str(err)}) + "\n")
                skipped_file.flush()
                counts["skipped"] += 1
                log.warning("skipped %s: %s", printable_path(path), printable_path(str(err)))
            except Exception:
                flush()  # what was extracted before this file is kept; a rerun continues here
                log.error("stopped at %s (%d rows before it are saved in %s)", printable_path(path),
                          counts["extracted"], out)
                raise
            if len(pending) == shard_size:
                flush()
        flush()
    return counts
