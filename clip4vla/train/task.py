"""What a kind of training run supplies to the one training loop (``clip4vla.train.loop``).

The loop owns everything every run needs (DDP, precision, accumulation, clipping, schedule,
checkpoints, resume, validation cadence, best-checkpoint selection, logs, the model file). A
:class:`Task` owns what differs: its datasets, the module DDP wraps (the trainable towers), the
features of frozen towers, the loss and the modules it trains, the evaluation and the metric to
select on. Pre-training (:mod:`clip4vla.train.pretrain`) is one task; fine-tuning tasks are others.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from clip4vla.config import RunConfig
from clip4vla.data.audio_pairs import apply_audio_pairs, read_audio_pairs
from clip4vla.data.corpora import corpus_names, corpus_splits, read_split
from clip4vla.data.dataset import SampleOptions, TriModalDataset
from clip4vla.data.records import ClipRecord, check_media, missing_media_reason
from clip4vla.data.sampler import MixtureOrder
from clip4vla.data.shards import ShardStore
from clip4vla.data.span_table import concat_records, media_representatives
from clip4vla.data.synthetic import make_synthetic_dataset
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.train.distributed import DistInfo, barrier

log = logging.getLogger(__name__)

Features = dict[str, torch.Tensor]
Batch = dict[str, Any]


@dataclasses.dataclass
class TaskData:
    train: TriModalDataset
    val: TriModalDataset | None
    test: TriModalDataset | None
    # epoch order over the training records (the corpus mixture for howto_audioset)
    train_order: MixtureOrder


class Task:
    """Base class: override the methods below (see :class:`clip4vla.train.pretrain.PretrainTask`).

    The loop calls, in order: :meth:`datasets`, then (with the model built) :meth:`setup`, then per
    optimiser step :meth:`inputs`, :meth:`frozen_features`, ``forward_module(**inputs)`` and
    :meth:`loss`; for validation and test :meth:`evaluate`.
    """

    name = "task"
    # The validation metric best.pt is chosen on (a key of evaluate()'s "metrics"), and whether
    # the exported model is the last step's or the best validation's.
    select_metric = ""
    export = "best"
    # True: the loss couples the samples of the batch (contrastive), so accumulation caches
    # features and re-encodes (every accumulated sample is a negative). False: micro-batch losses
    # are independent and accumulate as plain gradient sums.
    batch_coupled = True
    # training-loss keys worth plotting
    loss_keys: tuple[str, ...] = ("loss",)
    # fine-tuning starts from a pre-trained model (model.init_from), never from random towers
    requires_init = False

    def __init__(self, config: RunConfig, dist: DistInfo) -> None:
        self.config = config
        self.dist = dist
        self.device = dist.device
        self.forward_module: nn.Module = nn.Identity()
        self.loss_module: nn.Module = nn.Module()  # trained outside DDP (gradients all-reduced)

    # -- data ----------------------------------------------------------------------------------

    def datasets(self) -> TaskData:
        raise NotImplementedError

    def preprocessing(self) -> Preprocessing:
        """What the exported model records about its inputs."""
        raise NotImplementedError

    # -- model ---------------------------------------------------------------------------------

    def setup(self, model: CLIP4VLA) -> None:
        """Add task heads to ``model`` and build ``forward_module`` and ``loss_module``."""
        raise NotImplementedError

    def inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The tensors of a collated batch that the step needs, on the run's device."""
        raise NotImplementedError

    def frozen_features(self, inputs: dict[str, torch.Tensor]) -> Features:
        """Features of frozen towers (no autograd, computed once per micro-batch); {} when none."""
        return {}

    def loss(self, features: Features, batches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss over the features of ``batches`` (the micro-batches of one step, concatenated)."""
        raise NotImplementedError

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self, model: CLIP4VLA, dataset: TriModalDataset, split: str) -> dict[str, Any]:
        """``{"metrics": {flat name: float}, ...}`` on one split (called on the main rank only)."""
        raise NotImplementedError

    def report(self, result: dict[str, Any]) -> str:
        """The table the script prints for a test result."""
        raise NotImplementedError

    def summary(self, result: dict[str, Any]) -> dict[str, Any]:
        """The JSON object the script prints last."""
        return {"split": result.get("split"), **result.get("metrics", {})}


# ---------------------------------------------------------------------------------- datasets


def _check_train_media(records: Sequence[ClipRecord], what: str, stores: dict[str, ShardStore] | None = None) -> None:
    """Existence of the training media at start-up: one check per video (a HowTo100M video
    stands for all of its windows), so 136 M windows cost 1.2 M checks, not 136 M. With shards,
    a clip is present when a shard holds it."""
    checked = media_representatives(records)
    if stores is not None:
        missing = [r for r in checked if r.source not in stores or r.video_id not in stores[r.source]]
        example = f"{missing[0].video_id} is in no shard of data.{missing[0].source}.shards_dir" if missing else ""
    else:
        _, missing = check_media(checked, require_audio=False)
        example = missing_media_reason(missing[0], False) if missing else ""
    unit = "videos" if len(checked) != len(records) else "training records"
    if missing:
        log.warning("%d of %d %s have missing media (their samples will be skipped), e.g. %s",
                    len(missing), len(checked), unit, example)
    if len(missing) == len(checked):
        raise ValueError(f"no usable training sample: all {len(checked)} {unit} of {what} miss their media")


def evaluation_dataset(config: RunConfig, split: str, purpose: str, options: SampleOptions,
                       corpus: str | None = None) -> TriModalDataset:
    """One evaluation split as a dataset, with ``data.audio_pairs`` applied (for evaluation scripts).

    The pairing is checked against every split of the corpus, as in training.
    """
    dc = config.data
    corpus = corpus or dc.eval_corpus or dc.corpus
    if corpus == "synthetic":
        make_synthetic_dataset(Path(dc.synthetic.root), num_clips=dc.synthetic.clips, seed=dc.synthetic.seed)
    records = read_split(dc, corpus, split, purpose)
    if not records:
        raise ValueError(f"the {split} split of {corpus} has no records")
    if dc.audio_pairs is not None:
        splits = {s: (records if s == split else read_split(dc, corpus, s, purpose)) for s in corpus_splits(corpus)}
        apply_audio_pairs(list(splits.values()), splits["train"], read_audio_pairs(dc.audio_pairs),
                          f"data.audio_pairs={dc.audio_pairs}")
    return TriModalDataset(records, options, seed=config.train.seed)


def split_datasets(
    config: RunConfig,
    dist: DistInfo,
    purpose: str,
    options: SampleOptions,
    eval_options: SampleOptions,
    unfold_train: bool = False,
) -> TaskData:
    """Train / val / test datasets of ``config.data`` and the training order (all tasks use it).

    The synthetic corpus is generated first (main rank, others wait). Every annotation file is
    read here, so a missing split or file fails at start-up, before any training.
    """
    dc = config.data
    if dc.corpus == "synthetic":
        if dist.is_main:
            make_synthetic_dataset(Path(dc.synthetic.root), num_clips=dc.synthetic.clips, seed=dc.synthetic.seed)
        barrier()
    parts: list[Sequence[ClipRecord]] = []
    for corpus in corpus_names(dc.corpus):
        records = read_split(dc, corpus, "train", purpose, unfold_captions=unfold_train)
        log.info("%s: %d training records", corpus, len(records))
        parts.append(records)
    sizes = [len(p) for p in parts]
    train = concat_records(parts)  # a list, or a view over HowTo100M's compact span table
    if dc.mixture_weights is not None and len(dc.mixture_weights) != len(sizes):
        raise ValueError(f"data.mixture_weights has {len(dc.mixture_weights)} entries for {len(sizes)} corpora")
    stores = {c: ShardStore.shared([f]) for c, f in options.shards} if options.media == "shards" else None
    _check_train_media(train, f"data.corpus={dc.corpus}", stores)

    eval_corpus = dc.eval_corpus or dc.corpus
    evals: list[list[ClipRecord] | None] = []
    for key, split in (("val_split", dc.val_split), ("test_split", dc.test_split)):
        if split is None:
            evals.append(None)
            continue
        if eval_corpus == "howto_audioset":
            raise ValueError(f"data.{key}={split}: data.corpus=howto_audioset has no {split} split; set data.eval_corpus")
        try:
            records = read_split(dc, eval_corpus, split, purpose)
        except ValueError as err:
            raise ValueError(f"data.{key}: {err}") from err
        if not records:
            raise ValueError(f"data.{key}: the {split} split of {eval_corpus} has no records")
        evals.append(records)
    val, test = evals
    if dc.audio_pairs is not None:
        if not isinstance(train, list):
            raise ValueError("data.audio_pairs pairs silent clips of a fine-tuning corpus; HowTo100M windows "
                             "cannot be donors (set data.audio_pairs: null)")
        pairs = read_audio_pairs(dc.audio_pairs)
        n = apply_audio_pairs([r for r in (train, val, test) if r], train, pairs, f"data.audio_pairs={dc.audio_pairs}")
        log.info("%d silent clips get the audio of their nearest training clip (%s)", n, dc.audio_pairs)
    seed = config.train.seed
    return TaskData(
        train=TriModalDataset(train, options, seed=seed),
        val=TriModalDataset(val, eval_options, seed=seed) if val else None,
        test=TriModalDataset(test, eval_options, seed=seed) if test else None,
        train_order=MixtureOrder(sizes, weights=dc.mixture_weights, seed=seed),
    )
