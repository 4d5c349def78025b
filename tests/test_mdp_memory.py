"""Prototype memory (two-step average), region bank and key queue; two-process gloo equivalence."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from training.mdp.memory import ClassPrototypeMemory, KeyQueue, RegionMemoryBank, region_means


def random_batch(seed, batch=4, dim=8, size=6, num_classes=5):
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(batch, dim, size, size, generator=generator), dim=1)
    labels = torch.randint(-1, num_classes, (batch, size, size), generator=generator)
    return embeddings, labels


def reference_region_means(embeddings, labels, num_classes):
    """Loop reference of step 1: {(image, class): normalised mean embedding}."""
    regions = {}
    for b in range(embeddings.shape[0]):
        for c in range(num_classes):
            pixels = labels[b] == c
            if pixels.any():
                regions[(b, c)] = F.normalize(embeddings[b][:, pixels].mean(1), dim=0)
    return regions


def test_region_means_equal_loop_reference():
    embeddings, labels = random_batch(0)
    regions, present = region_means(embeddings, labels, 5)
    reference = reference_region_means(embeddings, labels, 5)
    assert present.sum().item() == len(reference)
    for (b, c), region in reference.items():
        assert present[b, c]
        torch.testing.assert_close(regions[b, c], region)
    assert (regions[~present] == 0).all()


def test_prototypes_are_the_cumulative_mean_of_regions_until_the_window_is_full():
    memory = ClassPrototypeMemory(num_classes=5, dim=8, window=1000, anchors=False)
    seen = {c: [] for c in range(5)}
    for seed in range(3):
        embeddings, labels = random_batch(seed)
        memory.update(embeddings, labels)
        for (_, c), region in reference_region_means(embeddings, labels, 5).items():
            seen[c].append(region)
    for c in range(5):
        assert memory.counts[c].item() == len(seen[c])
        torch.testing.assert_close(memory.prototypes[c], torch.stack(seen[c]).mean(0))


def test_prototypes_follow_an_ema_with_coefficient_one_minus_one_over_window_when_full():
    window = 4
    memory = ClassPrototypeMemory(num_classes=2, dim=3, window=window, anchors=False)
    memory.prototypes[0] = torch.tensor([1.0, 0.0, 0.0])
    memory.counts[0] = window
    embeddings = torch.zeros(1, 3, 2, 2)
    embeddings[:, 1] = 1.0  # every pixel is (0, 1, 0)
    labels = torch.tensor([[[0, 0], [-1, -1]]])
    memory.update(embeddings, labels)
    torch.testing.assert_close(memory.prototypes[0], torch.tensor([0.75, 0.25, 0.0]))
    assert memory.counts.tolist() == [window + 1, 0]


def test_ignored_pixels_and_absent_classes_leave_prototypes_untouched():
    memory = ClassPrototypeMemory(num_classes=3, dim=4, window=10, anchors=False)
    embeddings = F.normalize(torch.randn(2, 4, 3, 3), dim=1)
    labels = torch.full((2, 3, 3), -1)
    labels[0, 0, 0] = 1
    memory.update(embeddings, labels)
    assert memory.initialised.tolist() == [False, True, False]
    torch.testing.assert_close(memory.prototypes[1], embeddings[0, :, 0, 0])
    assert (memory.prototypes[[0, 2]] == 0).all()
    assert set(memory.state_dict()) == {"prototypes", "counts", "anchor_share"}


def test_more_regions_than_the_window_replace_the_prototype_by_their_mean_without_extrapolating():
    # Two regions of class 0 in one batch with a window of 1: the weight m / window = 2 used to be applied
    # as is, so the prototype landed at 2 * mean - old, pointing away from both regions.
    memory = ClassPrototypeMemory(num_classes=1, dim=2, window=1, anchors=False)
    memory.prototypes[0] = torch.tensor([-1.0, 0.0])
    memory.counts[0] = 5
    embeddings = torch.zeros(2, 2, 1, 1)
    embeddings[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    embeddings[1, :, 0, 0] = torch.tensor([0.0, 1.0])
    memory.update(embeddings, torch.zeros(2, 1, 1, dtype=torch.long))
    torch.testing.assert_close(memory.prototypes[0], torch.tensor([0.5, 0.5]))


def test_anchored_prototypes_start_as_fixed_near_orthogonal_unit_vectors_worth_one_window():
    window = 8
    memory = ClassPrototypeMemory(num_classes=6, dim=64, window=window)
    again = ClassPrototypeMemory(num_classes=6, dim=64, window=window)
    anchors = memory.prototypes.clone()
    torch.testing.assert_close(anchors, again.prototypes)  # identical on every rank: a fixed generator
    torch.testing.assert_close(anchors.norm(dim=1), torch.ones(6))
    cosine = anchors @ anchors.t()
    assert cosine[~torch.eye(6, dtype=torch.bool)].abs().max() < 0.5
    assert memory.initialised.all() and not memory.seen.any()
    embeddings = torch.zeros(1, 64, 1, 2)
    embeddings[0, 0] = 1.0
    memory.update(embeddings, torch.tensor([[[2, 2]]]))
    region = F.one_hot(torch.tensor(0), 64).float()
    # One region moves the anchor by 1 / window towards it, from the first step on.
    torch.testing.assert_close(memory.prototypes[2], anchors[2] + (region - anchors[2]) / window)
    torch.testing.assert_close(memory.prototypes[[0, 1, 3, 4, 5]], anchors[[0, 1, 3, 4, 5]])
    assert memory.seen.tolist() == [False, False, True, False, False, False]


def test_key_queue_ring_wraps_and_keeps_newest_when_overfull():
    queue = KeyQueue(dim=1, size=5)
    queue.update(torch.tensor([[1.0], [2.0], [3.0]]))
    queue.update(torch.tensor([[4.0], [5.0], [6.0]]))
    assert queue.entries()[:, 0].tolist() == [6.0, 2.0, 3.0, 4.0, 5.0]
    assert queue.pointer.item() == 1
    queue.update(torch.arange(10.0, 17.0)[:, None])  # 7 keys into 5 slots: the newest 5 survive, FIFO order
    assert sorted(queue.entries()[:, 0].tolist()) == [12.0, 13.0, 14.0, 15.0, 16.0]
    assert queue.pointer.item() == (1 + 7) % 5
    assert queue.entries()[queue.pointer.item() - 1, 0].item() == 16.0


def test_region_bank_enqueues_only_present_regions_with_their_classes():
    bank = RegionMemoryBank(num_classes=4, dim=2, size=3)
    embeddings = torch.zeros(1, 2, 1, 2)
    embeddings[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    embeddings[0, :, 0, 1] = torch.tensor([0.0, 1.0])
    bank.update(embeddings, torch.tensor([[[3, 1]]]))
    stored, labels = bank.entries()
    assert labels.tolist() == [1, 3, -1]
    torch.testing.assert_close(stored[:2], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    bank.update(embeddings, torch.tensor([[[2, -1]]]))
    bank.update(embeddings, torch.tensor([[[0, -1]]]))
    assert bank.entries()[1].tolist() == [0, 3, 2]
    assert bank.pointer.item() == 1


def _memories():
    torch.manual_seed(0)  # same random initial queue on every process
    return ClassPrototypeMemory(5, 8, window=6), RegionMemoryBank(5, 8, size=32), KeyQueue(8, size=16)


def _update_all(memories, embeddings, labels):
    prototypes, bank, queue = memories
    for _ in range(3):  # enough steps to pass the window of 6 regions per class
        prototypes.update(embeddings, labels)
        bank.update(embeddings, labels)
        queue.update(embeddings.mean(dim=(2, 3)))
    return {name: tensor.clone() for memory in memories for name, tensor in memory.state_dict().items()}


def _rank_main(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        embeddings, labels = random_batch(1, batch=4)
        shard = slice(rank * 2, rank * 2 + 2)
        state = _update_all(_memories(), embeddings[shard], labels[shard])
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_memories_equal_one_process_on_concatenated_batch(tmp_path):
    # fork: the children inherit the imported modules instead of importing torch and timm again
    mp.start_processes(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    embeddings, labels = random_batch(1, batch=4)
    expected = _update_all(_memories(), embeddings, labels)
    assert expected["counts"].min() > 6  # the EMA phase was reached
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert set(state) == set(expected)
        for name, tensor in expected.items():
            torch.testing.assert_close(state[name], tensor, msg=f"rank {rank}: {name}")


def test_anchor_share_is_the_exact_weight_left_to_each_anchor():
    window = 4
    memory = ClassPrototypeMemory(num_classes=3, dim=8, window=window)
    anchors = memory.anchor_vectors()
    torch.testing.assert_close(anchors, memory.prototypes)
    first, second = F.one_hot(torch.tensor(0), 8).float(), F.one_hot(torch.tensor(1), 8).float()
    for region in (first, second):
        memory.update(region.reshape(1, 8, 1, 1), torch.tensor([[[1]]]))
    # Two regions at weight 1/window each: the anchor keeps (3/4)^2 of the prototype.
    share = (1 - 1 / window) ** 2
    torch.testing.assert_close(memory.anchor_share, torch.tensor([1.0, share, 1.0]))
    expected = share * anchors[1] + (1 - 1 / window) / window * first + second / window
    torch.testing.assert_close(memory.prototypes[1], expected)
    assert ClassPrototypeMemory(num_classes=3, dim=8, anchors=False).anchor_share.eq(0).all()


def test_checkpoints_without_anchor_share_load_with_the_share_their_counts_imply():
    memory = ClassPrototypeMemory(num_classes=2, dim=4, window=100)
    state = {k: v.clone() for k, v in memory.state_dict().items() if k != "anchor_share"}
    state["counts"] = torch.tensor([0, 300])
    memory.load_state_dict(state)
    torch.testing.assert_close(memory.anchor_share, torch.tensor([1.0, math.exp(-3.0)]))
