"""ESC-50: ``<root>/meta/esc50.csv`` (``filename,fold,target,category,esc10,src_file,take``)
and ``<root>/audio/<filename>`` (5-s, 44.1 kHz mono wav; the audio loader resamples).

Audio only: ``video_path`` None, ``audio_path`` set (the prepared wav when ``prepared_dir`` is
given, named after the file stem). ``label`` = ``target`` (0..49); caption = ``category`` with
``_`` -> space (``"crackling_fire"`` -> ``"crackling fire"``), for zero-shot prompts. Type ``"nb"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from clip4vla.data.readers._common import UniqueLines, parse_audio_type, parse_int, read_csv, require_file
from clip4vla.data.records import AnnotationError, ClipRecord, MediaLayout

FOLDS = (1, 2, 3, 4, 5)
NUM_CLASSES = 50
COLUMNS = ("filename", "fold", "target", "category")


def read_esc50(
    root: str | os.PathLike,
    folds: Iterable[int] = FOLDS,
    *,
    prepared_dir: str | os.PathLike | None = None,
    audio_type: str = "nb",
) -> list[ClipRecord]:
    """ESC-50 records of the given folds (file order).

    Args:
        root: the ESC-50 folder (``meta/esc50.csv``, ``audio/``).
        folds: which of the 5 folds to keep, e.g. ``[1, 2, 3, 4]`` for training on fold 5's split.
        prepared_dir: optional prepared media root (16 kHz stereo wavs in ``audio/``).
        audio_type: ``"nb"`` (the ESC-50 probe runs the audio encoder with type NB).
    """
    folds = set(folds)
    bad = folds - set(FOLDS)
    if bad or not folds:
        raise ValueError(f"ESC-50 folds must be a non-empty subset of {FOLDS}, got {sorted(folds)}")
    parse_audio_type(audio_type, Path("<argument>"), "audio_type")
    root = Path(root)
    path = require_file(root / "meta" / "esc50.csv", "ESC-50 meta csv")
    layout = MediaLayout(audio_dir=root / "audio", prepared_dir=prepared_dir)
    category_of: dict[int, tuple[str, int]] = {}
    unique = UniqueLines(path, "filename", "file")
    records = []
    for line, row in read_csv(path, COLUMNS):
        filename = row["filename"]
        if not filename:
            raise AnnotationError(path, "empty file name", line=line, field="filename")
        unique.add(filename, line)
        fold = parse_int(row["fold"], path, "fold", line=line)
        if fold not in FOLDS:
            raise AnnotationError(path, f"fold {fold} is not one of {FOLDS}", line=line, field="fold")
        target = parse_int(row["target"], path, "target", line=line)
        if not 0 <= target < NUM_CLASSES:
            raise AnnotationError(
                path, f"target {target} outside 0..{NUM_CLASSES - 1}", line=line, field="target"
            )
        category = row["category"]
        if not category:
            raise AnnotationError(path, "empty caption (category)", line=line, field="category")
        # One class must have one name, or the zero-shot prompts and the probe disagree.
        known = category_of.setdefault(target, (category, line))
        if known[0] != category:
            raise AnnotationError(
                path,
                f"target {target} is {category!r} here but {known[0]!r} on line {known[1]}",
                line=line,
                field="category",
            )
        if fold not in folds:
            continue
        stem = Path(filename).stem
        audio_path = layout.audio_path(stem) if prepared_dir is not None else layout.audio_dir / filename
        records.append(
            ClipRecord(
                video_id=stem,
                audio_path=audio_path,
                captions=(category.replace("_", " "),),
                audio_type=audio_type,
                label=target,
                source="esc50",
            )
        )
    return records
