"""From the data config to the train / validation / test datasets of a pre-training run."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from clip4vla.config import PretrainConfig
from clip4vla.data.dataset import SampleOptions, TriModalDataset
from clip4vla.data.records import ClipRecord, check_media, missing_media_reason
from clip4vla.data.readers import READERS
from clip4vla.data.sampler import MixtureOrder
from clip4vla.data.synthetic import make_synthetic_dataset
from clip4vla.train.distributed import DistInfo, barrier

log = logging.getLogger(__name__)


def sample_options(config: PretrainConfig) -> SampleOptions:
    dc, ac = config.data, config.audio
    return SampleOptions(
        max_words=dc.max_words,
        max_frames=dc.max_frames,
        frame_sampling=dc.frame_sampling,
        frame_order=dc.frame_order,
        frontend=ac.frontend,
        max_segments=ac.max_segments,
        selection=ac.selection,
        max_seconds=ac.max_seconds,
        media=dc.media,
        masked_audio=config.loss.intra_modal,
        mask_mode=ac.mask_mode,
        random_caption=True,
        cache_decoded=dc.cache_decoded,
    )


def _read(name: str, args: dict[str, Any]) -> list[ClipRecord]:
    if name not in READERS:
        raise ValueError(f"unknown reader {name!r}; available: {sorted(READERS)}")
    return READERS[name](**args)


@dataclasses.dataclass
class PretrainData:
    train: TriModalDataset
    val: TriModalDataset | None
    test: TriModalDataset | None
    # epoch order over the training records (the corpus mixture for howto_audioset)
    train_order: MixtureOrder


def _synthetic_records(config: PretrainConfig, dist: DistInfo) -> tuple[list, list, list]:
    dc = config.data
    root = Path(dc.root)
    if dist.is_main:
        make_synthetic_dataset(root, num_clips=dc.synthetic_clips, seed=dc.synthetic_seed)
    barrier()
    common = dict(task="captioning", video_dir=root / "videos", unfold_captions=False)
    train, val, test = (_read("msrvtt", {"annotation_dir": root, "split": s, **common}) for s in ("train", "val", "test"))
    return train, val, test, [len(train)]


def _corpus_records(config: PretrainConfig) -> tuple[list, list | None, list | None, list[int]]:
    dc = config.data
    args = dict(dc.reader_args)
    eval_args = {split: args.pop(split, None) for split in ("val", "test")}
    names = ["howto100m", "audioset"] if dc.dataset == "howto_audioset" else [dc.dataset]
    train: list[ClipRecord] = []
    sizes: list[int] = []
    for name in names:
        if name not in args:
            raise ValueError(f"data.reader_args.{name} is required for data.dataset={dc.dataset} (reader keyword arguments)")
        records = _read(name, args.pop(name))
        log.info("%s: %d training records", name, len(records))
        train.extend(records)
        sizes.append(len(records))
    if args:
        raise ValueError(f"data.reader_args has unused entries {sorted(args)} for data.dataset={dc.dataset}")
    evals = []
    for split, spec in eval_args.items():
        if spec is None:
            evals.append(None)
            continue
        spec = dict(spec)
        evals.append(_read(spec.pop("reader"), spec))
    return train, evals[0], evals[1], sizes


def build_pretrain_datasets(config: PretrainConfig, dist: DistInfo) -> PretrainData:
    """Train/val/test datasets and the training order; fails at start-up without usable media."""
    if config.data.dataset == "synthetic":
        train, val, test, sizes = _synthetic_records(config, dist)
    else:
        train, val, test, sizes = _corpus_records(config)
    weights = config.data.mixture_weights
    if weights is not None and len(weights) != len(sizes):
        raise ValueError(f"data.mixture_weights has {len(weights)} entries for {len(sizes)} corpora")
    present, missing = check_media(train, require_audio=False)
    if missing:
        log.warning(
            "%d of %d training records have missing media (they will be skipped), e.g. %s",
            len(missing), len(train), missing_media_reason(missing[0], False),
        )
    if not present:
        raise ValueError(f"no usable training sample: all {len(train)} records miss their media (data.root={config.data.root})")
    options = sample_options(config)
    eval_options = dataclasses.replace(options, masked_audio=False, random_caption=False, frame_order="normal")
    seed = config.train.seed
    return PretrainData(
        train=TriModalDataset(train, options, seed=seed),
        val=TriModalDataset(val, eval_options, seed=seed) if val else None,
        test=TriModalDataset(test, eval_options, seed=seed) if test else None,
        train_order=MixtureOrder(sizes, weights=weights, seed=seed),
    )
