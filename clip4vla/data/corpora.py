"""From the data config to the records of one split of one corpus.

Each corpus has its own typed config section (``data.msrvtt``, ``data.vatex``, ...; see
``clip4vla.config``) holding the reader's paths, so this module only decides which reader call a
``(corpus, split, purpose)`` means. ``purpose`` matters where a corpus has several split schemes
(MSR-VTT retrieval 9k / 1k-A vs the official captioning split) and for caption unfolding.
"""

from __future__ import annotations

import dataclasses

from pathlib import Path
from typing import Any

from clip4vla.config import DataConfig
from clip4vla.data.readers import (
    read_audiocaps,
    read_audioset,
    read_esc50,
    read_howto100m,
    read_msrvtt,
    read_ucf101,
    read_vatex,
)
from clip4vla.data.readers.manifest import read_manifest_split
from clip4vla.data.records import ClipRecord

__all__ = ["PURPOSES", "corpus_names", "corpus_splits", "read_split"]

PURPOSES = ("pretrain", "retrieval", "caption", "classification")
# The splits each corpus offers to read_split (ESC-50 splits are folds; probes pick them).
_SPLITS = {
    "synthetic": ("train", "val", "test"),
    "msrvtt": ("train", "val", "test"),
    "vatex": ("train", "val", "test"),
    "audiocaps": ("train", "val", "test"),
    "howto100m": ("train",),
    "audioset": ("train",),
    "esc50": ("fold1", "fold2", "fold3", "fold4", "fold5"),
    "ucf101": ("train", "test"),
    "manifest": ("train", "val", "test"),  # or the names of its split column (data.train_split etc.)
}


def corpus_names(corpus: str) -> list[str]:
    """The corpora behind a ``data.corpus`` value (``howto_audioset`` is two)."""
    return ["howto100m", "audioset"] if corpus == "howto_audioset" else [corpus]


def corpus_splits(corpus: str) -> tuple[str, ...]:
    return _SPLITS[corpus]


def manifest_splits(data: DataConfig) -> list[str]:
    """The split names a manifest's split column may use: train / val / test and the config's own."""
    names = ["train", "val", "test", *data.train_split.split("+"), data.val_split, data.test_split]
    return list(dict.fromkeys(n.strip() for n in names if n))


def _section(data: DataConfig, corpus: str) -> Any:
    section = getattr(data, corpus)
    if section is None:
        raise ValueError(
            f"data.{corpus} is not configured: data.corpus / data.eval_corpus use {corpus!r}, so the config "
            f"needs a data.{corpus} section with its paths (see configs/ for an example)"
        )
    return section


def _paths(section: Any, *names: str) -> dict[str, Any]:
    return {name: getattr(section, name) for name in names if getattr(section, name) is not None}


def read_split(data: DataConfig, corpus: str, split: str, purpose: str, unfold_captions: bool = False) -> list[ClipRecord]:
    """Records of ``split`` of ``corpus``, as configured in ``data.<corpus>``.

    ``unfold_captions``: one record per (clip, caption) pair instead of one per clip with all its
    captions (training visits every caption; evaluation groups them as multi-caption positives).
    Raises ``ValueError`` for a split the corpus does not have, ``FileNotFoundError`` /
    ``AnnotationError`` for missing or malformed annotation files (at start-up, before any work).
    """
    if corpus not in _SPLITS:
        raise ValueError(f"unknown corpus {corpus!r}; choose one of {sorted(_SPLITS)}")
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}; choose one of {PURPOSES}")
    if corpus == "manifest":
        records = read_manifest_split(_section(data, corpus), split, purpose, known_splits=manifest_splits(data),
                                      unfold_captions=unfold_captions)
        # data.audio_pairs rewrites records in place: a list then, not the compact table
        return list(records) if data.audio_pairs is not None else records
    if split not in _SPLITS[corpus]:
        raise ValueError(f"{corpus} has no split {split!r}; its splits are {list(_SPLITS[corpus])}")

    if corpus == "synthetic":
        # The built-in set is laid out like MSR-VTT; its official split has all five captions per clip.
        root = Path(data.synthetic.root)
        records = read_msrvtt(root, split, task="captioning", video_dir=root / "videos", unfold_captions=unfold_captions)
        return [dataclasses.replace(r, source="synthetic") for r in records]
    section = _section(data, corpus)
    if corpus == "msrvtt":
        task = "captioning" if purpose == "caption" else "retrieval"
        return read_msrvtt(section.annotation_dir, split, task=task, unfold_captions=unfold_captions,
                           val_source=section.val_source, **_paths(section, "video_dir", "prepared_dir"))
    if corpus == "vatex":
        split_csv = getattr(section, f"{split}_csv")
        return read_vatex(section.annotation_dir, split, split_csv=split_csv, media=section.media,
                          unfold_captions=unfold_captions, **_paths(section, "video_dir", "prepared_dir"))
    if corpus == "audiocaps":
        return read_audiocaps(section.annotation_dir, split, media=section.media, unfold_captions=unfold_captions,
                              **_paths(section, "video_dir", "audio_dir", "prepared_dir"))
    if corpus == "howto100m":
        video_ids = None
        if section.video_ids_file is not None:
            video_ids = [line.strip() for line in Path(section.video_ids_file).read_text().splitlines() if line.strip()]
        return read_howto100m(section.caption_path, video_ids=video_ids, min_seconds=section.min_seconds,
                              min_words=section.min_words, **_paths(section, "video_dir", "prepared_dir"))
    if corpus == "audioset":
        return read_audioset(section.segments_csv, section.ontology_json, media=section.media,
                             name_format=section.name_format,
                             **_paths(section, "video_dir", "audio_dir", "prepared_dir"))
    if corpus == "esc50":
        return read_esc50(section.root, folds=[int(split[-1])], **_paths(section, "prepared_dir"))
    return read_ucf101(section.list_dir, split=section.split, subset=split,
                       **_paths(section, "video_dir", "prepared_dir"))
