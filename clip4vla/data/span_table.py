"""HowTo100M windows as compact arrays: memory that does not grow with Python objects per span.

The full corpus has ~136 M transcript spans. One ``ClipRecord`` per span is ~1 KB of Python
objects, ~100 GB per rank before the first step. A ``SpanTable`` holds the same windows in a few
flat arrays (``ARRAYS``: ~25 bytes per window plus the transcript text once) and builds a
``ClipRecord`` only when a sample is read, so the dataset, the sampler and the media check never
touch a per-span object.

Saved (``save``) as one ``.npy`` file per array plus ``meta.json``; ``load`` memory-maps them, so
start-up is instant and the pages are shared by every rank on a node (the operating system keeps
one copy). ``scripts/prepare_data.py --howto100m-index`` builds the folder once from
``caption.json`` (streamed, never loaded whole) or ``caption.pickle``; ``data.howto100m.
caption_path`` may then name the folder.
"""

from __future__ import annotations

import collections.abc
import json
import mmap
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from clip4vla.data.records import ClipRecord, MediaLayout

__all__ = ["ARRAYS", "ConcatRecords", "SpanTable", "SpanTableBuilder", "SpanTableWriter", "concat_records",
           "media_representatives", "record_sources"]

FORMAT = "clip4vla-howto100m-spans"
VERSION = 1
# window -> video, its time span, the transcript lines it joins; texts and video ids as UTF-8 blobs
ARRAYS = {
    "video": np.int32, "start": np.float32, "end": np.float32, "text_lo": np.int32, "text_hi": np.int32,
    "text_offsets": np.int64, "text_bytes": np.uint8, "video_offsets": np.int64, "video_bytes": np.uint8,
}


def _strings(blob: np.ndarray, offsets: np.ndarray, lo: int, hi: int) -> list[str]:
    """Strings ``lo..hi-1`` of a UTF-8 blob (one slice, decoded once)."""
    start, end = int(offsets[lo]), int(offsets[hi])
    data = blob[start:end].tobytes()
    cuts = (offsets[lo:hi + 1] - start).tolist()
    return [data[a:b].decode("utf-8") for a, b in zip(cuts[:-1], cuts[1:])]


class _LazyRecords(collections.abc.Sequence):
    """What the record views share: a record is built on access, by position; slices and negative
    indices work as on a list."""

    unit = "record"  # names an index in messages

    def _at(self, i: int) -> ClipRecord:
        """The record at position ``0 <= i < len(self)``."""
        raise NotImplementedError

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self._at(i) for i in range(*index.indices(len(self)))]
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"{self.unit} {index} out of range for {len(self)} {self.unit}s")
        return self._at(i)


class SpanTable(_LazyRecords):
    """A sequence of HowTo100M ``ClipRecord``s backed by compact arrays (module docstring).

    ``rows`` (optional) selects windows of the arrays, e.g. for ``video_ids``.
    """

    def __init__(self, arrays: dict[str, np.ndarray], layout: MediaLayout, audio_type: str = "vb",
                 rows: np.ndarray | None = None) -> None:
        missing = set(ARRAYS) - set(arrays)
        if missing:
            raise ValueError(f"span table lacks arrays {sorted(missing)}")
        self.arrays = arrays
        self.layout = layout
        self.audio_type = audio_type
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.arrays["video"])

    @property
    def num_videos(self) -> int:
        return len(self.arrays["video_offsets"]) - 1

    def video_id(self, v: int) -> str:
        return _strings(self.arrays["video_bytes"], self.arrays["video_offsets"], v, v + 1)[0]

    def caption(self, i: int) -> str:
        a = self.arrays
        lo, hi = int(a["text_lo"][i]), int(a["text_hi"][i])
        return " ".join(filter(None, _strings(a["text_bytes"], a["text_offsets"], lo, hi + 1)))

    def _record(self, i: int) -> ClipRecord:
        a = self.arrays
        vid = self.video_id(int(a["video"][i]))
        return ClipRecord(video_id=vid, start=float(a["start"][i]), end=float(a["end"][i]),
                          captions=(self.caption(i),), audio_type=self.audio_type, source="howto100m",
                          **self.layout.resolve(vid))

    unit = "window"

    def _at(self, i: int) -> ClipRecord:
        return self._record(int(self.rows[i]) if self.rows is not None else i)

    def __iter__(self) -> Iterator[ClipRecord]:
        for i in range(len(self)):
            yield self[i]

    def video_records(self) -> list[ClipRecord]:
        """One record per video (its first window): what a media check needs, not 136 M of them."""
        video = np.asarray(self.arrays["video"] if self.rows is None else self.arrays["video"][self.rows])
        # windows of a video are contiguous (file order, or the selection's order of videos)
        first = np.concatenate([[0], np.flatnonzero(video[1:] != video[:-1]) + 1]) if len(video) else video
        return [self[int(i)] for i in first]

    def select_videos(self, video_ids: Iterable[str], source: str) -> SpanTable:
        """The windows of these videos only (each must be in the table)."""
        wanted = list(dict.fromkeys(str(v) for v in video_ids))
        a = self.arrays
        names = {name: v for v, name in enumerate(_strings(a["video_bytes"], a["video_offsets"], 0, self.num_videos))}
        absent = [v for v in wanted if v not in names]
        if absent:
            raise ValueError(f"{len(absent)} requested videos are not in {source}, e.g. {absent[:5]}")
        order = np.array([names[v] for v in wanted], dtype=np.int64)
        # windows grouped by the requested order of videos, each video's windows in file order
        video = np.asarray(a["video"])
        rank = np.full(self.num_videos, -1, dtype=np.int64)
        rank[order] = np.arange(len(order))
        keep = np.flatnonzero(rank[video] >= 0)
        rows = keep[np.argsort(rank[video[keep]], kind="stable")]
        return SpanTable(a, self.layout, self.audio_type, rows=rows)

    # -- files ----------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
        """Write the arrays to ``directory`` (replaced as a whole: a crash leaves the old one)."""
        if self.rows is not None:
            raise ValueError("save the whole table, not a selection of its videos")
        writer = SpanTableWriter(directory)
        writer.append(self.arrays)
        return writer.close(meta)

    @staticmethod
    def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
        path = Path(directory) / "meta.json"
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: not a HowTo100M span index (no meta.json); build it with "
                                    "`python scripts/prepare_data.py --howto100m-index caption.json --out DIR`")
        meta = json.loads(path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{directory}: span index format {meta.get('format')!r} v{meta.get('version')!r}, "
                             f"this clip4vla reads {FORMAT} v{VERSION}: build it again")
        return meta

    @classmethod
    def load(cls, directory: str | os.PathLike, layout: MediaLayout, audio_type: str = "vb") -> SpanTable:
        """Memory-map a saved table: nothing is read until a window is."""
        cls.read_meta(directory)
        arrays = {name: np.load(Path(directory) / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        for array in arrays.values():  # windows are read in random order: no read-ahead around each
            handle = getattr(array, "_mmap", None)
            if handle is not None and hasattr(mmap, "MADV_RANDOM"):
                handle.madvise(mmap.MADV_RANDOM)
        return cls(arrays, layout, audio_type)


class SpanTableBuilder:
    """Collects videos' transcripts one at a time into flat arrays (no per-span Python object
    survives a video), then grows every span to its window at once (``extend_spans``)."""

    def __init__(self) -> None:
        self.video_names: list[bytes] = []
        self.starts: list[np.ndarray] = []
        self.ends: list[np.ndarray] = []
        self.words: list[np.ndarray] = []
        self.text_blobs: list[bytes] = []
        self.text_lengths: list[np.ndarray] = []
        self._lines = 0

    @property
    def lines(self) -> int:
        """Transcript lines added so far."""
        return self._lines

    def add(self, video_id: str, starts: np.ndarray, ends: np.ndarray, texts: Sequence[str]) -> None:
        self._lines += len(texts)
        encoded = [t.encode("utf-8") for t in texts]
        self.video_names.append(video_id.encode("utf-8"))
        self.starts.append(starts)
        self.ends.append(ends)
        self.words.append(np.fromiter((len(t.split()) for t in texts), dtype=np.int32, count=len(texts)))
        self.text_blobs.append(b"".join(encoded))
        self.text_lengths.append(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))

    def build(self, min_seconds: float, min_words: int, extend: Any) -> dict[str, np.ndarray]:
        counts = np.fromiter(map(len, self.starts), dtype=np.int64, count=len(self.starts))
        n = int(counts.sum())
        owner = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        first_of_video = np.cumsum(counts) - counts
        starts = np.concatenate(self.starts) if n else np.zeros(0)
        ends = np.concatenate(self.ends) if n else np.zeros(0)
        words = np.concatenate(self.words) if n else np.zeros(0, dtype=np.int32)
        lengths = np.concatenate(self.text_lengths) if n else np.zeros(0, dtype=np.int64)
        lo, hi = extend(starts, ends, words, first_of_video[owner], (first_of_video + counts - 1)[owner],
                        min_seconds, min_words)
        # a window with no words at all can only remain when min_words is 0: not a sample
        cum_words = np.concatenate([[0], np.cumsum(words, dtype=np.int64)])
        keep = np.flatnonzero(cum_words[hi + 1] - cum_words[lo] > 0)
        text_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        names = np.fromiter(map(len, self.video_names), dtype=np.int64, count=len(self.video_names))
        return {
            "video": owner[keep].astype(np.int32),
            "start": starts[lo[keep]].astype(np.float32),
            "end": np.maximum(ends[hi[keep]], starts[lo[keep]]).astype(np.float32),  # overlapping lines end early
            "text_lo": lo[keep].astype(np.int32),
            "text_hi": hi[keep].astype(np.int32),
            "text_offsets": text_offsets,
            "text_bytes": np.frombuffer(b"".join(self.text_blobs), dtype=np.uint8),
            "video_offsets": np.concatenate([[0], np.cumsum(names)]).astype(np.int64),
            "video_bytes": np.frombuffer(b"".join(self.video_names), dtype=np.uint8),
        }


class SpanTableWriter:
    """Writes a span table folder from tables of consecutive groups of videos, so building the
    index of the whole corpus needs memory for one group, not for the corpus.

    Each appended part has its own 0-based video, transcript-line and byte numbering (as
    ``SpanTableBuilder.build`` gives); they are shifted here. Arrays go to raw files first and
    become ``.npy`` files at ``close``; the folder appears whole or not at all.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{self.directory.name}.", dir=self.directory.parent))
        self.counts = {name: 0 for name in ARRAYS}
        self.videos = self.lines = self.text_bytes = self.video_bytes = 0

    def _write(self, name: str, values: np.ndarray) -> None:
        with open(self.tmp / f"{name}.raw", "ab") as fh:
            fh.write(np.ascontiguousarray(values, dtype=ARRAYS[name]).tobytes())
        self.counts[name] += len(values)

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        try:
            self._write("video", np.asarray(arrays["video"], dtype=np.int64) + self.videos)
            for name in ("start", "end"):
                self._write(name, arrays[name])
            for name in ("text_lo", "text_hi"):
                self._write(name, np.asarray(arrays[name], dtype=np.int64) + self.lines)
            self._write("text_offsets", np.asarray(arrays["text_offsets"][:-1]) + self.text_bytes)
            self._write("text_bytes", arrays["text_bytes"])
            self._write("video_offsets", np.asarray(arrays["video_offsets"][:-1]) + self.video_bytes)
            self._write("video_bytes", arrays["video_bytes"])
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.videos += len(arrays["video_offsets"]) - 1
        self.lines += len(arrays["text_offsets"]) - 1
        self.text_bytes += int(arrays["text_offsets"][-1])
        self.video_bytes += int(arrays["video_offsets"][-1])

    def close(self, meta: dict[str, Any] | None = None) -> Path:
        try:
            self._write("text_offsets", np.array([self.text_bytes]))
            self._write("video_offsets", np.array([self.video_bytes]))
            for name, dtype in ARRAYS.items():
                raw = self.tmp / f"{name}.raw"
                raw.touch()
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                          "shape": (self.counts[name],)}
                with open(self.tmp / f"{name}.npy", "wb") as out, open(raw, "rb") as data:
                    np.lib.format.write_array_header_1_0(out, header)
                    shutil.copyfileobj(data, out, 1 << 24)  # streamed: memory stays one block
                raw.unlink()
            info = {"format": FORMAT, "version": VERSION, "windows": self.counts["video"], "videos": self.videos,
                    **(meta or {})}
            (self.tmp / "meta.json").write_text(json.dumps(info, indent=1))
            if self.directory.exists():
                shutil.rmtree(self.directory)
            os.replace(self.tmp, self.directory)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return self.directory

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class ConcatRecords(_LazyRecords):
    """Several record sequences (lists or span tables) as one, without copying them."""

    def __init__(self, parts: Sequence[Sequence[ClipRecord]]) -> None:
        self.parts = list(parts)
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _at(self, i: int) -> ClipRecord:
        part = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[part][i - int(self.offsets[part])]


def concat_records(parts: Sequence[Sequence[ClipRecord]]) -> Sequence[ClipRecord]:
    """One list when every part is a list (as before), else a ``ConcatRecords`` view."""
    if all(isinstance(p, list) for p in parts):
        return [r for p in parts for r in p]
    return parts[0] if len(parts) == 1 else ConcatRecords(parts)


def record_sources(records: Sequence[ClipRecord]) -> set[str]:
    """The corpora the records come from (without building a span table's records)."""
    if isinstance(records, SpanTable):
        return {"howto100m"} if len(records) else set()
    if isinstance(records, ConcatRecords):
        return set().union(*(record_sources(part) for part in records.parts))
    if hasattr(records, "media_records"):  # a manifest's compact records (clip4vla.data.readers.manifest)
        return {records.source} if len(records) else set()
    return {r.source for r in records}


def media_representatives(records: Sequence[ClipRecord]) -> Sequence[ClipRecord]:
    """Records whose media stand for all of them: one per video for span tables."""
    if isinstance(records, SpanTable):
        return records.video_records()
    if isinstance(records, ConcatRecords):
        return [r for part in records.parts for r in media_representatives(part)]
    if hasattr(records, "media_records"):  # a manifest: its reader checked every file already
        return records.media_records()
    return records
