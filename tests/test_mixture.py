"""Pre-training mixture sampler: proportions, full coverage, determinism, disjoint rank shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clip4vla.data.readers import MixtureSampler, concat_records
from clip4vla.data.records import ClipRecord


def test_proportional_epoch_is_a_permutation_of_everything():
    sampler = MixtureSampler([30, 70], seed=3)
    seen = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(100))  # each record exactly once per epoch
        seen.append(order)
    assert seen[0] != seen[1] != seen[2]
    # in proportion along the way too: the first half of an epoch holds ~30 % HowTo-side indices
    first_half = np.asarray(seen[0][:50])
    assert 8 <= int((first_half < 30).sum()) <= 22


def test_same_seed_and_epoch_replay_exactly():
    a, b = MixtureSampler([5, 9], seed=7), MixtureSampler([5, 9], seed=7)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    c = MixtureSampler([5, 9], seed=8)
    c.set_epoch(4)
    assert list(c) != list(a)


def test_explicit_weights_give_exact_shares_and_walk_the_whole_large_dataset():
    sizes = [10, 90]
    sampler = MixtureSampler(sizes, weights=[1, 1], num_samples=20, seed=0)
    assert sampler.counts == [10, 10]
    visits = np.zeros(100, dtype=np.int64)
    for epoch in range(9):
        sampler.set_epoch(epoch)
        order = np.asarray(list(sampler))
        assert len(order) == 20 and int((order < 10).sum()) == 10
        visits += np.bincount(order, minlength=100)
    # 9 epochs x 10 draws cover all 90 records of the large dataset exactly once (no slice bug)
    assert (visits[10:] == 1).all()
    assert (visits[:10] == 9).all()


def test_weights_round_to_exact_total():
    sampler = MixtureSampler([50, 50, 50], weights=[0.5, 0.3, 0.2], num_samples=7)
    assert sum(sampler.counts) == 7 and sampler.counts == [4, 2, 1]
    with pytest.raises(ValueError):
        MixtureSampler([10, 0], weights=[0.5, 0.5])
    with pytest.raises(ValueError):
        MixtureSampler([10, 5], weights=[1.0])


def test_ranks_get_disjoint_equal_shards():
    world = 3
    shards = []
    for rank in range(world):
        s = MixtureSampler([10, 23], seed=1, rank=rank, world_size=world)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(s) == 11 and len(shards[-1]) == 11
    flat = [i for shard in shards for i in shard]
    assert len(set(flat)) == 33  # disjoint
    full = MixtureSampler([10, 23], seed=1).epoch_indices(2)
    assert sorted(flat) == sorted(full[:33].tolist())
    # padding variant: equal shards that wrap around to cover every index
    padded = [list(MixtureSampler([10, 24], seed=1, rank=r, world_size=5, drop_last=False)) for r in range(5)]
    assert all(len(p) == 7 for p in padded)
    assert set(i for p in padded for i in p) == set(range(34))


def test_works_with_a_dataloader_over_concatenated_records():
    how = [ClipRecord(f"h{i}", captions=("x",), audio_type="vb", source="howto100m") for i in range(6)]
    aud = [ClipRecord(f"a{i}", captions=("y",), audio_type="nb", source="audioset") for i in range(4)]
    records, sizes = concat_records(how, aud)
    assert sizes == [6, 4]
    sampler = MixtureSampler(sizes, seed=0)
    loader = torch.utils.data.DataLoader(records, batch_size=5, sampler=sampler, collate_fn=list)
    batches = list(loader)
    ids = [r.video_id for b in batches for r in b]
    assert sorted(ids) == sorted([r.video_id for r in records])
