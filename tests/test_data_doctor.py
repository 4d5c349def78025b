"""Every bad input is caught with the file name; skip_bad_samples skips and counts."""

import json

import numpy as np
import pytest
import torch
from test_data_readers import grid, make_ade, write_image, write_mask
from torch.utils.data import DataLoader

from training.data import BadSampleError, DatasetLayoutError, build_pretrain_dataset, build_segmentation_dataset
from training.data.__main__ import main
from training.data.doctor import check_spec
from training.engine.logger import read_metrics
from training.pretrain import main as pretrain_main

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture
def broken_ade(tmp_path):
    """Two good samples and one of each bad kind, in the ADE20K layout."""
    good = grid([1, 2, 3, 4] * 4, 16)
    ade = make_ade(tmp_path, {"ADE_train_good1": good, "ADE_train_good2": good})
    images, labels = ade / "images" / "training", ade / "annotations" / "training"
    write_image(images / "ADE_train_nomask.jpg", 16, 16)
    write_image(images / "ADE_train_size.jpg", 16, 16)
    write_mask(labels / "ADE_train_size.png", grid([1, 2, 3] * 4, 16))
    write_image(images / "ADE_train_range.jpg", 16, 16)
    write_mask(labels / "ADE_train_range.png", grid([1, 200, 3, 4] * 4, 16))
    write_image(images / "ADE_train_trunc.jpg", 16, 16)
    data = (images / "ADE_train_trunc.jpg").read_bytes()
    (images / "ADE_train_trunc.jpg").write_bytes(data[: len(data) // 2])
    write_mask(labels / "ADE_train_trunc.png", good)
    write_image(images / "ADE_train_rgb.jpg", 16, 16)
    write_image(labels / "ADE_train_rgb.png", 16, 16)  # a colour image where a label map belongs
    return ade


EXPECTED_PROBLEMS = {
    "ADE_train_nomask.png": "mask file not found",
    "ADE_train_size.png": "mask is 12x16 (WxH) but image ADE_train_size.jpg is 16x16",
    "ADE_train_range.png": "label values [200] outside",
    "ADE_train_trunc.jpg": "image is truncated or corrupt",
    "ADE_train_rgb.png": "label image has mode 'RGB'",
}


def test_checker_reports_every_bad_sample_with_its_file(broken_ade):
    report = check_spec(f"ade20k:{broken_ade}:training")[0]
    assert report["samples"] == 7 and report["valid_samples"] == 2
    found = {e["file"].rsplit("/", 1)[-1]: e["problem"] for e in report["errors"]}
    assert set(found) == set(EXPECTED_PROBLEMS)
    for name, problem in EXPECTED_PROBLEMS.items():
        assert problem in found[name]
    assert report["class_pixels"] == {"wall": 128, "building": 128, "sky": 128, "floor": 128}
    assert report["image_sizes"]["most_common_wh"] == [16, 16]


def test_checker_cli_json_and_exit_code(broken_ade, capsys):
    assert main(["check", f"ade20k:{broken_ade}:training", "--json"]) == 1
    reports = json.loads(capsys.readouterr().out)
    assert len(reports[0]["errors"]) == len(EXPECTED_PROBLEMS)
    assert main(["check", f"ade20k:{broken_ade}:validation"]) == 1  # empty split
    assert "split 'validation' of ade20k is empty" in capsys.readouterr().out


def test_layout_errors_name_the_path(tmp_path):
    with pytest.raises(DatasetLayoutError, match=f"{tmp_path / 'nowhere'}: dataset folder not found"):
        build_pretrain_dataset([f"ade20k:{tmp_path / 'nowhere'}"], crop_size=8, mean=MEAN, std=STD)
    (tmp_path / "VOC2012").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"VOC2012/JPEGImages: not found; expected JPEGImages/"):
        build_pretrain_dataset([f"voc_aug:{tmp_path / 'VOC2012'}"], crop_size=8, mean=MEAN, std=STD)
    make_ade(tmp_path, {})
    with pytest.raises(DatasetLayoutError, match="split 'validation' of ade20k is empty"):
        build_segmentation_dataset(f"ade20k:{tmp_path / 'ADEChallengeData2016'}", train=False, mean=MEAN, std=STD)


def test_missing_mask_fails_at_startup_unless_skipped(broken_ade):
    with pytest.raises(
        BadSampleError, match=r"ADE_train_nomask\.png: mask file not found.*--set data.skip_bad_samples=true"
    ):
        build_pretrain_dataset([f"ade20k:{broken_ade}"], crop_size=8, mean=MEAN, std=STD)


def test_skip_bad_samples_skips_and_counts_across_workers(broken_ade):
    dataset, _ = build_pretrain_dataset(
        [f"ade20k:{broken_ade}"], crop_size=8, mean=MEAN, std=STD, skip_bad_samples=True
    )
    assert len(dataset) == 6  # the sample without a mask was dropped at start-up
    loader = DataLoader(dataset, batch_size=3, num_workers=2)
    batches = list(loader)
    indices = torch.cat([b["index"] for b in batches])
    good = {i for i, s in enumerate(dataset.readers[0].samples) if s.name.endswith("good1") or s.name.endswith("good2")}
    assert set(indices.tolist()) <= good  # bad samples were replaced by the next good one
    report = dataset.skip_report()
    assert report["skipped"] == 5 and report["by_dataset"] == {"ade20k": 5}
    assert sum("ADE_train_nomask" in f for f in report["files"]) == 1
    without_skip, _ = build_pretrain_dataset(
        [f"ade20k:{broken_ade}"], crop_size=8, mean=MEAN, std=STD, skip_bad_samples=True
    )
    without_skip.skip_bad_samples = False
    with pytest.raises(BadSampleError, match=r"ADE_train_range\.png: label values \[200\]"):
        [without_skip[i] for i in range(len(without_skip))]


def test_eval_dataset_returns_whole_image_and_name(tmp_path):
    ade = make_ade(tmp_path, {"ADE_val_00000001": grid([0, 1, 150, 2] * 5, 12)}, split="validation")
    dataset = build_segmentation_dataset(f"ade20k:{ade}", train=False, mean=MEAN, std=STD)
    item = dataset[0]
    assert item["image"].shape == (3, 12, 20) and item["name"] == "ADE_val_00000001"
    assert item["mask"][0, :4].tolist() == [-1, 0, 149, 1] and dataset.num_classes == 150
    train = build_segmentation_dataset(f"ade20k:{ade}:validation", train=True, crop_size=8, mean=MEAN, std=STD)
    assert train[0]["mask"].shape == (8, 8) and set(train[0]["mask"].unique().tolist()) <= {-1, 0, 1, 149}
    assert np.asarray(dataset.palette).shape == (150, 3)


def _ade_with_bad_samples(root):
    good = grid([1, 2, 3, 4] * 16, 64)
    ade = make_ade(root, {"ADE_train_good1": good, "ADE_train_good2": good})
    images, labels = ade / "images" / "training", ade / "annotations" / "training"
    write_image(images / "ADE_train_nomask.jpg", 64, 64)  # dropped at start-up
    write_image(images / "ADE_train_range.jpg", 64, 64)  # skipped when loaded
    write_mask(labels / "ADE_train_range.png", grid([1, 200, 3, 4] * 16, 64))
    return ade


def _tiny_pretraining(ade, **extra) -> list[str]:
    sets = {
        "data.datasets": f"[ade20k:{ade}]",
        "data.skip_bad_samples": "true",
        "data.crop_size": 32,
        "data.base_size": 40,
        "data.num_workers": 1,
        "train.batch_size": 3,
        "train.epochs": 2,
        "train.log_every": 1,
        "train.plots": "false",
        "train.probe_every": 0,
        "export.enabled": "false",
        **extra,
    }
    return [f"--set={key}={value}" for key, value in sets.items()]


def test_a_pretraining_run_counts_the_skipped_samples_in_its_metrics_and_last_lines(tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain_main(["--output", str(run), *_tiny_pretraining(_ade_with_bad_samples(tmp_path))]) == 0
    counts = [row["skipped_samples"] for row in read_metrics(run / "metrics.jsonl") if "skipped_samples" in row]
    assert counts[0] >= 1 and counts[-1] == 2  # the missing mask, and the out-of-range one once met
    assert "skipped 2 bad samples over the run" in capsys.readouterr().out


def test_a_run_that_fails_on_its_first_batch_leaves_no_run_folder(tmp_path, capsys):
    ade = _ade_with_bad_samples(tmp_path)
    (ade / "annotations" / "training" / "ADE_train_nomask.png").unlink(missing_ok=True)
    (ade / "images" / "training" / "ADE_train_nomask.jpg").unlink()
    overrides = _tiny_pretraining(ade, **{"data.skip_bad_samples": "false", "data.num_workers": 0})
    run = tmp_path / "runs" / "first"
    for _ in range(2):  # and a second try over the same --output is a fresh run, not a confusing half-run
        assert pretrain_main(["--output", str(run), "--set=train.seed=3", *overrides]) == 2
        assert "ADE_train_range.png: label values [200]" in capsys.readouterr().err
        assert not run.exists()
    existing = tmp_path / "runs" / "mine"  # a folder the user made is left as it was, with what the run wrote
    existing.mkdir()
    assert pretrain_main(["--output", str(existing), *overrides]) == 2
    assert existing.is_dir()
