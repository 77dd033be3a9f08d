"""The pre-training mixture of HowTo100M and AudioSet (SPEC §8): one sampler over several record
lists, drawing each dataset in proportion to its size over its full length.

REF's mixed loader reported ``len(audioset) * 2`` as its length and picked the dataset at random,
so only a fixed slice of HowTo100M was ever visited; that is not copied. Here every record of
every dataset is reachable:

- default (proportional): an epoch is a seeded permutation of the concatenation, so each record
  appears exactly once per epoch and the datasets are mixed exactly in proportion to their sizes;
- explicit ``weights``: an epoch holds ``round(w_d * num_samples)`` draws from dataset ``d``, taken
  consecutively from an endless stream of per-dataset permutations (a new permutation each pass),
  so a small share still walks through *all* of its dataset over successive epochs before any
  record repeats.

Everything is a pure function of ``(seed, epoch)``: no hidden state, so resuming at an epoch
replays it. For distributed training each rank takes a disjoint, equal-size shard
(``indices[rank::world_size]`` of the epoch order, like ``DistributedSampler``); with
``drop_last`` (default) the epoch is cut to a multiple of ``world_size`` (the few dropped indices
differ every epoch because the order is reshuffled), otherwise it is padded by wrapping around.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from clip4vla.data.records import ClipRecord


def concat_records(*datasets: Sequence[ClipRecord]) -> tuple[list[ClipRecord], list[int]]:
    """One record list plus the dataset sizes, in the order ``MixtureSampler`` indexes them."""
    records: list[ClipRecord] = []
    for d in datasets:
        records.extend(d)
    return records, [len(d) for d in datasets]


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


class MixtureSampler(torch.utils.data.Sampler[int]):
    """Indices into the concatenation of datasets of ``sizes`` (see module docstring).

    Args:
        sizes: number of records of each dataset, in concatenation order.
        weights: optional share of each dataset per epoch (normalised); None = proportional
            to ``sizes``.
        num_samples: draws per epoch over all ranks; default ``sum(sizes)``.
        seed: base seed; call ``set_epoch`` before each epoch.
        rank, world_size: this process's shard.
        drop_last: cut (True) or pad (False) the epoch to a multiple of ``world_size``.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        sizes = [int(s) for s in sizes]
        if not sizes or any(s < 0 for s in sizes) or sum(sizes) == 0:
            raise ValueError(f"sizes must be non-negative with a positive total, got {sizes}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
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
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0

    def _split(self, shares: np.ndarray) -> list[int]:
        """Per-dataset draws per epoch summing exactly to ``num_samples`` (largest remainders)."""
        exact = shares / shares.sum() * self.num_samples
        counts = np.floor(exact).astype(np.int64)
        remainder = self.num_samples - int(counts.sum())
        counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
        return counts.tolist()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _stream(self, d: int, start: int, count: int) -> np.ndarray:
        """Positions ``[start, start + count)`` of dataset ``d``'s endless chain of permutations."""
        size = self.sizes[d]
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        first, last = start // size, (start + count - 1) // size
        chain = np.concatenate([_rng(self.seed, 1, d, k).permutation(size) for k in range(first, last + 1)])
        offset = start - first * size
        return chain[offset : offset + count]

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The whole epoch's order over all ranks (before sharding)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.weights is None and self.num_samples == sum(self.sizes):
            order = _rng(self.seed, 0, epoch).permutation(self.num_samples)
        else:
            parts = [
                self.offsets[d] + self._stream(d, epoch * c, c) for d, c in enumerate(self.counts) if c > 0
            ]
            order = np.concatenate(parts)[_rng(self.seed, 0, epoch).permutation(self.num_samples)]
        return order.astype(np.int64)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_indices()
        total = len(self) * self.world_size
        if total > len(order):
            order = np.resize(order, total)  # wraps around from the start, like DistributedSampler
        shard = order[:total][self.rank :: self.world_size]
        return iter(shard.tolist())
