"""MultiDatasetSampler: disjoint deterministic shards, proportional and balanced mixing."""

from types import SimpleNamespace

import pytest
import torch

from training.data import MultiDatasetSampler


def fake_dataset(sizes):
    return SimpleNamespace(dataset_ids=torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)))


@pytest.mark.parametrize("mode", ["proportional", "balanced"])
def test_shards_are_disjoint_and_cover_the_epoch(mode):
    dataset = fake_dataset([30, 12, 6])
    shards = [list(MultiDatasetSampler(dataset, mode=mode, num_replicas=3, rank=r, seed=1)) for r in range(3)]
    assert all(len(s) == 16 for s in shards)
    order = MultiDatasetSampler(dataset, mode=mode, num_replicas=3, rank=0, seed=1).epoch_order()
    for rank, shard in enumerate(shards):
        assert shard == order[rank::3].tolist()
    if mode == "proportional":  # every sample exactly once across the ranks
        assert sorted(sum(shards, [])) == list(range(48))


def test_deterministic_per_epoch_and_different_across_epochs():
    dataset = fake_dataset([20, 20])
    a, b = MultiDatasetSampler(dataset, seed=3), MultiDatasetSampler(dataset, seed=3)
    a.set_epoch(4), b.set_epoch(4)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(5)
    assert list(a) != first


def test_balanced_gives_each_dataset_an_equal_share():
    dataset = fake_dataset([90, 9, 3])
    order = MultiDatasetSampler(dataset, mode="balanced", seed=0).epoch_order()
    assert len(order) == 102
    assert torch.bincount(dataset.dataset_ids[order]).tolist() == [34, 34, 34]
    proportional = MultiDatasetSampler(dataset, mode="proportional").epoch_order()
    assert torch.bincount(dataset.dataset_ids[proportional]).tolist() == [90, 9, 3]
    unshuffled = MultiDatasetSampler(dataset, mode="balanced", shuffle=False).epoch_order()
    assert dataset.dataset_ids[unshuffled[:6]].tolist() == [0, 1, 2, 0, 1, 2]


def test_drop_last_false_pads_like_distributed_sampler():
    dataset = fake_dataset([5, 2])
    shards = [list(MultiDatasetSampler(dataset, num_replicas=3, rank=r, drop_last=False)) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3] and set(sum(shards, [])) == set(range(7))
    assert len(MultiDatasetSampler(dataset, num_replicas=3, rank=0, drop_last=True)) == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="sampling mode 'uniform'"):
        MultiDatasetSampler(fake_dataset([3]), mode="uniform")
    with pytest.raises(ValueError, match="rank 2 out of range"):
        MultiDatasetSampler(fake_dataset([3]), num_replicas=2, rank=2)
