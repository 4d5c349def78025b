"""Synthetic benchmark: deterministic per seed, cached atomically, read back by the real readers."""

import json

import pytest
import torch

from training.data import build_pretrain_dataset, build_segmentation_dataset, build_unlabeled_dataset, ensure_synthetic
from training.data.__main__ import main
from training.data.doctor import check_spec
from training.data.synthetic import DEFAULT_SIZES, generate

TINY = {key: 2 for key in DEFAULT_SIZES}
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def folder_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate(tmp_path / "a", seed=5, sizes=TINY)
    generate(tmp_path / "b", seed=5, sizes=TINY)
    generate(tmp_path / "c", seed=6, sizes=TINY)
    a, b, c = (folder_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c
    assert len([name for name in a if name.endswith(".jpg")]) == 2 * 7  # VOC 3 splits, ADE 2, COCO 2


def test_ensure_synthetic_generates_once_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("MDP_SYNTH_DIR", str(tmp_path / "cache"))
    specs = ensure_synthetic(tmp_path / "bench", seed=1, sizes=TINY)
    marker = tmp_path / "bench" / "synthetic.json"
    stamp = marker.stat().st_mtime_ns
    assert ensure_synthetic(tmp_path / "bench", seed=1, sizes=TINY) == specs
    assert marker.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["bench"]  # no staging folder left behind
    assert json.loads(marker.read_text())["seed"] == 1
    with pytest.raises(ValueError, match="not .*'seed': 2"):
        ensure_synthetic(tmp_path / "bench", seed=2, sizes=TINY)
    assert set(specs) == {"root", "pretrain", "pretrain_val", "downstream_train", "downstream_val"}


def test_real_readers_read_the_benchmark(tmp_path):
    specs = ensure_synthetic(tmp_path / "bench", seed=0, sizes=TINY)
    for spec in specs["pretrain"] + specs["pretrain_val"] + [specs["downstream_train"], specs["downstream_val"]]:
        report = check_spec(spec)[0]
        assert report["errors"] == [] and report["classes_present"] >= 2, spec
    assert main(["check", *specs["pretrain"]]) == 0
    dataset, space = build_pretrain_dataset(specs["pretrain"], crop_size=32, mean=MEAN, std=STD)
    assert space.num_classes == 342 and dataset.dataset_sizes == [4, 2, 2]  # VOC train_aug = train + aug
    for index in range(len(dataset)):
        item = dataset[index]
        labelled = item["mask"][item["mask"] >= 0]
        window = space.dataset_slice(int(item["dataset_id"]))
        assert labelled.numel() and labelled.min() >= window.start and labelled.max() < window.stop
    downstream = build_segmentation_dataset(specs["downstream_val"], train=False, mean=MEAN, std=STD)
    item = downstream[0]
    assert item["image"].shape == (3, 96, 192) and item["mask"].max() < 19
    assert (item["mask"][-3:] == -1).all()  # the ego-vehicle strip (labelId 1) is ignored
    assert torch.isin(item["mask"], torch.tensor([-1, 0, 1, 2, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15])).all()


def test_unlabeled_images_give_two_views(tmp_path):
    specs = ensure_synthetic(tmp_path / "bench", seed=0, sizes=TINY)
    folder = specs["pretrain"][2].split(":")[1] + "/images"
    dataset = build_unlabeled_dataset(folder, crop_size=24, mean=MEAN, std=STD)
    item = dataset[0]
    assert len(dataset) == 4 and set(item) == {"image", "image_k", "index"}
    assert item["image"].shape == item["image_k"].shape == (3, 24, 24)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no images"):
        build_unlabeled_dataset(tmp_path / "empty", crop_size=24, mean=MEAN, std=STD)
