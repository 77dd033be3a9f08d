"""Parsing helpers shared by the readers: every failure becomes an ``AnnotationError`` naming
file, line (or JSON path) and field, so no reader needs its own error plumbing."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from clip4vla.data.records import AUDIO_TYPES, AnnotationError


def require_file(path: str | os.PathLike, what: str) -> Path:
    """The annotation file must exist: a missing file is a setup error, named with what it is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    """Validate a caller's argument (not file content): a plain ValueError listing the choices."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(allowed)}")
    return value


def load_json(path: Path) -> Any:
    """Parse a JSON file; truncated or invalid JSON reports the line where parsing failed."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise AnnotationError(
            path, f"invalid JSON ({err.msg}, column {err.colno})", line=err.lineno
        ) from None
    except UnicodeDecodeError as err:
        raise AnnotationError(path, f"not UTF-8 text ({err.reason})") from None


def require_fields(entry: Any, fields: Sequence[str], path: Path, where: str, shape: str = "an object") -> dict:
    """A JSON entry must be an object holding ``fields``: the one check every JSON reader makes,
    so each failure names the file, the entry and the field the same way."""
    if not isinstance(entry, dict):
        raise AnnotationError(path, f"entry must be {shape}", location=where)
    for field in fields:
        if field not in entry:
            raise AnnotationError(path, "missing field", location=where, field=field)
    return entry


def read_csv(
    path: Path,
    required: Sequence[str],
    *,
    header_comment: str | None = None,
) -> list[tuple[int, dict[str, str]]]:
    """Rows of a headed CSV as ``(line number, {column: value})``, with the required columns checked.

    ``header_comment``: leading lines starting with this prefix are comments and the last of them
    is the header (AudioSet's ``# YTID, start_seconds, end_seconds, positive_labels``); otherwise
    the first non-blank line is. Values are stripped of surrounding spaces (AudioSet writes ``, ``
    between fields). A row with too few or too many fields is an error naming its line, never a
    silently shifted record.
    """
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = f.readlines()
    header_line, header, body_start = None, None, 0
    for i, text in enumerate(lines):
        if not text.strip():
            continue
        if header_comment is not None and text.lstrip().startswith(header_comment):
            header_line, header, body_start = i + 1, text.lstrip()[len(header_comment) :], i + 1
            continue
        if header is None:
            header_line, header, body_start = i + 1, text, i + 1
        break
    if header is None:
        raise AnnotationError(path, "empty file, no header line", line=1)
    columns = [c.strip() for c in next(csv.reader([header], skipinitialspace=True))]
    for col in required:
        if col not in columns:
            raise AnnotationError(path, f"missing column (header has {columns})", line=header_line, field=col)

    current = [body_start]  # physical line number of the text the csv reader consumed last

    def numbered() -> Iterator[str]:
        for number, text in enumerate(lines[body_start:], start=body_start + 1):
            current[0] = number
            yield text

    rows: list[tuple[int, dict[str, str]]] = []
    try:
        for values in csv.reader(numbered(), skipinitialspace=True):
            number = current[0]
            if not values or (len(values) == 1 and not values[0].strip()):
                continue  # blank line
            if len(values) != len(columns):
                field = columns[len(values)] if len(values) < len(columns) else None
                raise AnnotationError(
                    path,
                    f"expected {len(columns)} fields {columns}, found {len(values)}",
                    line=number,
                    field=field,
                )
            rows.append((number, {c: v.strip() for c, v in zip(columns, values)}))
    except csv.Error as err:
        raise AnnotationError(path, f"malformed CSV ({err})", line=current[0]) from None
    return rows


def parse_float(
    value: Any, path: Path, field: str, *, line: int | None = None, location: str | None = None
) -> float:
    """A finite, non-negative number of seconds (times in every corpus are offsets into a file)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AnnotationError(
            path, f"not a number: {value!r}", line=line, location=location, field=field
        ) from None
    if not math.isfinite(number) or number < 0:
        raise AnnotationError(
            path,
            f"must be a finite non-negative number, got {value!r}",
            line=line,
            location=location,
            field=field,
        )
    return number


def parse_int(
    value: Any, path: Path, field: str, *, line: int | None = None, location: str | None = None
) -> int:
    """An integer written as such (``"3"``; ``"3.0"`` or ``"x"`` are errors, not truncated)."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise AnnotationError(
            path, f"not an integer: {value!r}", line=line, location=location, field=field
        ) from None


def parse_caption(
    value: Any, path: Path, field: str, *, line: int | None = None, location: str | None = None
) -> str:
    """A non-empty caption string, surrounding whitespace removed."""
    if not isinstance(value, str):
        raise AnnotationError(
            path,
            f"caption must be a string, got {type(value).__name__}",
            line=line,
            location=location,
            field=field,
        )
    text = value.strip()
    if not text:
        raise AnnotationError(path, "empty caption", line=line, location=location, field=field)
    return text


def parse_audio_type(
    value: Any, path: Path, field: str, *, line: int | None = None, location: str | None = None
) -> str:
    if value not in AUDIO_TYPES:
        raise AnnotationError(
            path,
            f"audio type must be one of {AUDIO_TYPES}, got {value!r}",
            line=line,
            location=location,
            field=field,
        )
    return value


class UniqueLines:
    """Where each key of a file was first seen: a repeat is an ``AnnotationError`` naming both lines.

    A repeated id would silently double-count a clip (or add a second ground truth to a query), so
    every reader refuses one.
    """

    def __init__(self, path: Path, field: str, what: str = "id") -> None:
        self.path, self.field, self.what = path, field, what
        self.first: dict[str, int] = {}

    def add(self, key: str, line: int) -> None:
        if key in self.first:
            raise AnnotationError(
                self.path, f"duplicate {self.what} {key!r} (first on line {self.first[key]})", line=line, field=self.field
            )
        self.first[key] = line


def read_id_list(path: Path, column: str = "video_id") -> list[tuple[int, str]]:
    """A split csv of ids (header ``video_id``); duplicates are an error because they would double-count."""
    unique = UniqueLines(path, column)
    out: list[tuple[int, str]] = []
    for line, row in read_csv(path, [column]):
        vid = row[column]
        if not vid:
            raise AnnotationError(path, "empty id", line=line, field=column)
        unique.add(vid, line)
        out.append((line, vid))
    return out


def default_unfold(unfold_captions: bool | None, split: str) -> bool:
    """Training visits each (clip, caption) pair once per epoch (CLIP4Clip); evaluation keeps one
    record per clip with all its captions, so multi-caption positives are grouped."""
    return split == "train" if unfold_captions is None else bool(unfold_captions)


def format_seconds(value: float) -> str:
    """``30.0`` -> ``"30"``, ``12.5`` -> ``"12.5"`` (media file names use whole seconds)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
