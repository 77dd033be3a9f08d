"""A config's data section -> the datasets of its splits (training, validation, test, evaluation).

Training tasks and evaluation scripts assemble their datasets here, so every route reads the
same records the same way: the corpus readers, the audio pairing of silent clips, the media
check at start-up, the epoch order over a corpus mixture.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

from clip4vla.config import DataConfig, RunConfig
from clip4vla.data.audio_pairs import apply_audio_pairs, read_audio_pairs
from clip4vla.data.corpora import corpus_names, corpus_splits, read_split
from clip4vla.data.dataset import SampleOptions, TriModalDataset, shard_id
from clip4vla.data.readers.manifest import EmptySplitError
from clip4vla.data.records import ClipRecord, check_media, missing_media_reason
from clip4vla.data.sampler import MixtureOrder
from clip4vla.data.shards import ShardStore
from clip4vla.data.span_table import concat_records, media_representatives
from clip4vla.data.synthetic import make_synthetic_dataset

__all__ = ["DataSplits", "ensure_synthetic", "evaluation_dataset", "split_datasets"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DataSplits:
    train: TriModalDataset
    val: TriModalDataset | None
    test: TriModalDataset | None
    # epoch order over the training records (the corpus mixture for howto_audioset)
    train_order: MixtureOrder


def ensure_synthetic(dc: DataConfig, corpus: str | None = None) -> None:
    """Generate the built-in synthetic set when it is the corpus in use (only what is missing)."""
    if (corpus or dc.corpus) == "synthetic":
        make_synthetic_dataset(Path(dc.synthetic.root), num_clips=dc.synthetic.clips, seed=dc.synthetic.seed)


def _manifest_reports_to(dc: DataConfig, output_dir: str) -> DataConfig:
    """A manifest's list of missing media goes to the run's folder unless the config names one."""
    if dc.manifest is None or dc.manifest.report_dir is not None:
        return dc
    return dataclasses.replace(dc, manifest=dataclasses.replace(dc.manifest, report_dir=str(output_dir)))


def _check_train_media(records: Sequence[ClipRecord], what: str, stores: dict[str, ShardStore] | None = None) -> None:
    """Existence of the training media at start-up: one check per video (a HowTo100M video
    stands for all of its windows), so 136 M windows cost 1.2 M checks, not 136 M. With shards,
    a clip is present when a shard holds it."""
    checked = media_representatives(records)
    if stores is not None:
        missing = [r for r in checked if r.source not in stores or shard_id(r) not in stores[r.source]]
        example = f"{shard_id(missing[0])} is in no shard of data.{missing[0].source}.shards_dir" if missing else ""
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
    ensure_synthetic(dc, corpus)
    records = read_split(dc, corpus, split, purpose)
    if not records:
        raise ValueError(f"the {split} split of {corpus} has no records")
    if dc.audio_pairs is not None:
        splits = {split: records}
        for other in (s for s in corpus_splits(corpus) if s != split):
            try:
                splits[other] = read_split(dc, corpus, other, purpose)
            except EmptySplitError:
                continue  # a manifest without this split
        apply_audio_pairs(list(splits.values()), splits["train"], read_audio_pairs(dc.audio_pairs),
                          f"data.audio_pairs={dc.audio_pairs}")
    return TriModalDataset(records, options, seed=config.train.seed)


def split_datasets(
    config: RunConfig,
    purpose: str,
    options: SampleOptions,
    eval_options: SampleOptions,
    unfold_train: bool = False,
) -> DataSplits:
    """Train / val / test datasets of ``config.data`` and the training order (all tasks use it).

    Every annotation file is read here, so a missing split or file fails at start-up, before any
    training. The synthetic corpus must exist already (:func:`ensure_synthetic`).
    """
    dc = _manifest_reports_to(config.data, config.train.output_dir)
    parts: list[Sequence[ClipRecord]] = []
    train_splits = [split.strip() for split in dc.train_split.split("+")]
    for corpus in corpus_names(dc.corpus):
        read = [read_split(dc, corpus, split, purpose, unfold_captions=unfold_train) for split in train_splits]
        # one split stays as read (HowTo100M's is a compact table, not a list); folds are joined
        records = read[0] if len(read) == 1 else [r for part in read for r in part]
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
    return DataSplits(
        train=TriModalDataset(train, options, seed=seed),
        val=TriModalDataset(val, eval_options, seed=seed) if val else None,
        test=TriModalDataset(test, eval_options, seed=seed) if test else None,
        train_order=MixtureOrder(sizes, weights=dc.mixture_weights, seed=seed),
    )
