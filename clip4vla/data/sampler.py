"""Which samples each rank sees, in which order: a pure function of (seed, epoch), resumable.

Two pieces, one job each:

- ``MixtureOrder`` — the epoch order over the concatenation of one or more datasets (the
  pre-training mixture of HowTo100M and AudioSet). Default (proportional): an epoch is a
  seeded permutation of everything, so each record appears once per epoch and the corpora mix in
  proportion to their sizes. With explicit ``weights`` an epoch holds ``round(w_d * num_samples)``
  draws from dataset ``d``, taken from an endless chain of per-dataset permutations, so even a
  small share walks through *all* of its dataset over successive epochs. REF's mixed loader
  picked datasets at random over ``len(audioset) * 2`` items and so only ever visited a fixed
  slice of HowTo100M; that is not copied.
- ``ResumableShardedSampler`` — shards an epoch order over ranks in whole global batches and can
  start mid-epoch, so a resumed run continues with exactly the batches it had not seen without
  decoding the skipped ones.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


class MixtureOrder:
    """Epoch orders over the concatenation of datasets of ``sizes`` (see the module docstring).

    Args:
        sizes: number of records of each dataset, in concatenation order.
        weights: optional share of each dataset per epoch (normalised); None = proportional
            to ``sizes``.
        num_samples: draws per epoch over all ranks; default ``sum(sizes)``.
        seed: base seed.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        sizes = [int(s) for s in sizes]
        if not sizes or any(s < 0 for s in sizes) or sum(sizes) == 0:
            raise ValueError(f"sizes must be non-negative with a positive total, got {sizes}")
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.num_samples = sum(sizes) if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if weights is None:
            self.weights = None
            self.counts = (
                list(sizes) if num_samples is None else self._split(np.asarray(sizes, dtype=np.float64))
            )
        else:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(sizes),) or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
                raise ValueError(
                    f"weights must be {len(sizes)} non-negative numbers with a positive sum, got {weights}"
                )
            if any(wi > 0 and s == 0 for wi, s in zip(w, sizes)):
                raise ValueError(
                    f"a dataset with a positive weight is empty: sizes {sizes}, weights {list(weights)}"
                )
            self.weights = (w / w.sum()).tolist()
            self.counts = self._split(w)
        self.seed = int(seed)

    def _split(self, shares: np.ndarray) -> list[int]:
        """Per-dataset draws per epoch summing exactly to ``num_samples`` (largest remainders)."""
        exact = shares / shares.sum() * self.num_samples
        counts = np.floor(exact).astype(np.int64)
        remainder = self.num_samples - int(counts.sum())
        counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
        return counts.tolist()

    def _stream(self, d: int, start: int, count: int) -> np.ndarray:
        """Positions ``[start, start + count)`` of dataset ``d``'s endless chain of permutations."""
        size = self.sizes[d]
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        first, last = start // size, (start + count - 1) // size
        chain = np.concatenate([_rng(self.seed, 1, d, k).permutation(size) for k in range(first, last + 1)])
        offset = start - first * size
        return chain[offset : offset + count]

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The whole epoch's order over all ranks (the sampler shards it).

        int32 while the records fit (HowTo100M's 136 M: 0.5 GB instead of 1.1 GB per rank); the
        same order as int64 (the shuffle draws do not depend on the item size).
        """
        epoch = int(epoch)
        dtype = np.int32 if int(self.offsets[-1]) < 2**31 and self.num_samples < 2**31 else np.int64
        shuffled = _rng(self.seed, 0, epoch).permutation(np.arange(self.num_samples, dtype=dtype))
        if self.weights is None and self.num_samples == sum(self.sizes):
            return shuffled
        parts = [
            (self.offsets[d] + self._stream(d, epoch * c, c)).astype(dtype) for d, c in enumerate(self.counts) if c > 0
        ]
        return np.concatenate(parts)[shuffled]


class ResumableShardedSampler(torch.utils.data.Sampler[int]):
    """This rank's indices of an epoch order; every rank gets the same number of whole batches.

    Batch ``b`` of rank ``r`` holds positions ``[b*B*W + r*B, b*B*W + (r+1)*B)`` of the epoch order:
    contiguous blocks keep a global batch identical whatever the number of ranks it is split
    over (so 2 ranks x 4 equals 1 rank x 8). The tail that does not fill a global batch is
    dropped (it changes every epoch), so all ranks gather equal-sized batches for the loss.
    """

    def __init__(
        self, order: MixtureOrder | int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0
    ) -> None:
        self.order = order if isinstance(order, MixtureOrder) else MixtureOrder([order], seed=seed)
        self.num_samples = self.order.num_samples
        if self.num_samples < batch_size * world_size:
            raise ValueError(
                f"{self.num_samples} samples cannot fill one global batch of {batch_size} x {world_size} ranks; "
                "lower train.batch_size or add data"
            )
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        order = self.order.epoch_indices(self.epoch)
        used = order[: self.batches_per_epoch * self.batch_size * self.world_size]
        mine = used.reshape(self.batches_per_epoch, self.world_size, self.batch_size)[self.start_batch :, self.rank]
        # a few batches at a time: Python ints for a rank's whole epoch would cost ~30 bytes each
        for start in range(0, len(mine), 1024):
            yield from mine[start : start + 1024].reshape(-1).tolist()
