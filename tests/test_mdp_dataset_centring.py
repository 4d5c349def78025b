"""MDP's dataset centring: running per-dataset means, centred regions, equal on every rank, through a real run."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from test_mdp_class_means import write_cooccurring_stripes

from mdp_hub import load_prototypes
from training.data import LabelSpace
from training.mdp import build_method
from training.mdp.memory import region_means
from training.pretrain import main

LABEL_SPACE = LabelSpace([("a", ["x", "y"]), ("b", ["u", "v", "w"])])


def centring_method():
    torch.manual_seed(0)
    return build_method(
        "mdp",
        label_space=LABEL_SPACE,
        arch="test_resnet",
        embed_dim=8,
        head_hidden_dim=16,
        dataset_centring=True,
        sparse_coding=None,
    )


def random_keys(seed, batch=4):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, 8, 3, 3, generator=generator), dim=1)


def test_classes_know_their_dataset_and_means_start_unset():
    method = centring_method()
    assert method.class_dataset.tolist() == [0, 0, 1, 1, 1]
    assert method.dataset_means.shape == (3, 8)  # two datasets and the unlabelled images' slot
    assert not method.dataset_means_initialised.any()


def test_first_batch_sets_a_dataset_mean_later_batches_move_it_by_a_tenth_absent_datasets_keep_theirs():
    method = centring_method()
    first, second = random_keys(0), random_keys(1)
    method.update_dataset_means(first, torch.tensor([0, 0, 2, 2]))
    image_means = first.mean((2, 3))
    torch.testing.assert_close(method.dataset_means[0], image_means[:2].mean(0))
    torch.testing.assert_close(method.dataset_means[2], image_means[2:].mean(0))
    assert method.dataset_means_initialised.tolist() == [True, False, True]
    assert (method.dataset_means[1] == 0).all()

    method.update_dataset_means(second, torch.tensor([0, 1, 1, 1]))
    torch.testing.assert_close(method.dataset_means[0], 0.9 * image_means[:2].mean(0) + 0.1 * second.mean((2, 3))[0])
    torch.testing.assert_close(method.dataset_means[1], second.mean((2, 3))[1:].mean(0))  # first batch of b
    torch.testing.assert_close(method.dataset_means[2], image_means[2:].mean(0))  # absent: unchanged
    torch.testing.assert_close(method.class_offsets(), method.dataset_means[torch.tensor([0, 0, 1, 1, 1])])


def test_centred_regions_are_the_normalised_region_mean_minus_the_class_offset():
    keys = random_keys(2)
    labels = torch.randint(-1, 5, (4, 3, 3), generator=torch.Generator().manual_seed(3))
    offsets = 0.3 * F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(4)), dim=1)
    regions, present = region_means(keys, labels, 5, class_offsets=offsets)
    for b in range(4):
        for c in range(5):
            pixels = labels[b] == c
            assert bool(present[b, c]) == bool(pixels.any())
            if pixels.any():
                torch.testing.assert_close(regions[b, c], F.normalize(keys[b][:, pixels].mean(1) - offsets[c], dim=0))


def _rank_main(rank, world_size, init_file, out_dir):
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool (it hangs)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        keys, dataset_id = random_keys(5), torch.tensor([0, 1, 0, 0])
        method = centring_method()
        shard = slice(rank * 2, rank * 2 + 2)
        method.update_dataset_means(keys[shard], dataset_id[shard])
        method.update_dataset_means(keys.flip(0)[shard], dataset_id.flip(0)[shard])
        torch.save(method.dataset_means.clone(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_dataset_means_equal_one_process_on_the_concatenated_batch(tmp_path):
    mp.start_processes(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    keys, dataset_id = random_keys(5), torch.tensor([0, 1, 0, 0])
    method = centring_method()
    method.update_dataset_means(keys, dataset_id)
    method.update_dataset_means(keys.flip(0), dataset_id.flip(0))
    for rank in range(2):  # rank 1's first half-batch holds no image of dataset b: its mean comes from rank 0's
        torch.testing.assert_close(torch.load(tmp_path / f"rank{rank}.pt", weights_only=True), method.dataset_means)


@pytest.mark.slow
def test_a_run_with_dataset_centring_exports_the_offsets_it_trained_with(tmp_path):
    a = write_cooccurring_stripes(tmp_path / "a", images=8, seed=0)
    b = write_cooccurring_stripes(tmp_path / "b", images=8, seed=1)
    run = tmp_path / "run"
    values = {
        "data.datasets": f"[folder:{a},folder:{b}]",
        "data.crop_size": 32,
        "data.base_size": 48,
        "data.num_workers": 0,
        "method.arch": "resnet18",  # exportable
        "method.output_stride": 8,
        "method.options.window": 16,
        "method.window_reference_batch": 0,
        "method.options.sparse_coding": "null",
        "method.options.dataset_centring": "true",
        "train.batch_size": 4,
        "train.max_steps": 6,
        "train.probe_every": 6,
        "train.probe_images": 4,
        "train.plots": False,
    }
    assert main(["--output", str(run), *(f"--set={key}={value}" for key, value in values.items())]) == 0
    state = torch.load(run / "last.pth", map_location="cpu", weights_only=True)["model"]
    assert state["dataset_means_initialised"].tolist() == [True, True, False]  # no unlabelled images
    *_, offsets = load_prototypes(run / "export", with_offsets=True)
    torch.testing.assert_close(offsets, state["dataset_means"][state["class_dataset"]])
