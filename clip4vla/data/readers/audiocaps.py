"""AudioCaps annotations: official ``train.csv`` / ``val.csv`` / ``test.csv`` with columns
``audiocap_id,youtube_id,start_time,caption``; 10-s clips, 5 captions per val/test clip.

Rows are grouped by ``youtube_id`` (first-appearance order), so a val/test record carries all
five captions as multi-caption positives. Two rows of one ``youtube_id`` with different
``start_time`` would be two different clips under one name: that is an error.

Media naming, chosen by ``media``:

- ``"clip"`` (default, as REF): the 10-s clips named ``<youtube_id>.<ext>`` under ``video_dir``
  (videos) and/or ``audio_dir`` (audio-only downloads); whole file, ``start``/``end`` None.
- ``"full"``: the full YouTube video ``<youtube_id>.<ext>``; ``start = start_time``,
  ``end = start_time + 10``.

Audio type ``"nb"`` (AudioCaps is non-verbal event audio; REF fine-tunes it with w = 1.0).
"""

from __future__ import annotations

import os
from pathlib import Path

from clip4vla.data.readers._common import (
    UniqueLines,
    check_choice,
    default_unfold,
    parse_audio_type,
    parse_caption,
    parse_float,
    read_csv,
    require_file,
)
from clip4vla.data.records import AnnotationError, ClipRecord, MediaLayout

CLIP_SECONDS = 10.0
SPLITS = ("train", "val", "test")
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")


def read_audiocaps(
    annotation_dir: str | os.PathLike,
    split: str,
    *,
    video_dir: str | os.PathLike | None = None,
    audio_dir: str | os.PathLike | None = None,
    prepared_dir: str | os.PathLike | None = None,
    media: str = "clip",
    unfold_captions: bool | None = None,
    audio_type: str = "nb",
) -> list[ClipRecord]:
    """AudioCaps records from ``<annotation_dir>/<split>.csv``.

    Args:
        annotation_dir: folder with ``train.csv``, ``val.csv``, ``test.csv``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        video_dir / audio_dir / prepared_dir: media roots (``clip4vla.data.records``); with only
            ``audio_dir`` the records are audio-only (``video_path`` None).
        media: ``"clip"`` or ``"full"`` (module docstring).
        unfold_captions: one record per caption (default for train) or one per clip.
        audio_type: ``"nb"`` (default) or ``"vb"``.
    """
    check_choice("AudioCaps split", split, SPLITS)
    check_choice("AudioCaps media", media, ("clip", "full"))
    parse_audio_type(audio_type, Path("<argument>"), "audio_type")
    path = require_file(Path(annotation_dir) / f"{split}.csv", f"AudioCaps {split} csv")

    groups: dict[str, tuple[float, int, list[str]]] = {}  # youtube_id -> (start, first line, captions)
    unique = UniqueLines(path, "audiocap_id", "audiocap_id")
    for line, row in read_csv(path, COLUMNS):
        cap_id = row["audiocap_id"]
        if not cap_id:
            raise AnnotationError(path, "empty id", line=line, field="audiocap_id")
        unique.add(cap_id, line)
        ytid = row["youtube_id"]
        if not ytid:
            raise AnnotationError(path, "empty id", line=line, field="youtube_id")
        start = parse_float(row["start_time"], path, "start_time", line=line)
        caption = parse_caption(row["caption"], path, "caption", line=line)
        if ytid not in groups:
            groups[ytid] = (start, line, [])
        elif groups[ytid][0] != start:
            first_start, first_line, _ = groups[ytid]
            raise AnnotationError(
                path,
                f"youtube_id {ytid!r} has start_time {start:g} here but {first_start:g} on line {first_line}",
                line=line,
                field="start_time",
            )
        groups[ytid][2].append(caption)

    layout = MediaLayout(video_dir=video_dir, audio_dir=audio_dir, prepared_dir=prepared_dir)
    unfold = default_unfold(unfold_captions, split)
    records = []
    for ytid, (start, _, captions) in groups.items():
        window = {"start": start, "end": start + CLIP_SECONDS} if media == "full" else {}
        paths = layout.resolve(ytid)
        chunks = [(c,) for c in captions] if unfold else [tuple(captions)]
        for chunk in chunks:
            records.append(
                ClipRecord(
                    video_id=ytid,
                    captions=chunk,
                    audio_type=audio_type,
                    source="audiocaps",
                    **paths,
                    **window,
                )
            )
    return records
