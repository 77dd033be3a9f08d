"""MSR-VTT annotations: retrieval 9k / 1k-A and captioning by the official split.

Files (standard names, all in ``annotation_dir``):

- ``MSRVTT_data.json``: ``{"videos": [{"video_id", "split", ...}], "sentences": [{"video_id",
  "caption", "sen_id"}]}``. ``split`` is one of ``train`` / ``validate`` / ``test``.
  Our extension: a video entry may carry ``"audio_type": "vb" | "nb"`` (the built-in synthetic
  dataset uses it); without it a clip is ``"vb"``. Fine-tuning's VB/NB mixing ratio (REF: 0.5)
  is applied by the model config, not here.
- ``MSRVTT_train.9k.csv``: column ``video_id``, the 9k retrieval training videos.
- ``MSRVTT_JSFUSION_test.csv``: ``key,vid_key,video_id,sentence`` (the real file also has a
  leading unnamed index column), the 1k-A test set with one caption per video.
- ``MSRVTT_val.csv`` (our extension, optional): the same format, a retrieval validation set to
  choose checkpoints on (fine-tuning selects on validation, never on test; REF selected on test). The official release has none: build
  it from videos outside the 9k list and 1k-A (the synthetic dataset writes one).

Media: ``<video_dir>/<video_id>.mp4`` (MSR-VTT clips are distributed trimmed: whole file).
"""

from __future__ import annotations

import os
from pathlib import Path

from clip4vla.data.readers._common import (
    UniqueLines,
    check_choice,
    default_unfold,
    load_json,
    parse_audio_type,
    parse_caption,
    read_csv,
    read_id_list,
    require_fields,
    require_file,
)
from clip4vla.data.records import AnnotationError, ClipRecord, MediaLayout

DATA_JSON = "MSRVTT_data.json"
TRAIN_9K_CSV = "MSRVTT_train.9k.csv"
TEST_1KA_CSV = "MSRVTT_JSFUSION_test.csv"
VAL_CSV = "MSRVTT_val.csv"  # our extension, same format as the 1k-A csv
OFFICIAL_SPLITS = ("train", "validate", "test")
_CAPTIONING_SPLIT = {"train": "train", "val": "validate", "validate": "validate", "test": "test"}


class _MsrvttJson:
    """Videos (id -> (split, audio_type)) and captions (id -> [caption, ...]) of ``MSRVTT_data.json``."""

    def __init__(self, path: Path) -> None:
        data = load_json(path)
        if not isinstance(data, dict):
            raise AnnotationError(path, "top level must be an object with 'videos' and 'sentences'")
        for key in ("videos", "sentences"):
            if not isinstance(data.get(key), list):
                raise AnnotationError(path, "missing or not a list", location=key, field=key)
        self.path = path
        self.videos: dict[str, tuple[str, str]] = {}
        for i, video in enumerate(data["videos"]):
            where = f"videos[{i}]"
            require_fields(video, ("video_id", "split"), path, where)
            vid = str(video["video_id"])
            if video["split"] not in OFFICIAL_SPLITS:
                raise AnnotationError(
                    path,
                    f"unknown split {video['split']!r}, expected {OFFICIAL_SPLITS}",
                    location=where,
                    field="split",
                )
            audio_type = parse_audio_type(video.get("audio_type", "vb"), path, "audio_type", location=where)
            if vid in self.videos:
                raise AnnotationError(path, f"duplicate video_id {vid!r}", location=where, field="video_id")
            self.videos[vid] = (video["split"], audio_type)
        self.captions: dict[str, list[str]] = {}
        for i, sentence in enumerate(data["sentences"]):
            where = f"sentences[{i}]"
            require_fields(sentence, ("video_id", "caption"), path, where)
            vid = str(sentence["video_id"])
            if vid not in self.videos:
                raise AnnotationError(
                    path, f"caption for unknown video {vid!r}", location=where, field="video_id"
                )
            caption = parse_caption(sentence["caption"], path, "caption", location=where)
            self.captions.setdefault(vid, []).append(caption)


def read_msrvtt(
    annotation_dir: str | os.PathLike,
    split: str,
    task: str = "retrieval",
    *,
    video_dir: str | os.PathLike | None = None,
    prepared_dir: str | os.PathLike | None = None,
    unfold_captions: bool | None = None,
    val_source: str = "official",
) -> list[ClipRecord]:
    """MSR-VTT records.

    Args:
        annotation_dir: folder holding the three standard files (see module docstring).
        split: ``task="retrieval"``: ``"train"`` (the 9k list), ``"val"`` or ``"test"`` (1k-A csv).
            ``val_source`` says where retrieval validation comes from: ``"official"`` (default)
            holds out the official ``validate`` videos (497 in the release, one caption each,
            1k-A style) and removes them from the 9k training list, so checkpoints are chosen on
            videos never trained on and never on the test; ``"csv"`` reads ``MSRVTT_val.csv``.
            ``task="captioning"``: ``"train"``, ``"val"`` (= official ``validate``) or ``"test"``.
        task: ``"retrieval"`` or ``"captioning"``.
        video_dir / prepared_dir: media roots (see ``clip4vla.data.records``).
        unfold_captions: True = one record per (video, caption) pair, as CLIP4Clip trains;
            False = one record per video with all its captions (evaluation, multi-caption
            positives). Default: True for ``train``, False otherwise.

    The 1k-A test (and val) csv suffices alone; ``MSRVTT_data.json`` is read too when present, to
    check the ids and pick up per-video ``audio_type``.
    """
    check_choice("task", task, ("retrieval", "captioning"))
    root = Path(annotation_dir)
    layout = MediaLayout(video_dir=video_dir, prepared_dir=prepared_dir)
    unfold = default_unfold(unfold_captions, split)

    if task == "retrieval":
        check_choice("MSR-VTT retrieval split", split, ("train", "val", "test"))
        check_choice("MSR-VTT val_source", val_source, ("official", "csv"))
        if split == "test" or (split == "val" and val_source == "csv"):
            return _read_caption_csv(root, VAL_CSV if split == "val" else TEST_1KA_CSV, layout)
        meta = _MsrvttJson(require_file(root / DATA_JSON, "MSR-VTT data json"))
        held_out = {vid for vid, (video_split, _) in meta.videos.items() if video_split == "validate"}
        if split == "val":
            groups = [(vid, meta.captions[vid][:1], meta.videos[vid][1]) for vid in meta.videos
                      if vid in held_out and vid in meta.captions]
            return _to_records(groups, layout, unfold=False)
        csv_path = require_file(root / TRAIN_9K_CSV, "MSR-VTT 9k train csv")
        groups = []
        for line, vid in read_id_list(csv_path):
            if val_source == "official" and vid in held_out:
                continue  # the validation videos
            if vid not in meta.videos:
                raise AnnotationError(
                    csv_path, f"video {vid!r} is not in {DATA_JSON}", line=line, field="video_id"
                )
            if vid not in meta.captions:
                raise AnnotationError(
                    csv_path, f"video {vid!r} has no caption in {DATA_JSON}", line=line, field="video_id"
                )
            groups.append((vid, meta.captions[vid], meta.videos[vid][1]))
    else:
        check_choice("MSR-VTT captioning split", split, tuple(_CAPTIONING_SPLIT))
        meta = _MsrvttJson(require_file(root / DATA_JSON, "MSR-VTT data json"))
        official = _CAPTIONING_SPLIT[split]
        groups = []
        for vid, (video_split, audio_type) in meta.videos.items():
            if video_split != official:
                continue
            if vid not in meta.captions:
                raise AnnotationError(
                    meta.path, f"video {vid!r} has no caption", location="sentences", field="video_id"
                )
            groups.append((vid, meta.captions[vid], audio_type))
    return _to_records(groups, layout, unfold)


def _read_caption_csv(root: Path, name: str, layout: MediaLayout) -> list[ClipRecord]:
    """A 1k-A style csv (``key,vid_key,video_id,sentence``): one record per video, one caption."""
    csv_path = require_file(root / name, f"MSR-VTT {name}")
    json_path = root / DATA_JSON
    meta = _MsrvttJson(json_path) if json_path.is_file() else None
    groups = []
    unique = UniqueLines(csv_path, "video_id", "video")
    for line, row in read_csv(csv_path, ["video_id", "sentence"]):
        vid = row["video_id"]
        if not vid:
            raise AnnotationError(csv_path, "empty id", line=line, field="video_id")
        unique.add(vid, line)  # 1k-A is one caption per video
        caption = parse_caption(row["sentence"], csv_path, "sentence", line=line)
        audio_type = "vb"
        if meta is not None:
            if vid not in meta.videos:
                raise AnnotationError(
                    csv_path, f"video {vid!r} is not in {DATA_JSON}", line=line, field="video_id"
                )
            audio_type = meta.videos[vid][1]
        groups.append((vid, [caption], audio_type))
    return _to_records(groups, layout, unfold=False)


def _to_records(
    groups: list[tuple[str, list[str], str]], layout: MediaLayout, unfold: bool
) -> list[ClipRecord]:
    records = []
    for vid, captions, audio_type in groups:
        media = layout.resolve(vid)
        chunks = [(c,) for c in captions] if unfold else [tuple(captions)]
        for chunk in chunks:
            records.append(
                ClipRecord(video_id=vid, captions=chunk, audio_type=audio_type, source="msrvtt", **media)
            )
    return records
