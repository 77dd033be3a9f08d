"""Your own media: a manifest (``.csv``, ``.tsv`` or ``.jsonl``) of media paths and captions.

One row names a media file and what is known about it; the default column names (renamed with
``data.manifest.columns``, e.g. ``{video: filepath, caption: title}`` for an open_clip CSV):

- ``video`` (required): a video (with or without sound) or a sound file alone (``.wav``, ``.flac``,
  ...; such a clip has no frames, like AudioCaps read from its sound files);
- ``caption``: one caption per row; rows naming the same file and window are one clip with all
  their captions (JSONL may also give a list of captions in one row). Optional for pre-training:
  a row with an empty caption (or a manifest without the column) is a media-only clip, trained on
  by the video-audio and intra-modal losses only (``has_text`` of the sample). Retrieval and
  captioning refuse such a row (an ``AnnotationError`` naming file, line and column, when the
  split is read); classification reads the label column instead;
- ``start``, ``end`` (seconds, optional): a window of a long file; other windows are other clips;
- ``audio`` (optional): a separate sound file for the clip;
- ``split`` (optional): the split of the row; without the column every file is put in a split by a
  hash of its path (``split_fractions``), so all windows of a file share a split and adding rows
  never moves a file to another split;
- ``label`` (optional): a class name (classes are numbered in sorted order of their names);
- ``audio_type`` (optional): ``vb``, ``nb`` or ``auto`` per row (default: ``data.manifest.audio_type``);
  ``auto``: the speech detector (``clip4vla.audio.speech``, as ``embed_audio(audio_type="auto")``)
  picks ``vb`` or ``nb`` from the clip's decoded sound, the same on every visit.

Media paths are relative to ``root`` (default: the manifest's own folder); absolute paths are kept.

Every row is checked at start-up, before any work: a malformed row is an ``AnnotationError``
naming file, line and column; missing media files are counted and listed (``missing: error`` stops,
``skip`` drops their rows). The table is held as compact arrays (``ManifestTable``): a
million-row manifest costs ~100 bytes per row, most of it the caption text, not a Python object
per row; a ``ClipRecord`` is built when a sample is read.

A clip's ``video_id`` is its media path relative to ``root`` without the extension (plus
``@start-end`` for a window). Prepared media (``data.media: prepared``,
``data.manifest.prepared_dir``) are named after the file's stem, as ``scripts/prepare_data.py
--videos ROOT --out DIR`` writes them (it refuses two files with one stem). WebDataset shards
(``data.media: shards``, ``data.manifest.shards_dir``) hold each file once under its id, as
``scripts/prepare_data.py --manifest PATH --out DIR --shards`` writes them
(``manifest_shard_files``), with its clips' ids, windows and captions in the file's JSON member;
a window's record names its file in ``media_id``. Training still takes captions and windows from
the manifest: the copy in the shards is for other WebDataset readers.
"""

from __future__ import annotations

import array
import csv
import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from clip4vla.data.readers._common import format_seconds
from clip4vla.data.records import AUDIO_EXTENSIONS, RECORD_AUDIO_TYPES, VIDEO_EXTENSIONS, AnnotationError, ClipRecord
from clip4vla.data.span_table import _LazyRecords, _strings

__all__ = ["COLUMNS", "EmptySplitError", "ManifestRecords", "ManifestTable", "manifest_shard_files", "read_manifest",
           "read_manifest_split", "write_manifest_csv"]

log = logging.getLogger(__name__)

COLUMNS = ("video", "caption", "start", "end", "audio", "split", "label", "audio_type")
REQUIRED = ("video",)  # "caption" too for every purpose but pre-training and classification (read_manifest_split)
# purposes that read no caption: a pre-training row without one is a media-only clip (video-audio
# and intra-modal losses only); the probes and zero-shot classification read the label column
CAPTION_OPTIONAL = ("pretrain", "classification")
HASH_SPLITS = ("train", "val", "test")  # the splits split_fractions fill, in order
MISSING_SHOWN = 5  # missing media named in a message; the full list goes to a file
_CHUNK = 1 << 16  # rows turned into Python objects at a time by the start-up lists (not a million ints at once)


class EmptySplitError(ValueError):
    """A split of the manifest has no usable row (tools that visit every split skip it)."""


class _Rows:
    """Per-row columns while a manifest is parsed: typed arrays (8 bytes a number, not a Python
    object) and the captions as one UTF-8 blob, so a million rows never exist as objects."""

    def __init__(self) -> None:
        self.media = array.array("i")
        self.start = array.array("d")
        self.end = array.array("d")
        self.audio = array.array("i")
        self.split = array.array("h")
        self.label = array.array("i")
        self.audio_type = array.array("b")
        self.caption_hash = array.array("q")  # for finding duplicated rows without the texts
        self.caption_bytes = bytearray()  # one caption per row (JSONL lists are unrolled into rows)
        self.caption_offsets = array.array("q", [0])  # row r is caption_bytes[offsets[r]:offsets[r + 1]]
        self.line = array.array("q")
        self.file = array.array("i")

    def caption(self, row: int) -> str:
        return self.caption_bytes[self.caption_offsets[row]:self.caption_offsets[row + 1]].decode("utf-8")


class ManifestTable:
    """A parsed manifest: clips as compact arrays (module docstring); ``records`` gives views."""

    def __init__(self, arrays: dict[str, np.ndarray], split_names: list[str], class_names: list[str],
                 files: list[Path]) -> None:
        self.arrays = arrays
        self.split_names = split_names
        self.class_names = class_names
        self.files = files  # the manifest files, for messages

    @property
    def num_clips(self) -> int:
        return len(self.arrays["media"])

    def split_counts(self) -> dict[str, int]:
        counts = np.bincount(self.arrays["split"], minlength=len(self.split_names))
        return {name: int(n) for name, n in zip(self.split_names, counts)}

    def media_files(self) -> list[tuple[str, Path]]:
        """``(media id, path)`` of every file of the ``video`` column, once each, in order of use."""
        a = self.arrays
        used = np.unique(a["media"])
        return [(_strings(a["media_id_bytes"], a["media_id_offsets"], m, m + 1)[0],
                 Path(_strings(a["path_bytes"], a["path_offsets"], m, m + 1)[0])) for m in used.tolist()]

    def records(self, split: str, unfold: bool, prepared_dir: str | os.PathLike | None = None) -> ManifestRecords:
        """The clips of ``split`` (one record per clip, or per caption when ``unfold``)."""
        clips = np.flatnonzero(self.arrays["split"] == self.split_names.index(split)) \
            if split in self.split_names else np.zeros(0, dtype=np.int64)
        return ManifestRecords(self, clips, unfold, prepared_dir)


class ManifestRecords(_LazyRecords):
    """``ClipRecord``s of some clips of a ``ManifestTable``, built on access."""

    unit = "record"

    def __init__(self, table: ManifestTable, clips: np.ndarray, unfold: bool,
                 prepared_dir: str | os.PathLike | None = None) -> None:
        self.table = table
        self.prepared_dir = None if prepared_dir is None else Path(prepared_dir)
        a = table.arrays
        if unfold:  # one row per (clip, caption): the clip of each row and its caption number
            index = _index_dtype(len(a["caption_rows"]))
            lo = a["caption_lo"][clips]
            counts = a["caption_hi"][clips] - lo
            self.clips = np.repeat(clips.astype(index), counts)
            first = np.cumsum(counts) - counts  # each clip's first row here
            self.caption = np.arange(len(self.clips), dtype=index)  # row i is caption lo + (i - first) of its clip
            self.caption += np.repeat((lo - first).astype(index), counts)
        else:
            self.clips, self.caption = clips, None
        self.source = "manifest"

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def class_names(self) -> list[str]:
        return self.table.class_names

    def _media_id(self, m: int) -> str:
        a = self.table.arrays
        return _strings(a["media_id_bytes"], a["media_id_offsets"], m, m + 1)[0]

    def _path(self, m: int) -> Path:
        a = self.table.arrays
        return Path(_strings(a["path_bytes"], a["path_offsets"], m, m + 1)[0])

    def _at(self, i: int) -> ClipRecord:
        a = self.table.arrays
        c = int(self.clips[i])
        m = int(a["media"][c])
        start, end = float(a["start"][c]), float(a["end"][c])
        windowed = not math.isnan(start)
        media_id = self._media_id(m)
        clip_id = _clip_id(media_id, start, end)
        ks = [int(self.caption[i])] if self.caption is not None else range(int(a["caption_lo"][c]), int(a["caption_hi"][c]))
        rows = [int(a["caption_rows"][k]) for k in ks]
        captions = tuple(_strings(a["caption_bytes"], a["caption_offsets"], r, r + 1)[0] for r in rows)
        path = self._path(m)
        sound_only = bool(a["sound_only"][m])
        fields: dict[str, Any] = {"video_path": None if sound_only else path,
                                  "audio_path": path if sound_only else None}
        audio = int(a["audio"][c])
        if audio >= 0:  # a separate sound file: read in both routes, as a paired clip's audio is
            fields["audio_path"], fields["audio_from"] = self._path(audio), self._media_id(audio)
        if self.prepared_dir is not None:  # named by file stem, as prepare_data.py --videos ROOT writes them
            stem = media_id.rsplit("/", 1)[-1]
            fields["frames_dir"] = None if sound_only else self.prepared_dir / "frames" / stem
            if audio < 0:
                fields["audio_path"] = self.prepared_dir / "audio" / f"{stem}.wav"
        label = int(a["label"][c])
        return ClipRecord(video_id=clip_id, captions=captions, audio_type=RECORD_AUDIO_TYPES[int(a["audio_type"][c])],
                          label=None if label < 0 else label, source="manifest",
                          start=start if windowed else None, end=end if windowed else None,
                          media_id=media_id if windowed else None, **fields)

    # Start-up helpers that read every training row: without building a record per row (~27 µs
    # each, ~20 s for a million rows).

    def video_ids(self) -> list[str]:
        """``record.video_id`` of every record, in order: one string per clip, shared by its records
        (the train split has a record per caption)."""
        a = self.table.arrays
        ids = _strings(a["media_id_bytes"], a["media_id_offsets"], 0, len(a["media_id_offsets"]) - 1)
        video_ids: list[str] = [""] * len(self.clips)  # one allocation, not a list grown a million times
        for lo in range(0, len(self.clips), _CHUNK):
            clips, clip_of_record = np.unique(self.clips[lo:lo + _CHUNK], return_inverse=True)
            per_clip = [_clip_id(ids[m], s, e) for m, s, e in
                        zip(a["media"][clips].tolist(), a["start"][clips].tolist(), a["end"][clips].tolist())]
            video_ids[lo:lo + _CHUNK] = map(per_clip.__getitem__, clip_of_record.tolist())
        return video_ids

    def all_captions(self) -> list[str]:
        """Every caption of every record, in order (``[c for r in records for c in r.captions]``)."""
        a = self.table.arrays
        if self.caption is not None:
            k = self.caption
        else:
            lo, hi = a["caption_lo"][self.clips], a["caption_hi"][self.clips]
            counts = hi - lo
            k = np.repeat(lo, counts) + (np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts))
        rows = a["caption_rows"][k]
        blob, offsets = memoryview(a["caption_bytes"]), a["caption_offsets"]  # no copy of the blob
        captions: list[str] = [""] * len(rows)  # one allocation, not a list grown a million times
        for lo in range(0, len(rows), _CHUNK):
            part = rows[lo:lo + _CHUNK]
            captions[lo:lo + _CHUNK] = [str(blob[s:e], "utf-8")
                                        for s, e in zip(offsets[part].tolist(), offsets[part + 1].tolist())]
        return captions

    def media_records(self) -> list[ClipRecord]:
        """What the start-up media check looks at: one record stands for all, because the reader
        already found every file (one directory scan per folder, ``missing: error | skip``) and a
        check per clip would stat a million files again."""
        return [self[0]] if len(self) else []


def manifest_shard_files(table: ManifestTable) -> tuple[dict[str, Path], dict[str, dict]]:
    """What ``prepare_data.py --manifest PATH --shards`` writes: ``{file id: path}`` of every file
    the clips name (``video`` and ``audio`` columns, each once, under the id the records use), and
    per ``video`` file ``{"clips": [{"id", "start", "end", "captions"}, ...]}`` for its JSON member."""
    a = table.arrays
    records = ManifestRecords(table, np.arange(table.num_clips), unfold=False)
    used = np.unique(np.concatenate([a["media"], a["audio"][a["audio"] >= 0]]).astype(np.int64))
    files = {records._media_id(m): records._path(m) for m in used.tolist()}
    meta: dict[str, dict] = {}
    for record in records:
        clip = {"id": record.video_id, "start": record.start, "end": record.end, "captions": list(record.captions)}
        meta.setdefault(record.media_id or record.video_id, {"clips": []})["clips"].append(clip)
    return files, meta


def _clip_id(media_id: str, start: float, end: float) -> str:
    """A clip's id: its file's id, plus ``@start-end`` for a window."""
    return media_id if math.isnan(start) else f"{media_id}@{format_seconds(start)}-{format_seconds(end)}"


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl"):
        raise ValueError(f"data.manifest.path {path}: a manifest is a .csv, .tsv or .jsonl file, not {suffix or 'no suffix'!r}")
    return suffix[1:]


def _lines(path: Path, handle: Any, counter: list[int]) -> Iterator[str]:
    """Physical lines of a binary file as text, counted; a byte that is not UTF-8 names its line
    (decoded line by line: a text stream decodes ahead in blocks and would name the wrong line)."""
    for raw in handle:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise AnnotationError(path, f"not UTF-8 text ({err.reason} at byte {err.start + 1} of the line); save "
                                  "the manifest as UTF-8", line=counter[0] + 1) from None
        if counter[0] == 0 and text.startswith("\ufeff"):
            text = text[1:]  # a byte-order mark
        counter[0] += 1
        yield text


def _table_rows(path: Path, fmt: str, wanted: Mapping[str, str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, {column: value})`` of a CSV / TSV / JSONL manifest, columns renamed to our names."""
    counter = [0]
    with open(path, "rb") as handle:
        lines = _lines(path, handle, counter)
        if fmt == "jsonl":
            for text in lines:
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as err:
                    cut = "" if text.endswith("\n") else " (the file ends inside this line: was it cut off?)"
                    raise AnnotationError(path, f"invalid JSON ({err.msg}, column {err.colno}){cut}",
                                          line=counter[0]) from None
                if not isinstance(row, dict):
                    raise AnnotationError(path, "each line must be one JSON object", line=counter[0])
                missing = [wanted[ours] for ours in REQUIRED if wanted[ours] not in row]
                if missing:
                    raise AnnotationError(path, f"missing column (this row has {sorted(row)})", line=counter[0],
                                          field=missing[0])
                yield counter[0], {ours: row[theirs] for ours, theirs in wanted.items() if theirs in row}
            return
        if fmt == "tsv":
            reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
        else:
            reader = csv.reader(lines, strict=True)
        try:
            header = next(reader, None)
            while header is not None and not any(h.strip() for h in header):
                header = next(reader, None)
        except csv.Error as err:
            raise AnnotationError(path, f"malformed header ({err})", line=counter[0]) from None
        if header is None:
            raise AnnotationError(path, "empty file, no header line", line=1)
        header_line = counter[0]
        columns = [h.strip() for h in header]
        index = {name: i for i, name in enumerate(columns)}
        for ours in REQUIRED:
            if wanted[ours] not in index:
                raise AnnotationError(path, f"missing column (the header has {columns})", line=header_line,
                                      field=wanted[ours])
        picks = [(ours, index[theirs]) for ours, theirs in wanted.items() if theirs in index]
        row_start = header_line
        try:
            for values in reader:
                line, row_start = row_start + 1, counter[0]
                if not values or (len(values) == 1 and not values[0].strip()):
                    continue
                if len(values) != len(columns):
                    last = next(reader, None) is None
                    cut = " (the file ends inside this row: was it cut off?)" \
                        if last and not _ends_with_newline(path) else ""
                    field = columns[len(values)] if len(values) < len(columns) else None
                    raise AnnotationError(path, f"expected {len(columns)} fields {columns}, found {len(values)}{cut}",
                                          line=line, field=field)
                yield line, {ours: values[i] for ours, i in picks}
        except csv.Error as err:
            raise AnnotationError(path, f"malformed {fmt.upper()} ({err}; the file may be cut off inside a quoted "
                                  "field)", line=row_start + 1) from None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) in (b"\n", b"\r")


def _time(value: Any, path: Path, field: str, line: int) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AnnotationError(path, f"not a number of seconds: {value!r}", line=line, field=field) from None
    if not math.isfinite(number) or number < 0:
        raise AnnotationError(path, f"must be a finite non-negative number of seconds, got {value!r}", line=line,
                              field=field)
    return number


def _hash_splits(media: _Media, edges: np.ndarray) -> np.ndarray:
    """Every file's split from its id alone (``edges``: the cumulative split fractions): stable when
    rows are added or reordered. The id's UTF-8 bytes, hashed, are a number u in [0, 1)."""
    ids, offsets = media.id_bytes, media.id_offsets
    digests = b"".join(hashlib.blake2b(ids[offsets[m]:offsets[m + 1]], digest_size=8).digest()
                       for m in range(len(media)))
    u = np.frombuffer(digests, dtype="<u8").astype(np.float64) / 2.0**64
    return np.minimum(np.searchsorted(edges, u, side="right"), len(edges) - 1).astype(np.int16)


class _Media:
    """Unique media paths of a manifest, in first-use order, with where each was first named.

    Held as UTF-8 blobs and typed arrays, as the rows are (``_Rows``): a manifest may name a new
    file every few rows, and a path string, an id string and a tuple per file cost several times
    the bytes of the paths themselves.
    """

    def __init__(self) -> None:
        self.index: dict[str, dict[str, int]] = {}  # root -> {path as written: media number}
        self.path_bytes = bytearray()  # normalised full paths, one after another
        self.path_offsets = array.array("q", [0])  # file m is path_bytes[path_offsets[m]:path_offsets[m + 1]]
        self.id_bytes = bytearray()  # media ids (module docstring), the same way
        self.id_offsets = array.array("q", [0])
        self.where_file = array.array("i")  # where each file was first named: manifest number,
        self.where_line = array.array("q")  # line
        self.where_field = array.array("b")  # and column (its number in fields)
        self.fields: list[str] = []
        self.climbing = 0  # paths that climb out of their root, and the first one (file, line, text)
        self.first_climbing: tuple[int, int, str] | None = None

    def __len__(self) -> int:
        return len(self.where_line)

    def path(self, m: int) -> str:
        return self.path_bytes[self.path_offsets[m]:self.path_offsets[m + 1]].decode("utf-8")

    def where(self, m: int) -> tuple[int, int, str]:
        """(manifest number, line, column) where file ``m`` was first named."""
        return self.where_file[m], self.where_line[m], self.fields[self.where_field[m]]

    def add(self, value: Any, root: Path, file_no: int, line: int, field: str, path: Path) -> int:
        if not isinstance(value, str) or not value.strip():
            raise AnnotationError(path, "empty media path", line=line, field=field)
        text = value.strip()
        known = self.index.get(str(root))
        if known is None:
            known = self.index[str(root)] = {}
        m = known.get(text)
        if m is not None:
            return m
        given = Path(text)
        full = given if given.is_absolute() else root / given
        normal = os.path.normpath(full)
        relative = os.path.relpath(normal, root)
        if relative.startswith(os.pardir + os.sep) or relative == os.pardir or given.is_absolute():
            if not given.is_absolute():
                self.climbing += 1
                self.first_climbing = self.first_climbing or (file_no, line, text)
            media_id = normal.lstrip(os.sep)  # outside root: the absolute path names it
        else:
            media_id = relative
        media_id = os.path.splitext(media_id)[0].replace(os.sep, "/")
        m = len(self)
        known[text] = m
        self.path_bytes += normal.encode("utf-8")
        self.path_offsets.append(len(self.path_bytes))
        self.id_bytes += media_id.encode("utf-8")
        self.id_offsets.append(len(self.id_bytes))
        if field not in self.fields:
            self.fields.append(field)
        self.where_file.append(file_no)
        self.where_line.append(line)
        self.where_field.append(self.fields.index(field))
        return m


def _read_file(path: Path, file_no: int, root: Path, wanted: Mapping[str, str], rows: _Rows, media: _Media,
               splits: dict[str, int], known_splits: Sequence[str] | None, classes: dict[str, int],
               audio_type: str) -> None:
    fmt = _format(path)
    for line, row in _table_rows(path, fmt, wanted):
        name = wanted
        m = media.add(row.get("video"), root, file_no, line, name["video"], path)
        start = _time(row.get("start"), path, name["start"], line)
        end = _time(row.get("end"), path, name["end"], line)
        if math.isnan(start) != math.isnan(end):
            missing = "end" if math.isnan(end) else "start"
            raise AnnotationError(path, f"a window needs both start and end; {missing} is empty", line=line,
                                  field=name[missing])
        if not math.isnan(start) and start >= end:
            raise AnnotationError(path, f"start {start:g} must be before end {end:g}", line=line, field=name["start"])
        audio = row.get("audio")
        a = media.add(audio, root, file_no, line, name["audio"], path) \
            if isinstance(audio, str) and audio.strip() else -1
        split = -1
        if "split" in row:
            value = str(row["split"]).strip()
            if known_splits is not None and value not in known_splits:
                raise AnnotationError(path, f"unknown split {value!r}; the splits are {list(known_splits)} (other "
                                      "names through data.train_split / val_split / test_split)", line=line,
                                      field=name["split"])
            split = splits.setdefault(value, len(splits))
        label = -1
        value = row.get("label")
        if value is not None and str(value).strip():
            label = classes.setdefault(str(value).strip(), len(classes))
        kind = row.get("audio_type")
        kind = audio_type if kind is None or not str(kind).strip() else str(kind).strip()
        if kind not in RECORD_AUDIO_TYPES:
            raise AnnotationError(path, f"audio type must be one of {list(RECORD_AUDIO_TYPES)}, got {kind!r}",
                                  line=line, field=name["audio_type"])
        captions = row.get("caption")
        if captions is None or captions == []:  # no caption: "" (a media-only row, where the purpose allows it)
            captions = ""
        for caption in captions if isinstance(captions, list) else [captions]:
            if not isinstance(caption, str):
                raise AnnotationError(path, f"a caption must be text, got {caption!r}", line=line,
                                      field=name["caption"])
            rows.media.append(m)
            rows.start.append(start)
            rows.end.append(end)
            rows.audio.append(a)
            rows.split.append(split)
            rows.label.append(label)
            rows.audio_type.append(RECORD_AUDIO_TYPES.index(kind))
            text = caption.strip()
            rows.caption_hash.append(hash(text))
            rows.caption_bytes += text.encode("utf-8")
            rows.caption_offsets.append(len(rows.caption_bytes))
            rows.line.append(line)
            rows.file.append(file_no)


def _check_media(media: _Media, files: list[Path], missing_mode: str, report_dir: Path | None) -> np.ndarray:
    """Classify every media file (video / sound) and find the missing ones: one directory scan per
    folder, not one ``stat`` per file. Returns ``sound_only`` per media; missing ones are -1."""
    by_dir: dict[str, dict[str, bool]] = {}
    kinds = np.zeros(len(media), dtype=np.int8)
    missing: list[int] = []
    for m in range(len(media)):
        full = media.path(m)
        folder, name = os.path.split(full)
        if folder not in by_dir:
            entries: dict[str, bool] = {}
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        entries[entry.name] = entry.is_dir()
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                pass
            by_dir[folder] = entries
        file_no, line, field = media.where(m)
        is_dir = by_dir[folder].get(name)
        if is_dir:
            raise AnnotationError(files[file_no], f"{full} is a directory, not a media file", line=line, field=field)
        ext = os.path.splitext(name)[1].lower()
        if ext in AUDIO_EXTENSIONS:
            kinds[m] = 1
        elif ext not in VIDEO_EXTENSIONS:
            raise AnnotationError(files[file_no], f"{full} is not a media file (extension {ext or 'none'!r}; videos: "
                                  f"{list(VIDEO_EXTENSIONS)}, sounds: {list(AUDIO_EXTENSIONS)})", line=line,
                                  field=field)
        if is_dir is None:
            missing.append(m)
    if missing:
        lines = [f"{media.path(m)}\t{files[media.where_file[m]]}:{media.where_line[m]}" for m in missing]
        folder = report_dir if report_dir is not None else Path(tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        listing = folder / "manifest_missing_media.txt"
        listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
        shown = "; ".join(lines[:MISSING_SHOWN]).replace("\t", " (named at ") + ")"
        text = (f"{len(missing)} of {len(media)} media files named by the manifest are missing, e.g. {shown}; "
                f"the full list is in {listing}")
        if missing_mode == "error":
            raise FileNotFoundError(text + " (data.manifest.missing: skip drops their rows instead)")
        log.warning("%s: their rows are skipped (data.manifest.missing: skip)", text)
        kinds[missing] = -1
    return kinds


def read_manifest(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    root: str | os.PathLike | None = None,
    columns: Mapping[str, str] | None = None,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    known_splits: Sequence[str] | None = None,
    audio_type: str = "vb",
    missing: str = "error",
    report_dir: str | os.PathLike | None = None,
) -> ManifestTable:
    """Parse and check one manifest (or several, concatenated) into a ``ManifestTable``.

    Args:
        paths: ``.csv`` / ``.tsv`` / ``.jsonl`` file(s).
        root: the folder relative media paths start from (default: each manifest's own folder).
        columns: our column name -> the file's (module docstring), for the names that differ.
        split_fractions: train / val / test shares of the hash split (no ``split`` column).
        known_splits: the split names a ``split`` column may use (None: any).
        audio_type: the type of rows without an ``audio_type`` value (``vb``, ``nb`` or ``auto``).
        missing: ``"error"`` or ``"skip"`` for media files that do not exist.
        report_dir: where the list of missing media is written (default: the temp folder).
    """
    files = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not files:
        raise ValueError("data.manifest.path names no file")
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise ValueError(f"data.manifest.columns: unknown column name(s) {unknown}; ours are {list(COLUMNS)}")
    wanted = {name: columns.get(name, name) for name in COLUMNS}
    rows, media = _Rows(), _Media()
    splits: dict[str, int] = {}
    classes: dict[str, int] = {}
    for file_no, path in enumerate(files):
        if not path.is_file():
            raise FileNotFoundError(f"manifest not found: {path}")
        base = Path(root) if root is not None else path.parent
        _read_file(path, file_no, Path(os.path.abspath(base)), wanted, rows, media, splits, known_splits, classes,
                   audio_type)
    if not rows.media:
        raise AnnotationError(files[0], "the manifest has no rows")
    if media.climbing:
        file_no, line, text = media.first_climbing
        log.warning("%d media paths climb out of their root folder (allowed), e.g. %s (%s line %d)",
                    media.climbing, text, files[file_no], line)
    media.index.clear()  # what only parsing needed: memory back before the checks and arrays below
    kinds = _check_media(media, files, missing, None if report_dir is None else Path(report_dir))

    # views of the parsed columns, not copies (a million rows are 4-8 MB a column)
    row_media = np.frombuffer(rows.media, dtype=np.int32)
    row_audio = np.frombuffer(rows.audio, dtype=np.int32)
    keep = kinds[row_media] >= 0
    keep &= (row_audio < 0) | (kinds[np.maximum(row_audio, 0)] >= 0)
    line = np.frombuffer(rows.line, dtype=np.int64)
    file_no = np.frombuffer(rows.file, dtype=np.int32)
    start = np.frombuffer(rows.start, dtype=np.float64)
    end = np.frombuffer(rows.end, dtype=np.float64)
    if not splits:  # the hash split, per file
        split = _hash_splits(media, np.cumsum(split_fractions))[row_media]
        splits = {name: i for i, name in enumerate(HASH_SPLITS)}
    else:
        split = np.frombuffer(rows.split, dtype=np.int16)
        unsplit = np.flatnonzero(split < 0)
        if len(unsplit):  # a JSONL row without "split", or a second manifest without the column
            i = int(unsplit[0])
            raise AnnotationError(files[int(file_no[i])], f"{len(unsplit)} rows have no split while others have one "
                                  f"(e.g. {_where(files, file_no, line, int(np.flatnonzero(split >= 0)[0]))}): give "
                                  "every row a split, or none (then files are split by a hash of their path)",
                                  line=int(line[i]), field=wanted["split"])
        _refuse_two_splits(row_media, split, line, file_no, files, splits, media)

    clip_of_row = _clip_of_row(row_media, start, end)
    _refuse_duplicates(clip_of_row, rows, line, file_no, files, wanted["caption"])
    label = np.frombuffer(rows.label, dtype=np.int32)
    _refuse_mixed_labels(clip_of_row, label, line, file_no, files, wanted["label"])

    counts = np.bincount(clip_of_row[keep])
    counts = counts[counts > 0]  # captions per clip, of the clips that keep a row
    # the kept rows grouped by clip, in file order within a clip: the others sort last and are cut off
    clip_of_row[~keep] = len(clip_of_row)
    by_clip = np.argsort(clip_of_row, kind="stable")[:int(counts.sum())].astype(_index_dtype(len(clip_of_row)))
    del keep, clip_of_row
    first = by_clip[np.cumsum(counts) - counts] if len(by_clip) else by_clip
    # class numbers in sorted order of the names (not in order of appearance)
    names = sorted(classes)
    relabel = np.full(len(classes) + 1, -1, dtype=np.int32)  # its last entry maps "no label" (-1) to -1
    for name, old in classes.items():
        relabel[old] = names.index(name)
    caption_hi = np.cumsum(counts).astype(np.int64)
    arrays = {
        "media": row_media[first].astype(np.int32),
        "start": start[first], "end": end[first],
        "audio": row_audio[first].astype(np.int32),
        "split": split[first].astype(np.int16),
        "label": relabel[label[first]],
        "audio_type": np.frombuffer(rows.audio_type, dtype=np.int8)[first],
        # clip c's captions are rows caption_rows[caption_lo[c]:caption_hi[c]] of the caption blob
        "caption_lo": caption_hi - counts, "caption_hi": caption_hi,
        "caption_rows": by_clip,
        "caption_bytes": np.frombuffer(rows.caption_bytes, dtype=np.uint8),
        "caption_offsets": np.frombuffer(rows.caption_offsets, dtype=np.int64),
        # where each caption row was read, for the error of a caption-less row read for a text task
        "caption_line": line, "caption_file": file_no,
        "path_bytes": np.frombuffer(media.path_bytes, dtype=np.uint8),
        "path_offsets": np.frombuffer(media.path_offsets, dtype=np.int64),
        "media_id_bytes": np.frombuffer(media.id_bytes, dtype=np.uint8),
        "media_id_offsets": np.frombuffer(media.id_offsets, dtype=np.int64),
        "sound_only": (kinds == 1),
    }
    split_names = [name for name, _ in sorted(splits.items(), key=lambda kv: kv[1])]
    return ManifestTable(arrays, split_names, names, files)


def _index_dtype(n: int) -> type:
    """The integer type of row and clip numbers below ``n``: half the memory of int64 for any real manifest."""
    return np.int32 if n < 2**31 else np.int64


def _clip_of_row(media: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The clip number of every row: one clip per (file, window), numbered in order of first
    appearance. A window-less row has NaN start and end (``nan != nan``: compared apart below)."""
    n = len(media)
    index = _index_dtype(n)
    columns = (media, start, end) if not np.isnan(start).all() else (media,)
    order = np.lexsort(columns[::-1])  # stable: rows of a clip keep their file order
    new = np.zeros(n, dtype=bool)  # a sorted row that starts a clip
    new[:1] = True
    for column in columns:
        ordered = column[order]
        differ = ordered[1:] != ordered[:-1]
        if column.dtype.kind == "f":
            differ &= ~(np.isnan(ordered[1:]) & np.isnan(ordered[:-1]))
        new[1:] |= differ
        del ordered, differ
    group = np.cumsum(new, dtype=index)  # 1 + clip number in sorted order, per sorted row
    group -= 1
    first_row = order[new]
    del new
    rank = np.empty(len(first_row), dtype=index)
    rank[np.argsort(first_row)] = np.arange(len(first_row), dtype=index)
    clip = np.empty(n, dtype=index)
    clip[order] = rank[group]
    return clip


def _where(files: list[Path], file_no: np.ndarray, line: np.ndarray, i: int) -> str:
    return f"{files[int(file_no[i])]} line {int(line[i])}"


def _refuse_duplicates(clip: np.ndarray, rows: _Rows, line: np.ndarray, file_no: np.ndarray,
                       files: list[Path], field: str) -> None:
    """The same caption twice for one clip would count it twice: an error naming both rows."""
    hashed = np.frombuffer(rows.caption_hash, dtype=np.int64)
    order = np.lexsort((hashed, clip))  # stable: equal rows keep their order
    ordered = clip[order]
    same = ordered[1:] == ordered[:-1]
    ordered = hashed[order]
    same &= ordered[1:] == ordered[:-1]
    del ordered
    for j in np.flatnonzero(same):
        a, b = int(order[j]), int(order[j + 1])
        if rows.caption(a) == rows.caption(b):
            first, second = sorted((a, b))
            raise AnnotationError(files[int(file_no[second])],
                                  f"duplicated row: the same file, window and caption as {_where(files, file_no, line, first)}",
                                  line=int(line[second]), field=field)


def _refuse_two_splits(media_of_row: np.ndarray, split: np.ndarray, line: np.ndarray, file_no: np.ndarray,
                       files: list[Path], splits: dict[str, int], media: _Media) -> None:
    """A file in two splits would leak training media into evaluation."""
    order = np.lexsort((np.arange(len(split)), media_of_row))
    m, s = media_of_row[order], split[order]
    clash = np.flatnonzero((m[1:] == m[:-1]) & (s[1:] != s[:-1]))
    if len(clash):
        j = int(clash[0])
        first = int(order[np.searchsorted(m, m[j])])
        second = int(order[j + 1])
        first, second = sorted((first, second))
        names = {v: k for k, v in splits.items()}
        raise AnnotationError(files[int(file_no[second])],
                              f"{media.path(int(media_of_row[second]))} is in split {names[int(split[second])]!r} here "
                              f"but in {names[int(split[first])]!r} on {_where(files, file_no, line, first)}: a file "
                              "belongs to one split", line=int(line[second]),
                              field="split")


def _refuse_mixed_labels(clip: np.ndarray, label: np.ndarray, line: np.ndarray, file_no: np.ndarray, files: list[Path],
                         label_field: str) -> None:
    """Rows of one clip must agree on its label."""
    order = np.argsort(clip, kind="stable")
    c, labels = clip[order], label[order]
    differ = np.flatnonzero((c[1:] == c[:-1]) & (labels[1:] != labels[:-1]))
    if len(differ):
        j = int(differ[0])
        a, b = sorted((int(order[j]), int(order[j + 1])))
        raise AnnotationError(files[int(file_no[b])], f"another label than {_where(files, file_no, line, a)} for the "
                              "same file and window", line=int(line[b]), field=label_field)


def write_manifest_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write rows (dicts with our column names) as a CSV manifest (RFC 4180 quoting), columns in our order."""
    path = Path(path)
    used = [c for c in COLUMNS if any(c in r and r[c] is not None for r in rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(used)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else r[c] for c in used])
    return path


_CACHE: dict[tuple, ManifestTable] = {}  # the last manifest read: its splits are read one after another


def _stamp(path: str) -> tuple:
    try:
        stat = os.stat(path)
    except OSError:
        return (path,)
    return (path, stat.st_mtime_ns, stat.st_size)


def manifest_table(section: Any, known_splits: Sequence[str] | None) -> ManifestTable:
    """The ``ManifestTable`` of a ``data.manifest`` section, parsed once per process while the files
    are unchanged (training reads three splits of it)."""
    paths = [section.path] if isinstance(section.path, str) else list(section.path)
    stamps = tuple(_stamp(p) for p in paths)
    key = (stamps, section.root, tuple(sorted(section.columns.items())), tuple(section.split_fractions),
           tuple(known_splits or ()), section.audio_type, section.missing, section.report_dir)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = read_manifest(paths, root=section.root, columns=section.columns,
                                    split_fractions=section.split_fractions, known_splits=known_splits,
                                    audio_type=section.audio_type, missing=section.missing,
                                    report_dir=section.report_dir)
    return _CACHE[key]


def _refuse_missing_captions(table: ManifestTable, clips: np.ndarray, section: Any) -> None:
    """A text task on a row without a caption: an error naming its file, line and column."""
    a = table.arrays
    if not (a["caption_offsets"][1:] == a["caption_offsets"][:-1]).any():
        return  # every row has a caption: no need to find the rows of these clips
    rows = a["caption_rows"]  # grouped by clip
    clip_of = np.repeat(np.arange(table.num_clips), a["caption_hi"] - a["caption_lo"])
    empty = rows[(a["caption_offsets"][rows + 1] == a["caption_offsets"][rows]) & np.isin(clip_of, clips)]
    if len(empty):
        first = int(empty.min())
        column = dict(section.columns).get("caption", "caption")
        raise AnnotationError(table.files[int(a["caption_file"][first])],
                              f"empty caption (an empty cell, or no {column!r} column: {len(empty)} rows of this "
                              "split have none; only pre-training and classification read rows without a caption)",
                              line=int(a["caption_line"][first]), field=column)


def read_manifest_split(section: Any, split: str, purpose: str, *, known_splits: Sequence[str] | None = None,
                        unfold_captions: bool | None = None) -> ManifestRecords:
    """The records of ``split`` of the manifest that ``data.manifest`` (``section``) names.

    Raises ``ValueError`` when the split has no usable row, and for classification when a row has no
    label.
    """
    table = manifest_table(section, known_splits)
    unfold = split == "train" if unfold_captions is None else bool(unfold_captions)
    records = table.records(split, unfold, section.prepared_dir)
    if len(records) == 0:
        counts = ", ".join(f"{k}: {v}" for k, v in table.split_counts().items())
        raise EmptySplitError(f"manifest {', '.join(map(str, table.files))}: split {split!r} has 0 usable rows "
                         f"(clips per split: {counts or 'none'})")
    if purpose not in CAPTION_OPTIONAL:
        _refuse_missing_captions(table, records.clips, section)
    if purpose == "classification":
        labels = table.arrays["label"][records.clips]
        if (labels < 0).any():
            raise ValueError(f"manifest {', '.join(map(str, table.files))}: classification needs a label for every "
                             f"clip; {int((labels < 0).sum())} clips of split {split!r} have none")
    return records
