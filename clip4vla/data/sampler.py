"""Epoch order that is a pure function of (seed, epoch), sharded over ranks and resumable mid-epoch."""

from __future__ import annotations

from typing import Iterator

import torch


class ResumableShardedSampler(torch.utils.data.Sampler[int]):
    """Shuffled indices for one rank; every rank gets the same number of whole batches.

    Why not ``DistributedSampler``: a run resumed from a mid-epoch checkpoint must continue with
    exactly the batches it had not seen, without decoding the skipped ones. The permutation is
    rebuilt from (seed, epoch) and the first ``start_batch`` batches of this rank are skipped.
    The tail that does not fill a global batch is dropped (it changes every epoch), so all ranks
    gather equal-sized batches for the contrastive loss.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if num_samples < batch_size * world_size:
            raise ValueError(
                f"{num_samples} samples cannot fill one global batch of {batch_size} x {world_size} ranks; "
                "lower train.batch_size or add data"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
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
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        used = order[: self.batches_per_epoch * self.batch_size * self.world_size]
        # Batch b of rank r holds global positions [b*B*W + r*B, b*B*W + (r+1)*B): contiguous
        # blocks keep a global batch identical whatever the number of ranks it is split over.
        per_batch = used.view(self.batches_per_epoch, self.world_size, self.batch_size)
        mine = per_batch[self.start_batch :, self.rank].reshape(-1)
        return iter(mine.tolist())
