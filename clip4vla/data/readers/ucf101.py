"""UCF101: ``ucfTrainTestlist/`` (``classInd.txt``: ``1 ApplyEyeMakeup``;
``trainlist0{1,2,3}.txt``: ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``;
``testlist0{1,2,3}.txt``: the path only, class from its folder) and ``UCF-101/<Class>/<file>.avi``.

``label`` = class index - 1 (0-based, dense: ``classInd.txt`` must number classes 1..N); a train
list label that disagrees with the file's class folder is an error. Caption = class name split on
CamelCase and lower-cased (``"ApplyEyeMakeup"`` -> ``"apply eye makeup"``). ``video_id`` = file stem.
Audio type defaults to ``"nb"`` (actions and events; many clips are silent).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from clip4vla.data.readers._common import UniqueLines, check_choice, parse_audio_type, parse_int, require_file
from clip4vla.data.records import AnnotationError, ClipRecord, MediaLayout

SPLITS = (1, 2, 3)
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def class_caption(name: str) -> str:
    """``"ApplyEyeMakeup"`` -> ``"apply eye makeup"``, ``"YoYo"`` -> ``"yo yo"``."""
    return " ".join(w.lower() for w in _WORD.findall(name))


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    with open(path, encoding="utf-8-sig") as f:  # the official lists have CRLF endings
        return [(n, text.split()) for n, text in enumerate(f, start=1) if text.strip()]


def read_class_index(path: str | os.PathLike) -> dict[str, int]:
    """Class name -> 1-based index from ``classInd.txt``."""
    path = require_file(path, "UCF101 classInd.txt")
    classes: dict[str, int] = {}
    indices: dict[int, int] = {}
    for line, fields in _lines(path):
        if len(fields) != 2:
            raise AnnotationError(
                path, f"expected '<index> <ClassName>', found {len(fields)} fields", line=line
            )
        index = parse_int(fields[0], path, "index", line=line)
        name = fields[1]
        if index in indices:
            raise AnnotationError(
                path, f"duplicate index {index} (first on line {indices[index]})", line=line, field="index"
            )
        if name in classes:
            raise AnnotationError(path, f"duplicate class {name!r}", line=line, field="class")
        indices[index] = line
        classes[name] = index
    if sorted(indices) != list(range(1, len(indices) + 1)):
        raise AnnotationError(path, f"class indices must be 1..{len(indices)} without gaps", field="index")
    return classes


def read_ucf101(
    list_dir: str | os.PathLike,
    split: int = 1,
    subset: str = "train",
    *,
    video_dir: str | os.PathLike | None = None,
    prepared_dir: str | os.PathLike | None = None,
    audio_type: str = "nb",
) -> list[ClipRecord]:
    """UCF101 records of one official split.

    Args:
        list_dir: the ``ucfTrainTestlist`` folder.
        split: 1, 2 or 3.
        subset: ``"train"`` or ``"test"``.
        video_dir: the ``UCF-101`` folder (``<Class>/<file>.avi`` inside).
        prepared_dir: optional prepared media root (named by file stem).
        audio_type: ``"nb"`` or ``"vb"``.
    """
    if split not in SPLITS:
        raise ValueError(f"UCF101 split must be one of {SPLITS}, got {split!r}")
    check_choice("UCF101 subset", subset, ("train", "test"))
    parse_audio_type(audio_type, Path("<argument>"), "audio_type")
    list_dir = Path(list_dir)
    classes = read_class_index(list_dir / "classInd.txt")
    path = require_file(list_dir / f"{subset}list0{split}.txt", f"UCF101 {subset} list")
    layout = MediaLayout(video_dir=video_dir, prepared_dir=prepared_dir)
    unique = UniqueLines(path, "path", "video")
    records = []
    for line, fields in _lines(path):
        expected = 2 if subset == "train" else 1
        if len(fields) != expected:
            form = "'<Class>/<file>.avi <label>'" if subset == "train" else "'<Class>/<file>.avi'"
            raise AnnotationError(path, f"expected {form}, found {len(fields)} fields", line=line)
        relative = fields[0]
        parts = relative.split("/")
        if len(parts) != 2 or not parts[1]:
            raise AnnotationError(path, f"path {relative!r} is not <Class>/<file>", line=line, field="path")
        class_name, filename = parts
        if class_name not in classes:
            raise AnnotationError(
                path, f"class {class_name!r} is not in classInd.txt", line=line, field="path"
            )
        index = classes[class_name]
        if subset == "train":
            listed = parse_int(fields[1], path, "label", line=line)
            if listed != index:
                raise AnnotationError(
                    path,
                    f"label {listed} but {class_name!r} is class {index} in classInd.txt",
                    line=line,
                    field="label",
                )
        stem = Path(filename).stem
        unique.add(stem, line)
        records.append(
            ClipRecord(
                video_id=stem,
                captions=(class_caption(class_name),),
                audio_type=audio_type,
                label=index - 1,
                source="ucf101",
                **layout.resolve(stem, relative=relative),
            )
        )
    return records
