import pytest
import torch

from clip4vla.data.sampler import MixtureOrder, ResumableShardedSampler


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a = ResumableShardedSampler(50, 4, seed=3)
    b = ResumableShardedSampler(50, 4, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert len(list(a)) == len(a) == 48  # 12 whole batches, the tail of 2 is dropped


def test_ranks_get_disjoint_shards_that_rebuild_the_global_batches():
    single = ResumableShardedSampler(40, 8, rank=0, world_size=1, seed=1)
    ranks = [ResumableShardedSampler(40, 4, rank=r, world_size=2, seed=1) for r in range(2)]
    for s in [single, *ranks]:
        s.set_epoch(5)
    global_batches = torch.tensor(list(single)).view(-1, 8)
    per_rank = [torch.tensor(list(s)).view(-1, 4) for s in ranks]
    assert torch.equal(torch.cat(per_rank, dim=1), global_batches)
    assert not set(per_rank[0].flatten().tolist()) & set(per_rank[1].flatten().tolist())


def test_resume_skips_exactly_the_batches_already_seen():
    s = ResumableShardedSampler(30, 5, seed=0)
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, start_batch=2)
    assert list(s) == full[10:]
    assert len(s) == 20


def test_too_few_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="global batch"):
        ResumableShardedSampler(5, 4, world_size=2)


def test_an_int_means_one_dataset_and_equals_its_mixture_order():
    a = ResumableShardedSampler(20, 4, seed=5)
    b = ResumableShardedSampler(MixtureOrder([20], seed=5), 4)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
