"""HowTo100M transcripts: ``{video_id: {"start": [...], "end": [...], "text": [...]}}``.

One record per transcript span. A span shorter than ``min_seconds`` (10) or with fewer than
``min_words`` (5) words is grown with neighbouring spans of the same video until both hold or the
video is used up. Growth rule (REF's ``_get_single_transcript``, kept so pre-training sees the same
windows): at each step, when both neighbours exist, take the one whose addition gives the shorter
window (``end[e+1] - start[s]`` vs ``end[e] - start[s-1]``; a tie takes the previous span); at a
video border take the only neighbour. Two differences from REF, both deliberate: words are
whitespace-separated words, not BERT word-pieces, and the duration comparison is used even when
``min_seconds`` is 0 (REF then compares word counts).

The growth runs for all spans of the whole corpus at once in numpy (one vectorised step per
extension round, only still-short spans stay active), so the work is linear in the number of
spans times the few rounds a span needs. The windows are kept as compact arrays
(``clip4vla.data.span_table.SpanTable``), never as one Python object per span.

Caption = the texts of the window joined by single spaces; frames and audio come from that window
(``start``/``end`` set), audio type ``"vb"``. Media: ``<video_dir>/<video_id>.<mp4|webm|...>``.

Real HowTo100M (1.2 M videos, ~136 M spans): build the span index folder once
(``build_howto100m_index``, ``scripts/prepare_data.py --howto100m-index``) and point
``caption_path`` at it; every rank then memory-maps it at start-up.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from clip4vla.data.readers._common import load_json, parse_audio_type, require_fields, require_file
from clip4vla.data.records import AnnotationError, MediaLayout
from clip4vla.data.span_table import SpanTable, SpanTableBuilder, SpanTableWriter

log = logging.getLogger(__name__)

INDEX_CHUNK_LINES = 2_000_000  # transcript lines built into windows at a time by the index builder


def load_howto_captions(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``caption.json`` or the original ``caption.pickle``.

    A pickle can run code when loaded: only pass pickles you trust (the official release).
    """
    path = require_file(path, "HowTo100M caption file")
    if path.suffix in (".pkl", ".pickle"):
        try:
            with open(path, "rb") as f:
                data = pickle.load(f)
        except (pickle.UnpicklingError, EOFError) as err:
            raise AnnotationError(path, f"unreadable pickle ({err})") from None
    else:
        data = load_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(path, "top level must map video_id -> {start, end, text}")
    return data


def _span_text(value: Any) -> str:
    # The original pickle stores numpy string arrays and occasionally NaN for an empty line.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _times(values: Any, path: Path, vid: str, field: str) -> np.ndarray:
    where = f"[{vid!r}]"
    try:
        times = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        for j, v in enumerate(values):
            try:
                float(v)
            except (TypeError, ValueError):
                raise AnnotationError(
                    path, f"not a number: {v!r}", location=f"{where}.{field}[{j}]", field=field
                ) from None
        raise AnnotationError(path, "not a list of numbers", location=where, field=field) from None
    if times.ndim != 1:
        raise AnnotationError(path, "must be a flat list of numbers", location=where, field=field)
    bad = ~np.isfinite(times) | (times < 0)
    if bad.any():
        j = int(np.argmax(bad))
        raise AnnotationError(
            path,
            f"must be a finite non-negative number, got {times[j]!r}",
            location=f"{where}.{field}[{j}]",
            field=field,
        )
    return times


def extend_spans(
    starts: np.ndarray,
    ends: np.ndarray,
    word_counts: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    min_seconds: float = 10.0,
    min_words: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Grow every span to a window of >= ``min_seconds`` and >= ``min_words`` (module docstring rule).

    Args (all ``[N]`` over the spans of every video, concatenated):
        starts, ends: span times; word_counts: words per span;
        first, last: index of the first / last span of the span's own video.
    Returns:
        ``(lo, hi)``: inclusive span-index bounds of each span's window.
    """
    n = len(starts)
    lo = np.arange(n, dtype=np.int64)
    hi = lo.copy()
    cum_words = np.concatenate([[0], np.cumsum(word_counts, dtype=np.int64)])

    def short(idx: np.ndarray) -> np.ndarray:
        s, e = lo[idx], hi[idx]
        return ((cum_words[e + 1] - cum_words[s]) < min_words) | ((ends[e] - starts[s]) < min_seconds)

    active = np.flatnonzero(short(lo)) if n else lo
    while active.size:
        s, e = lo[active], hi[active]
        can_prev = s > first[active]
        can_next = e < last[active]
        open_ = can_prev | can_next
        active, s, e, can_prev, can_next = active[open_], s[open_], e[open_], can_prev[open_], can_next[open_]
        # Window length after taking the next / the previous span (REF's d1 / d2).
        with_next = ends[np.minimum(e + 1, n - 1)] - starts[s]
        with_prev = ends[e] - starts[np.maximum(s - 1, 0)]
        take_prev = can_prev & (~can_next | (with_prev <= with_next))
        lo[active[take_prev]] -= 1
        hi[active[~take_prev]] += 1
        active = active[short(active)]
    return lo, hi


def read_howto100m(
    caption_path: str | os.PathLike,
    *,
    video_dir: str | os.PathLike | None = None,
    prepared_dir: str | os.PathLike | None = None,
    video_ids: Iterable[str] | None = None,
    min_seconds: float = 10.0,
    min_words: int = 5,
    audio_type: str = "vb",
) -> SpanTable:
    """HowTo100M records, one per transcript span grown to a usable window.

    Returns a ``SpanTable`` (a sequence of ``ClipRecord``s kept as compact arrays; a record is built
    when read), so the corpus never exists as one Python object per span.

    Args:
        caption_path: ``caption.json`` or ``caption.pickle``, or a span index folder written by
            ``build_howto100m_index`` (memory-mapped: start-up does not grow with the corpus).
        video_dir / prepared_dir: media roots (``clip4vla.data.records``).
        video_ids: keep only these videos (e.g. the ones downloaded); each must be in the file.
        min_seconds / min_words: window growth thresholds (module docstring); 0 disables one.
        audio_type: ``"vb"`` (paper: HowTo100M is verbal).
    """
    parse_audio_type(audio_type, Path("<argument>"), "audio_type")
    path = Path(caption_path)
    layout = MediaLayout(video_dir=video_dir, prepared_dir=prepared_dir)
    if path.is_dir():
        meta = SpanTable.read_meta(path)
        if (meta["min_seconds"], meta["min_words"]) != (min_seconds, min_words):
            raise ValueError(f"{path} was built with min_seconds={meta['min_seconds']}, min_words={meta['min_words']}; "
                             f"the config asks for {min_seconds}, {min_words}: build the index again or change them")
        table = SpanTable.load(path, layout, audio_type)
        return table if video_ids is None else table.select_videos(video_ids, str(path))
    data = load_howto_captions(path)
    if video_ids is None:
        selected = list(data)
    else:
        selected = list(dict.fromkeys(str(v) for v in video_ids))
        absent = [v for v in selected if v not in data]
        if absent:
            raise ValueError(f"{len(absent)} requested videos are not in {path}, e.g. {absent[:5]}")
    builder = SpanTableBuilder()
    empty = sum(not _add_video(builder, path, vid, data[vid]) for vid in selected)
    if empty:
        log.info("%s: %d videos with an empty transcript give no records", path, empty)
    return SpanTable(builder.build(min_seconds, min_words, extend_spans), layout, audio_type)


def build_howto100m_index(
    caption_path: str | os.PathLike, out_dir: str | os.PathLike, min_seconds: float = 10.0, min_words: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the span index folder of a caption file once (``read_howto100m`` then maps it).

    ``caption.json`` is streamed video by video (``ijson``) and the windows are built and written
    for groups of videos of ``INDEX_CHUNK_LINES`` transcript lines, so building needs memory for
    one group, not for the corpus; a ``.pickle`` must be loaded whole (pickle cannot stream).
    Returns counts and the time taken.
    """
    import time

    from tqdm.auto import tqdm

    path = require_file(caption_path, "HowTo100M caption file")
    start = time.perf_counter()
    writer = SpanTableWriter(out_dir)
    builder = SpanTableBuilder()
    empty = videos = 0
    try:
        for vid, entry in tqdm(_iter_captions(path), desc="videos", unit="video", disable=not progress):
            videos += 1
            empty += not _add_video(builder, path, vid, entry)
            if builder.lines >= INDEX_CHUNK_LINES:  # windows never cross videos: groups are independent
                writer.append(builder.build(min_seconds, min_words, extend_spans))
                builder = SpanTableBuilder()
        writer.append(builder.build(min_seconds, min_words, extend_spans))
    except BaseException:
        writer.abort()
        raise
    windows = writer.counts["video"]
    writer.close({"min_seconds": min_seconds, "min_words": min_words, "source": str(path),
                  "source_bytes": path.stat().st_size})
    return {"videos": videos, "empty_videos": empty, "windows": windows, "total_s": round(time.perf_counter() - start, 1)}


def _iter_captions(path: Path) -> Iterator[tuple[str, Any]]:
    if path.suffix in (".pkl", ".pickle"):
        yield from load_howto_captions(path).items()
        return
    import ijson

    try:
        with open(path, "rb") as f:
            for vid, entry in ijson.kvitems(f, "", use_float=True):
                yield str(vid), entry
    except ijson.JSONError as err:
        raise AnnotationError(path, f"invalid JSON ({err})") from None


def _add_video(builder: SpanTableBuilder, path: Path, vid: str, entry: Any) -> bool:
    """Check one video's transcript and add it; False for an empty transcript (no records)."""
    where = f"[{vid!r}]"
    require_fields(entry, ("start", "end", "text"), path, where, shape="an object {start, end, text}")
    starts = _times(entry["start"], path, vid, "start")
    ends = _times(entry["end"], path, vid, "end")
    if isinstance(entry["text"], (str, bytes)) or not hasattr(entry["text"], "__len__"):
        raise AnnotationError(path, "must be a list of span texts", location=where, field="text")
    text = [_span_text(t).strip() for t in entry["text"]]
    if not (len(starts) == len(ends) == len(text)):
        raise AnnotationError(
            path,
            f"start/end/text lengths differ ({len(starts)}/{len(ends)}/{len(text)})",
            location=where,
            field="text",
        )
    if len(text) == 0:
        return False
    backwards = ends < starts
    if backwards.any():
        j = int(np.argmax(backwards))
        raise AnnotationError(
            path,
            f"end {ends[j]:g} is before start {starts[j]:g}",
            location=f"{where}.end[{j}]",
            field="end",
        )
    if not any(text):
        raise AnnotationError(path, "empty caption: the whole transcript has no words", location=where, field="text")
    builder.add(vid, starts, ends, text)
    return True
