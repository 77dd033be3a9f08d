"""VATEX annotations: ``[{"videoID", "enCap": [10 captions]}]`` json files.

``videoID`` is ``<ytid>_<start:06d>_<end:06d>`` (YouTube ids may themselves contain ``_``, so it
is split from the right). Media naming, chosen by ``media``:

- ``"clip"`` (default): the 10-s clips as usually downloaded, ``<video_dir>/<videoID>.mp4``;
  the whole file is the clip, so ``start``/``end`` are None (the window is still parsed and
  validated).
- ``"full"``: full YouTube videos ``<video_dir>/<ytid>.mp4`` (prepared media named after the
  ytid too); ``start``/``end`` come from the id. ``video_id`` stays the VATEX ``videoID``.

Splits: without ``split_csv``, ``train`` / ``val`` / ``test`` read the training / validation /
public-test json. With ``split_csv`` (a csv with column ``video_id``, e.g. the common retrieval
split 25991 / 1500 / 1500 that carves val and test out of the official validation set), the
listed ids are looked up in every VATEX json present in ``annotation_dir``.

Audio type defaults to ``"vb"`` like MSR-VTT; the fine-tuning mixing ratio (REF 0.5) is the model
config's business.
"""

from __future__ import annotations

import os
from pathlib import Path

from clip4vla.data.readers._common import (
    check_choice,
    default_unfold,
    load_json,
    parse_audio_type,
    parse_caption,
    read_id_list,
    require_fields,
    require_file,
)
from clip4vla.data.records import AnnotationError, ClipRecord, MediaLayout

SPLIT_FILES = {
    "train": "vatex_training_v1.0.json",
    "val": "vatex_validation_v1.0.json",
    "test": "vatex_public_test_english_v1.1.json",
}


def parse_vatex_id(video_id: str) -> tuple[str, float, float]:
    """``"abc_def_000012_000022"`` -> ``("abc_def", 12.0, 22.0)``; ValueError when malformed."""
    parts = video_id.rsplit("_", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(f"videoID {video_id!r} is not <ytid>_<start:06d>_<end:06d>")
    start, end = float(parts[1]), float(parts[2])
    if end <= start:
        raise ValueError(f"videoID {video_id!r}: end {end:g} is not after start {start:g}")
    return parts[0], start, end


def _read_json(path: Path) -> dict[str, tuple[list[str], float, float, str]]:
    """videoID -> (captions, start, end, ytid), validated."""
    data = load_json(path)
    if not isinstance(data, list):
        raise AnnotationError(path, "top level must be a list of {videoID, enCap} objects")
    out: dict[str, tuple[list[str], float, float, str]] = {}
    for i, entry in enumerate(data):
        where = f"[{i}]"
        require_fields(entry, ("videoID", "enCap"), path, where)
        vid = entry["videoID"]
        try:
            ytid, start, end = parse_vatex_id(str(vid))
        except ValueError as err:
            raise AnnotationError(path, str(err), location=where, field="videoID") from None
        caps = entry["enCap"]
        if not isinstance(caps, list) or not caps:
            raise AnnotationError(path, "must be a non-empty list of captions", location=where, field="enCap")
        captions = [
            parse_caption(c, path, "enCap", location=f"{where}.enCap[{j}]") for j, c in enumerate(caps)
        ]
        if vid in out:
            raise AnnotationError(path, f"duplicate videoID {vid!r}", location=where, field="videoID")
        out[vid] = (captions, start, end, ytid)
    return out


def read_vatex(
    annotation_dir: str | os.PathLike,
    split: str,
    *,
    split_csv: str | os.PathLike | None = None,
    video_dir: str | os.PathLike | None = None,
    prepared_dir: str | os.PathLike | None = None,
    media: str = "clip",
    unfold_captions: bool | None = None,
    audio_type: str = "vb",
) -> list[ClipRecord]:
    """VATEX records, 10 English captions per clip.

    Args:
        annotation_dir: folder with the official json files (names in ``SPLIT_FILES``).
        split: ``"train"``, ``"val"`` or ``"test"`` (decides the default caption unfolding, and
            the json read when ``split_csv`` is None).
        split_csv: optional csv (column ``video_id``) listing the split's videos.
        video_dir / prepared_dir: media roots; ``media``: ``"clip"`` or ``"full"`` (module doc).
        unfold_captions: one record per caption (default for train) or per clip with all captions.
        audio_type: ``"vb"`` or ``"nb"``.
    """
    check_choice("VATEX split", split, tuple(SPLIT_FILES))
    check_choice("VATEX media", media, ("clip", "full"))
    parse_audio_type(audio_type, Path("<argument>"), "audio_type")
    root = Path(annotation_dir)
    if split_csv is None:
        entries = _read_json(require_file(root / SPLIT_FILES[split], f"VATEX {split} json"))
        selected = list(entries)
    else:
        entries = {}
        found = [root / name for name in SPLIT_FILES.values() if (root / name).is_file()]
        if not found:
            raise FileNotFoundError(f"no VATEX json ({', '.join(SPLIT_FILES.values())}) in {root}")
        for path in found:
            for vid, value in _read_json(path).items():
                if vid in entries:
                    raise AnnotationError(
                        path, f"videoID {vid!r} also appears in another VATEX json", field="videoID"
                    )
                entries[vid] = value
        csv_path = require_file(split_csv, "VATEX split csv")
        selected = []
        for line, vid in read_id_list(csv_path):
            if vid not in entries:
                raise AnnotationError(
                    csv_path, f"video {vid!r} is in no VATEX json", line=line, field="video_id"
                )
            selected.append(vid)

    layout = MediaLayout(video_dir=video_dir, prepared_dir=prepared_dir)
    unfold = default_unfold(unfold_captions, split)
    records = []
    for vid in selected:
        captions, start, end, ytid = entries[vid]
        if media == "full":
            # Prepared media mirror the raw file (the whole YouTube video), so the window applies to both.
            paths, window = layout.resolve(ytid), {"start": start, "end": end}
        else:
            paths, window = layout.resolve(vid), {}
        chunks = [(c,) for c in captions] if unfold else [tuple(captions)]
        for chunk in chunks:
            records.append(
                ClipRecord(
                    video_id=vid, captions=chunk, audio_type=audio_type, source="vatex", **paths, **window
                )
            )
    return records
