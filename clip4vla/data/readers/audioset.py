"""AudioSet segments: segments csv + ``ontology.json`` -> "the sound of ..." captions.

The official segments csv (``balanced_train_segments.csv`` etc.) starts with comment lines, the
last of which is the header::

    # Segments csv created Sun Mar  5 10:54:31 2017
    # num_ytids=22160, num_segs=22160, num_unique_labels=527, num_positive_labels=52882
    # YTID, start_seconds, end_seconds, positive_labels
    --PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"

``ontology.json`` is ``[{"id": "/m/09x0r", "name": "Speech", ...}, ...]``.

Caption: ``"the sound of "`` + label names in the row's order, joined by ``", "`` with ``" and "``
before the last (``"the sound of Speech, Music and Dog"``); names are kept verbatim (the tokenizer
lower-cases). Multi-label, so ``label`` is None. Audio type ``"nb"``.

Media naming (``video_id``): ``name_format`` with fields ``ytid``, ``start``, ``end`` (whole
seconds, e.g. ``"{ytid}_{start}"`` -> ``--PJHxphWEs_30``, the default), pointing at the downloaded
10-s clip, whole file (``media="clip"``). With ``media="full"`` the media are the full YouTube
video ``<ytid>.<ext>`` and ``start``/``end`` are the segment's times.
"""

from __future__ import annotations

import os
from pathlib import Path

from clip4vla.data.readers._common import (
    UniqueLines,
    check_choice,
    format_seconds,
    load_json,
    parse_audio_type,
    parse_float,
    read_csv,
    require_fields,
    require_file,
)
from clip4vla.data.records import AnnotationError, ClipRecord, MediaLayout

COLUMNS = ("YTID", "start_seconds", "end_seconds", "positive_labels")


def load_ontology(path: str | os.PathLike) -> dict[str, str]:
    """Label id -> display name from ``ontology.json``."""
    path = require_file(path, "AudioSet ontology")
    data = load_json(path)
    if not isinstance(data, list):
        raise AnnotationError(path, "top level must be a list of {id, name} objects")
    names: dict[str, str] = {}
    for i, entry in enumerate(data):
        where = f"[{i}]"
        require_fields(entry, (), path, where)
        for field in ("id", "name"):
            if not isinstance(entry.get(field), str) or not entry[field].strip():
                raise AnnotationError(path, "missing or empty", location=where, field=field)
        if entry["id"] in names:
            raise AnnotationError(path, f"duplicate id {entry['id']!r}", location=where, field="id")
        names[entry["id"]] = entry["name"].strip()
    return names


def sound_caption(names: list[str]) -> str:
    """``["Speech", "Music", "Dog"]`` -> ``"the sound of Speech, Music and Dog"``."""
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return "the sound of " + listed


def read_audioset(
    segments_csv: str | os.PathLike,
    ontology_json: str | os.PathLike,
    *,
    video_dir: str | os.PathLike | None = None,
    audio_dir: str | os.PathLike | None = None,
    prepared_dir: str | os.PathLike | None = None,
    media: str = "clip",
    name_format: str = "{ytid}_{start}",
    audio_type: str = "nb",
) -> list[ClipRecord]:
    """AudioSet records, one per segment row.

    Args:
        segments_csv: an official segments csv (module docstring).
        ontology_json: the AudioSet ontology, to turn label ids into names.
        video_dir / audio_dir / prepared_dir: media roots (``clip4vla.data.records``).
        media: ``"clip"`` (downloaded 10-s clips named by ``name_format``) or ``"full"``.
        name_format: clip file stem from ``ytid``, ``start``, ``end``.
        audio_type: ``"nb"`` (paper: AudioSet is non-verbal).
    """
    check_choice("AudioSet media", media, ("clip", "full"))
    parse_audio_type(audio_type, Path("<argument>"), "audio_type")
    names = load_ontology(ontology_json)
    path = require_file(segments_csv, "AudioSet segments csv")
    layout = MediaLayout(video_dir=video_dir, audio_dir=audio_dir, prepared_dir=prepared_dir)
    records = []
    unique = UniqueLines(path, "YTID", "segment")
    for line, row in read_csv(path, COLUMNS, header_comment="#"):
        ytid = row["YTID"]
        if not ytid:
            raise AnnotationError(path, "empty id", line=line, field="YTID")
        start = parse_float(row["start_seconds"], path, "start_seconds", line=line)
        end = parse_float(row["end_seconds"], path, "end_seconds", line=line)
        if end <= start:
            raise AnnotationError(
                path, f"end {end:g} is not after start {start:g}", line=line, field="end_seconds"
            )
        labels = [label.strip() for label in row["positive_labels"].split(",") if label.strip()]
        if not labels:
            raise AnnotationError(
                path, "no label: the caption would be empty", line=line, field="positive_labels"
            )
        unknown = [label for label in labels if label not in names]
        if unknown:
            raise AnnotationError(
                path, f"label id(s) {unknown} not in the ontology", line=line, field="positive_labels"
            )
        video_id = name_format.format(ytid=ytid, start=format_seconds(start), end=format_seconds(end))
        unique.add(video_id, line)
        if media == "full":
            paths, window = layout.resolve(ytid), {"start": start, "end": end}
        else:
            paths, window = layout.resolve(video_id), {}
        records.append(
            ClipRecord(
                video_id=video_id,
                captions=(sound_caption([names[label] for label in labels]),),
                audio_type=audio_type,
                source="audioset",
                **paths,
                **window,
            )
        )
    return records
