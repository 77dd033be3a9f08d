"""Media in WebDataset tar shards: one file per ~1000 clips instead of ~13 files per clip.

**Layout** (``write_shards``, shard format 2). ``<out>/shard-000000.tar``, ... in the WebDataset
convention: the members of one clip share a key (``000000042``) and differ by extension, so any
WebDataset reader streams them as samples and decodes them with its own decoders
(``webdataset.WebDataset(url).decode("pil")`` gives one PIL image per frame):

* ``<key>.000.jpg``, ``<key>.001.jpg``, ...: the 1-fps JPEG frames in time order, one member per
  frame (zero-padded to one width per clip, at least 3 digits, so they sort in order), exactly
  the files the prepared route writes, so both routes give the same frames (and, with WAV audio
  and the prepared route's ``PCM_16`` wav, the very same samples; FLAC rounds where WAV
  truncates, so its samples are at most one 16-bit step away);
* ``<key>.json``: ``{"format": 2, "id", "source", "duration", "fps", "has_audio", "n_frames",
  "audio_seconds", "frame_seconds": [...], "frame_bytes": [...]}`` (+ ``"meta"`` given by the
  caller); ``frame_seconds[i]`` is the second of frame ``i``;
* ``<key>.wav`` (or ``<key>.flac``): the 16 kHz stereo audio track, 16-bit, absent for a clip
  without sound. WAV (default) needs no decoding, so a shard sample is read as fast as a prepared
  one; FLAC takes about half the space at some decoding cost (``audio_format``).

Format 1 (before) stored a clip's frames as one ``.frames`` member (JPEGs concatenated), which no
other reader could decode; such folders are refused with a message saying how to rewrite them.

HowTo100M spans and a manifest's windows are windows of a video: the video is stored once and every
window reads its part (a manifest's window names its file in ``ClipRecord.media_id``).

``shards.jsonl`` lists every finished shard with the byte offset and size of each clip's JSON and
audio members and the byte range of its frame members, so a clip is read with a few positioned
reads (the JSON, the frames a window needs, the audio range) and no scan. The index stays one row
of a few integers per clip whatever the number of frames: a frame's position follows from the
sizes in the clip's JSON (tar members are back to back: a 512-byte header, then the data padded to
512 bytes), and every read checks the member's tar header (its full name, key and extension, and
its size), so a shard edited after it was indexed (members reordered, renamed or lost) is reported
with the command that writes it again, never misread. ``manifest.jsonl`` has one line per source
file (``ok`` or ``error`` with the reason); unreadable or empty files are never written as samples.

**Why indexed reads, not a streaming pipeline.** Training order comes from the same seeded
sampler as the other media routes (``clip4vla.data.sampler``): ranks and DataLoader workers get
equal batches, a killed run resumes at the exact sample, and 2 ranks x B equal 1 rank x 2B. A
streaming reader with a shuffle buffer can only approximate that (a buffer mixes within a window of
the stream; resuming means replaying the stream). Each worker keeps its shards open, so a rank
opens each shard once per worker rather than one file per frame.

**Resumable writing.** Clips go to shards in sorted id order; a shard becomes visible (renamed
from its temporary name, then its line appended to ``shards.jsonl``) only when complete, so a
killed run loses at most the shard in progress, and a rerun skips every clip already in a finished
shard (or recorded as unreadable there). A last index line cut by a kill is removed before the
rerun appends (its shard is written again), and a new shard never takes a name the index mentions.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import multiprocessing as mp
import os
import re
import sys
import tarfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from clip4vla.audio import AudioDecodeError, NoAudioError, load_audio_file
from clip4vla.data.prepare import AUDIO_RATE, decode_media, find_videos
from clip4vla.files import drop_cut_last_line
from clip4vla.media_errors import MediaError
from clip4vla.video import VideoDecodeError
from clip4vla.video.decode import load_frame_images

__all__ = ["INDEX", "SHARD_FORMAT", "ShardError", "ShardFormatError", "ShardStore", "ShardSummary", "frame_member",
           "write_shards"]

log = logging.getLogger(__name__)

INDEX = "shards.jsonl"
MANIFEST = "manifest.jsonl"
SHARD_NAME = "shard-{:06d}.tar"
_TMP = ".tmp-"
SHARD_FORMAT = 2  # 1: one ".frames" member per clip (JPEGs concatenated); 2: one member per frame
REQUIRED_META = ("id", "frame_seconds", "frame_bytes", "has_audio")
MEMBERS = ("json", "frames", "audio")  # the store's columns: frames = the byte range of all frame members
FRAME_EXT = "jpg"
BLOCK = tarfile.BLOCKSIZE  # 512: a tar member is a header block, then its data padded to whole blocks
REWRITE = "python scripts/prepare_data.py --videos <the source videos> --out <new folder> --shards"


class ShardError(MediaError):
    """A shard, or a clip in it, cannot be read: the sample is skipped with this reason."""


class ShardFormatError(ValueError):
    """A shard folder written in a layout this version does not read (the message says how to
    rewrite it), or an index that is not one."""


def frame_member(index: int, count: int) -> str:
    """The member extension of frame ``index`` of a clip with ``count`` frames: ``000.jpg``, ...

    One width per clip (3 digits, more for clips of over 1000 frames), so a name sort is the time
    order for every reader."""
    return f"{index:0{max(3, len(str(count - 1)))}d}.{FRAME_EXT}"


def _frame_offsets(first: int, sizes: Sequence[int]) -> list[int]:
    """Data offsets of a clip's frame members, which the writer puts back to back: each is one
    header block, then its data padded to whole blocks (checked when a shard is closed)."""
    offsets, at = [], first
    for size in sizes:
        offsets.append(at)
        at += BLOCK + -(-size // BLOCK) * BLOCK
    return offsets


# ----------------------------------------------------------------------------------- writing


@dataclasses.dataclass
class ShardSummary:
    total: int  # source files found
    skipped: int  # already in a finished shard
    written: int  # clips written now
    failed: list[str]  # ids found unreadable now (reasons in the manifest)
    shards: int  # finished shards in the folder
    out_dir: Path


AUDIO_FORMATS = {"flac": "FLAC", "wav": "WAV"}


def _encode(job: tuple[str, str, int, str, dict]) -> dict:
    """Decode one source file into shard members (in a worker); an error record if unreadable."""
    video_id, path, quality, audio_format, meta = job
    try:
        info, frames, wave = decode_media(path, "jpg", quality)
        if not frames and wave is None:
            raise ValueError("neither frames nor sound")
        members: dict[str, bytes] = {frame_member(i, len(frames)): data for i, (_, data) in enumerate(frames)}
        if wave is not None:
            buffer = io.BytesIO()
            sf.write(buffer, wave, AUDIO_RATE, subtype="PCM_16", format=AUDIO_FORMATS[audio_format])
            members[audio_format] = buffer.getvalue()
        header = {"format": SHARD_FORMAT, "id": video_id, "source": path, **info, "frame_seconds": [s for s, _ in frames],
                  "frame_bytes": [len(d) for _, d in frames], **({"meta": meta} if meta else {})}
        members["json"] = json.dumps(header).encode()
        return {"id": video_id, "members": members}
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
        return {"id": video_id, "error": f"{type(exc).__name__}: {exc}"}


def _read_index(out: Path) -> list[dict]:
    """Finished shards. A last line cut by a kill (its shard has no line yet) is ignored; an
    unreadable line before it is skipped with a warning (its shard's clips are not indexed)."""
    path = out / INDEX
    if not path.exists():
        return []
    lines = []
    text = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for number, line in enumerate(text, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "shard" not in record:
                raise ValueError("not a shard record")
        except ValueError:
            if number < len(text):  # a complete line (the cut last one has no newline)
                log.warning("%s:%d: unreadable line skipped (the clips of the shard it listed are not indexed)",
                            path, number)
            continue
        lines.append(record)
    return lines


def _check_format(folder: Path, lines: list[dict]) -> None:
    """Refuse shards of another layout (module docstring), naming the folder and the way out."""
    old = sorted({line.get("format", 1) for line in lines if line.get("format", 1) != SHARD_FORMAT}, key=str)
    if old:
        raise ShardFormatError(
            f"{folder}: shards of format {old[0]} (one '.frames' member per clip, written by an earlier clip4vla); "
            f"this version reads format {SHARD_FORMAT} (one JPEG member per frame, which any WebDataset reader decodes). "
            f"Write them again into a new folder: {REWRITE}")


def _next_shard_number(out: Path) -> int:
    """One more than every shard number the index mentions, readable line or not: a new shard
    never overwrites a shard the index lists."""
    path = out / INDEX
    if not path.exists():
        return 0
    text = path.read_text(encoding="utf-8", errors="replace")
    return max((int(n) + 1 for n in re.findall(r"shard-(\d+)\.tar", text)), default=0)


def _member_offsets(tar_path: Path) -> dict[str, dict[str, list[int]]]:
    """key -> extension -> [byte offset of the data, size] of every member of a shard."""
    out: dict[str, dict[str, list[int]]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            out.setdefault(key, {})[ext] = [member.offset_data, member.size]
    return out


def _index_members(tar_name: str, key: str, members: dict[str, list[int]]) -> dict[str, list[int]]:
    """One clip's row of ``shards.jsonl``: ``json`` and the audio member (``wav`` or ``flac``) as
    ``[offset, size]``, ``frames`` as ``[offset of the first frame's data, bytes up to the end of
    the last]``; checks that the frame members lie back to back as ``_frame_offsets`` assumes."""
    row = {ext: where for ext, where in members.items() if not ext.endswith(f".{FRAME_EXT}")}
    frames = sorted(ext for ext in members if ext.endswith(f".{FRAME_EXT}"))
    if frames:
        offsets = [members[ext][0] for ext in frames]
        sizes = [members[ext][1] for ext in frames]
        named_in_order = frames == [frame_member(i, len(frames)) for i in range(len(frames))]
        if not named_in_order or offsets != _frame_offsets(offsets[0], sizes):
            raise RuntimeError(f"{tar_name}: the frame members of {key} are not consecutive tar members; "
                               "the shard cannot be indexed")
        row["frames"] = [offsets[0], offsets[-1] + sizes[-1] - offsets[0]]
    return row


def _append_line(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_shards(
    videos_dir: str | os.PathLike | Mapping[str, Path],
    out_dir: str | os.PathLike,
    shard_bytes: int = 1 << 30,
    workers: int = 2,
    quality: int = 95,
    meta: dict[str, dict] | None = None,
    progress: bool = True,
    audio_format: str = "wav",
) -> ShardSummary:
    """Write the media under ``videos_dir`` into WebDataset shards in ``out_dir`` (module docstring).

    ``videos_dir``: a folder (each file's id is its stem, ``find_videos``) or ``{id: path}`` (a
    manifest's files under the ids its clips name them by, ``manifest_shard_files``).

    ``shard_bytes``: a shard is closed once it holds this much. ``meta``: optional per-id
    metadata copied into each clip's JSON (annotations, ...). A folder of format-1 shards is
    refused (``ShardFormatError``): the two layouts are never mixed.
    """
    import webdataset as wds

    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio_format must be one of {sorted(AUDIO_FORMATS)}, got {audio_format!r}")
    out = Path(out_dir)
    videos = dict(videos_dir) if isinstance(videos_dir, Mapping) else find_videos(videos_dir)
    out.mkdir(parents=True, exist_ok=True)
    drop_cut_last_line(out / INDEX, "the clips of the shard it listed are written again")
    finished = _read_index(out)
    _check_format(out, finished)
    drop_cut_last_line(out / MANIFEST, "the next line starts a line of its own")
    for stale in out.glob(f"{_TMP}*"):
        stale.unlink()
    done = {vid for shard in finished for vid in shard["ids"]} | {vid for shard in finished for vid in shard["failed"]}
    todo = [vid for vid in sorted(videos) if vid not in done]
    jobs = [(vid, str(videos[vid]), quality, audio_format, (meta or {}).get(vid, {})) for vid in todo]
    summary = ShardSummary(total=len(videos), skipped=len(videos) - len(todo), written=0, failed=[],
                           shards=len(finished), out_dir=out)
    # keys number the written clips; after the last key any index mentions (as names, see below)
    next_key = max((int(key) + 1 for shard in finished for _, key, _ in shard["samples"]), default=0)
    next_number = _next_shard_number(out)

    state: dict[str, Any] = {"writer": None, "file": None, "tmp": None, "ids": [], "failed": {}}

    def open_shard() -> None:
        state["name"] = SHARD_NAME.format(next_number)
        state["tmp"] = out / f"{_TMP}{state['name']}"
        state["file"] = open(state["tmp"], "wb")
        state["writer"] = wds.TarWriter(state["file"], encoder=False, mtime=0)
        state["ids"], state["failed"] = [], {}

    def close_shard() -> None:
        nonlocal next_number
        if state["writer"] is None:
            return
        state["writer"].close()
        state["file"].close()
        name = state["name"]
        os.replace(state["tmp"], out / name)
        offsets = _member_offsets(out / name)
        samples = [[vid, key, _index_members(name, key, offsets[key])] for vid, key in state["ids"]]
        _append_line(out / INDEX, {"format": SHARD_FORMAT, "shard": name, "bytes": (out / name).stat().st_size,
                                   "ids": [vid for vid, _ in state["ids"]], "failed": state["failed"],
                                   "samples": samples})
        summary.shards += 1
        next_number += 1
        state["writer"] = None

    def consume(result: dict, manifest) -> None:
        nonlocal next_key
        if state["writer"] is None:
            open_shard()
        if "error" in result:
            state["failed"][result["id"]] = result["error"]
            summary.failed.append(result["id"])
            log.warning("%s: %s", result["id"], result["error"])
            manifest.write(json.dumps({"video_id": result["id"], "status": "error", "error": result["error"]}) + "\n")
        else:
            key = f"{next_key:09d}"
            next_key += 1
            state["writer"].write({"__key__": key, **result["members"]})
            state["ids"].append((result["id"], key))
            summary.written += 1
            manifest.write(json.dumps({"video_id": result["id"], "status": "ok", "key": key}) + "\n")
        if state["file"].tell() >= shard_bytes:
            manifest.flush()
            close_shard()

    with open(out / MANIFEST, "a", encoding="utf-8") as manifest:
        bar = tqdm(total=len(jobs), desc="shards", unit="clip", disable=not progress)
        if workers > 1 and len(jobs) > 1:
            ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context("spawn")
            with ctx.Pool(min(workers, len(jobs)), initializer=_single_thread) as pool:
                for result in pool.imap(_encode, jobs):  # in order: shard contents do not depend on timing
                    consume(result, manifest)
                    bar.update()
        else:
            for job in jobs:
                consume(_encode(job), manifest)
                bar.update()
        close_shard()
        bar.close()
    return summary


def _single_thread() -> None:
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------- reading


class _ShardFile:
    """An open shard, read by positioned reads only (no buffered file object); closed when the
    last reference goes, e.g. when a forked DataLoader worker drops the handles it inherited."""

    def __init__(self, path: Path) -> None:
        self.fd = -1
        self.fd = os.open(path, os.O_RDONLY)

    def fileno(self) -> int:
        return self.fd

    def __del__(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class _Member(io.RawIOBase):
    """A read-only file view of ``size`` bytes at ``offset`` of an open shard (for soundfile)."""

    def __init__(self, fh: _ShardFile, offset: int, size: int) -> None:
        self.fh, self.offset, self.size, self.pos = fh, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, min(self.size, base + pos))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.pos)
        if n <= 0:
            return 0
        data = os.pread(self.fh.fileno(), n, self.offset + self.pos)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


_STORES: dict[tuple, "ShardStore"] = {}


class ShardStore:
    """Reads clips' frames and audio from the shards of one or more folders, by clip id.

    Opened at start-up (a missing folder or index fails there); shard files are opened lazily in
    each process that reads (DataLoader workers included) and kept open.
    """

    def __init__(self, folders: Sequence[str | os.PathLike]) -> None:
        # A compact index, not a dict per clip: ids sorted as fixed-width bytes (binary search),
        # then per clip its shard and [offset, size] of each member (-1: absent). ~100 bytes per
        # clip, so AudioSet + HowTo100M's 3.2 M videos cost ~0.3 GB per rank, not ~2 GB of dicts.
        self.paths: list[Path] = []
        sizes: list[int] = []
        ids: list[np.ndarray] = []
        keys: list[np.ndarray] = []  # each clip's member key, checked against the tar headers on read
        rows: list[np.ndarray] = []
        for folder in folders:
            folder = Path(folder)
            if not (folder / INDEX).is_file():
                raise FileNotFoundError(f"{folder}: no {INDEX}: not a shard folder (write one with "
                                        "`python scripts/prepare_data.py --videos DIR --out DIR --shards`)")
            lines = _read_index(folder)
            _check_format(folder, lines)
            for shard in lines:
                self.paths.append(folder / shard["shard"])
                sizes.append(int(shard["bytes"]))
                table = np.full((len(shard["samples"]), 1 + 2 * len(MEMBERS)), -1, dtype=np.int64)
                table[:, 0] = len(self.paths) - 1
                for j, (_, _, members) in enumerate(shard["samples"]):
                    for m, column in enumerate(MEMBERS):
                        where = (members.get("wav") or members.get("flac")) if column == "audio" else members.get(column)
                        if where is not None:
                            table[j, 1 + 2 * m: 3 + 2 * m] = where
                ids.append(np.array([_id_bytes(vid) for vid, _, _ in shard["samples"]], dtype=object))
                keys.append(np.array([str(key).encode("utf-8") for _, key, _ in shard["samples"]], dtype=object))
                rows.append(table)
        all_ids = np.concatenate(ids).astype(bytes) if ids else np.zeros(0, dtype="S1")
        order = np.argsort(all_ids, kind="stable")
        self.ids = all_ids[order]
        self.keys = np.concatenate(keys).astype(bytes)[order] if keys else np.zeros(0, dtype="S1")
        self.table = np.concatenate(rows)[order] if rows else np.zeros((0, 1 + 2 * len(MEMBERS)), dtype=np.int64)
        twice = np.flatnonzero(self.ids[1:] == self.ids[:-1])
        if len(twice):
            vid = self.ids[twice[0]].decode("utf-8", "surrogateescape")
            shards = sorted({str(self.paths[int(r[0])]) for r in self.table[twice[0]:twice[0] + 2]})
            raise ValueError(f"clip {vid!r} is in two shards: {shards}")
        self.sizes = sizes
        self._open: dict[int, Any] = {}
        self._pid = os.getpid()

    def _row(self, video_id: str) -> int | None:
        key = _id_bytes(video_id)
        i = int(np.searchsorted(self.ids, key))
        return i if i < len(self.ids) and self.ids[i] == key else None

    @classmethod
    def shared(cls, folders: Sequence[str | os.PathLike]) -> ShardStore:
        """One store per set of folders in a process (train, validation and test share it)."""
        stamps = []
        for f in folders:
            index = Path(f) / INDEX
            st = index.stat() if index.is_file() else None
            stamps.append((str(Path(f).resolve()), st and (st.st_size, st.st_mtime_ns)))
        key = tuple(stamps)
        if key not in _STORES:
            _STORES[key] = cls(folders)
        return _STORES[key]

    def __contains__(self, video_id: str) -> bool:
        return self._row(video_id) is not None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = {}  # file handles do not cross process boundaries
        return state

    def _file(self, shard: int) -> _ShardFile:
        if os.getpid() != self._pid:  # a forked worker: its own handles
            self._open, self._pid = {}, os.getpid()
        if shard not in self._open:
            path = self.paths[shard]
            try:
                self._open[shard] = _ShardFile(path)
            except OSError as err:
                raise ShardError(f"{path}: cannot open the shard ({err.strerror or err})") from err
        return self._open[shard]

    def _member(self, video_id: str, ext: str) -> tuple[_Member, str] | None:
        row = self._row(video_id)
        if row is None:
            raise ShardError(f"clip {video_id!r} is in no shard of this store")
        shard = int(self.table[row, 0])
        m = MEMBERS.index(ext)
        offset, size = (int(v) for v in self.table[row, 1 + 2 * m: 3 + 2 * m])
        if offset < 0:
            return None
        name = f"{self.paths[shard]}@{offset} ({video_id}.{ext})"
        if offset + size > self.sizes[shard] or offset + size > os.fstat(self._file(shard).fileno()).st_size:
            raise ShardError(f"{name}: the shard ends before this member (truncated shard?)")
        if ext != "frames":  # frame members are checked one by one as they are read (frames())
            key = self.keys[row].decode("utf-8")
            expected = [f"{key}.json"] if ext == "json" else [f"{key}.wav", f"{key}.flac"]
            _check_header(_header_block(self._file(shard).fileno(), offset), expected, size, name)
        return _Member(self._file(shard), offset, size), name

    def _meta(self, video_id: str) -> dict:
        found = self._member(video_id, "json")
        if found is None:
            raise ShardError(f"clip {video_id!r} has no JSON member")
        member, name = found
        try:
            meta = json.loads(member.read())
        except (ValueError, UnicodeDecodeError) as err:
            raise ShardError(f"{name}: unreadable JSON ({err})") from err
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise ShardError(f"{name}: JSON lacks {missing}")
        return meta

    def frames(self, video_id: str, max_frames: int = 12, size: int = 224, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``load_prepared_frames`` over the clip's frame members (same choice, same tensors);
        a clip stored without frames (a sound file) gets empty ones, as the other routes give."""
        meta = self._meta(video_id)
        found = self._member(video_id, "frames")
        if found is None:
            return torch.zeros(max_frames, 3, size, size), torch.zeros(max_frames, dtype=torch.bool)
        seconds, sizes = meta["frame_seconds"], meta["frame_bytes"]
        if not seconds:
            raise VideoDecodeError(f"clip {video_id!r}: its JSON lists no frames")
        member, name = found
        offsets = _frame_offsets(member.offset, sizes) if len(sizes) == len(seconds) else []
        if not offsets or offsets[-1] + sizes[-1] - member.offset != member.size:
            raise ShardError(f"{name}: the JSON's {len(sizes)} frame sizes do not match the shard's frame members "
                             f"({member.size} bytes): the shard and its index disagree: rewrite it with `{REWRITE}`")
        fd = member.fh.fileno()
        row = self._row(video_id)
        shard, key = self.paths[int(self.table[row, 0])], self.keys[row].decode("utf-8")

        def image(i: int) -> Any:
            def read() -> io.BytesIO:
                # the header block too: one read, and a check that this is the member the index means
                data = os.pread(fd, BLOCK + sizes[i], offsets[i] - BLOCK) if offsets[i] >= BLOCK else b""
                _check_header(data[:BLOCK], [f"{key}.{frame_member(i, len(sizes))}"], sizes[i],
                              f"{shard}@{offsets[i]} ({video_id} frame {i})")
                if len(data) != BLOCK + sizes[i]:
                    raise ShardError(f"{shard}@{offsets[i]} ({video_id} frame {i}): the shard ends before this member "
                                     "(truncated shard?)")
                return io.BytesIO(data[BLOCK:])
            return read

        images = {int(s): image(i) for i, s in enumerate(seconds)}
        return load_frame_images(images, name, max_frames=max_frames, size=size, **kwargs)

    def audio(self, video_id: str, start: float | None, end: float | None, max_seconds: float | None) -> torch.Tensor:
        """``load_audio`` over the clip's audio member; ``NoAudioError`` for a clip without sound."""
        found = self._member(video_id, "audio")  # the audio member, FLAC or WAV
        if found is None:
            raise NoAudioError(f"clip {video_id!r} has no sound (no audio member in its shard)")
        member, name = found
        try:
            return load_audio_file(member, name, start=start, end=end, max_seconds=max_seconds)
        except (AudioDecodeError, NoAudioError):
            raise
        except (OSError, RuntimeError) as err:
            raise ShardError(f"{name}: {err}") from err


def _id_bytes(video_id: str) -> bytes:
    """A clip id as the store keeps it: a file name that is not UTF-8 (Python carries its bytes as
    lone surrogates) maps back to those bytes, as the file system gave them."""
    return video_id.encode("utf-8", "surrogateescape")


def _header_block(fd: int, offset: int) -> bytes:
    """The tar header block before the member data at ``offset`` (empty if there is no room for one)."""
    return os.pread(fd, BLOCK, offset - BLOCK) if offset >= BLOCK else b""


def _check_header(block: bytes, expected: Sequence[str], size: int, name: str) -> None:
    """Whether the tar header block before a member's data names one of ``expected`` (key and
    extension) with ``size`` bytes: a shard edited after it was indexed fails here, never misread."""
    try:
        header = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        found = f"{header.name!r} of {header.size} bytes"
    except tarfile.HeaderError as err:
        header, found = None, f"no tar header ({err})"
    if header is None or header.name not in expected or header.size != size:
        raise ShardError(f"{name}: the shard and its index disagree: rewrite it with `{REWRITE}` (the index expects "
                         f"member {' or '.join(expected)} of {size} bytes here, the shard has {found})")


def iter_samples(folder: str | os.PathLike) -> Iterator[dict]:
    """Every clip of a shard folder as ``{"__key__", "json", "000.jpg", ..., "flac" or "wav"}`` bytes,
    read by the ``webdataset`` library itself (the shards are plain WebDataset tars)."""
    import webdataset as wds

    urls = [str(Path(folder) / shard["shard"]) for shard in _read_index(Path(folder))]
    yield from wds.WebDataset(urls, shardshuffle=False)
