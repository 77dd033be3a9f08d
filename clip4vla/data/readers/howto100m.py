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
spans times the few rounds a span needs; real HowTo100M (1.2 M videos, ~136 M spans) never goes
through a per-span Python loop except to build the records themselves.

Caption = the texts of the window joined by single spaces; frames and audio come from that window
(``start``/``end`` set), audio type ``"vb"``. Media: ``<video_dir>/<video_id>.<mp4|webm|...>``.

Memory note: one ``ClipRecord`` per span is ~1 KB of Python objects; restrict ``video_ids`` to the
videos you have when the full corpus does not fit.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from clip4vla.data.readers._common import gc_paused, load_json, parse_audio_type, require_file
from clip4vla.data.records import AnnotationError, ClipRecord, MediaLayout

log = logging.getLogger(__name__)


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
) -> list[ClipRecord]:
    """HowTo100M records, one per transcript span grown to a usable window.

    Args:
        caption_path: ``caption.json`` or ``caption.pickle``.
        video_dir / prepared_dir: media roots (``clip4vla.data.records``).
        video_ids: keep only these videos (e.g. the ones downloaded); each must be in the file.
        min_seconds / min_words: window growth thresholds (module docstring); 0 disables one.
        audio_type: ``"vb"`` (paper: HowTo100M is verbal).
    """
    parse_audio_type(audio_type, Path("<argument>"), "audio_type")
    with gc_paused():  # millions of small objects: see gc_paused
        return _read(
            Path(caption_path), video_dir, prepared_dir, video_ids, min_seconds, min_words, audio_type
        )


def _read(
    path: Path,
    video_dir: str | os.PathLike | None,
    prepared_dir: str | os.PathLike | None,
    video_ids: Iterable[str] | None,
    min_seconds: float,
    min_words: int,
    audio_type: str,
) -> list[ClipRecord]:
    data = load_howto_captions(path)
    if video_ids is None:
        selected = list(data)
    else:
        selected = list(dict.fromkeys(str(v) for v in video_ids))
        absent = [v for v in selected if v not in data]
        if absent:
            raise ValueError(f"{len(absent)} requested videos are not in {path}, e.g. {absent[:5]}")

    all_starts, all_ends, texts, owners, bounds = [], [], [], [], []
    offset = 0
    empty_videos = 0
    for vid in selected:
        entry = data[vid]
        where = f"[{vid!r}]"
        if not isinstance(entry, dict):
            raise AnnotationError(path, "entry must be an object {start, end, text}", location=where)
        for field in ("start", "end", "text"):
            if field not in entry:
                raise AnnotationError(path, "missing field", location=where, field=field)
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
            empty_videos += 1
            continue
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
            raise AnnotationError(
                path, "empty caption: the whole transcript has no words", location=where, field="text"
            )
        all_starts.append(starts)
        all_ends.append(ends)
        texts.extend(text)
        owners.append(vid)
        bounds.append((offset, offset + len(text) - 1))
        offset += len(text)
    if empty_videos:
        log.info("%s: %d videos with an empty transcript give no records", path, empty_videos)
    if not owners:
        return []

    counts = np.array([hi - lo + 1 for lo, hi in bounds], dtype=np.int64)
    first = np.repeat(np.array([lo for lo, _ in bounds], dtype=np.int64), counts)
    last = np.repeat(np.array([hi for _, hi in bounds], dtype=np.int64), counts)
    starts = np.concatenate(all_starts)
    ends = np.concatenate(all_ends)
    words = np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))
    lo, hi = extend_spans(starts, ends, words, first, last, min_seconds, min_words)

    # Plain Python lists from here: this loop runs once per span, numpy scalars would dominate it.
    win_start = starts[lo].tolist()
    win_end = np.maximum(ends[hi], starts[lo]).tolist()  # overlapping transcripts can end early
    lo, hi = lo.tolist(), hi.tolist()
    layout = MediaLayout(video_dir=video_dir, prepared_dir=prepared_dir)
    records = []
    for vid, (v_lo, v_hi) in zip(owners, bounds):
        paths = layout.resolve(vid)
        for i in range(v_lo, v_hi + 1):
            caption = " ".join(filter(None, texts[lo[i] : hi[i] + 1]))
            if not caption:
                # A wordless span inside a video that does have words can only stay empty when
                # min_words is 0; then the window has nothing to say and is not a sample.
                continue
            records.append(
                ClipRecord(
                    video_id=vid,
                    start=win_start[i],
                    end=win_end[i],
                    captions=(caption,),
                    audio_type=audio_type,
                    source="howto100m",
                    **paths,
                )
            )
    return records
