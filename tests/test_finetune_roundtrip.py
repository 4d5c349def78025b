"""Fine-tune -> checkpoint -> evaluate on a tiny folder dataset: it learns, resumes, and reports MMSeg metrics."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from training import evaluate as evaluate_cli
from training import finetune as finetune_cli
from training.seg.config import load_finetune_config
from training.seg.finetuning import finetune

CLASSES = ["background", "red", "green"]
COLOURS = np.array([[90, 90, 90], [220, 30, 30], [30, 200, 40]], dtype=np.uint8)


def write_split(root, split, count, rng):
    """Images of rectangles whose colour is their class, plus sensor noise; a 255 border band is ignored."""
    (root / "images" / split).mkdir(parents=True)
    (root / "masks" / split).mkdir(parents=True)
    for index in range(count):
        mask = np.zeros((32, 32), dtype=np.uint8)
        for label in (1, 2):
            top, left = rng.integers(0, 20, size=2)
            height, width = rng.integers(8, 14, size=2)
            mask[top : top + height, left : left + width] = label
        image = COLOURS[mask].astype(np.int16) + rng.integers(-25, 26, size=(32, 32, 3))
        mask[0, :] = 255
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
            root / "images" / split / f"{index:03d}.jpg", quality=95
        )
        Image.fromarray(mask).save(root / "masks" / split / f"{index:03d}.png")


def make_shapes_dataset(root, *, seed, train_images, val_images):
    """A generic-folder dataset ``root`` (named by its folder) with train and val splits."""
    root.mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    rng = np.random.default_rng(seed)
    write_split(root, "train", train_images, rng)
    write_split(root, "val", val_images, rng)
    return root


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("tiny") / "shapes", seed=0, train_images=16, val_images=6)


def tiny_overrides(root, iterations):
    return [
        f"data.train=folder:{root}:train",
        f"data.val=folder:{root}:val",
        "data.crop_size=[32, 32]",
        "data.base_size=0",
        "data.scale_range=[0.75, 1.25]",
        "data.num_workers=0",
        "model.arch=test_resnet",
        "model.head_channels=32",
        f"train.iterations={iterations}",
        "train.batch_size=4",
        "train.log_every=10",
        "train.eval_every=0",
        "train.checkpoint_every=1000",
        "optim.lr=0.1",
        "eval.test_scale=[]",
        "eval.overlays=2",
    ]


def test_finetune_then_evaluate_learns(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    run_dir = tmp_path / "run"
    args = ["--recipe", "finetune_voc_aug", "--init", "scratch", "--output", str(run_dir)]
    for override in tiny_overrides(tiny_dataset, 80):
        args += ["--set", override]
    assert finetune_cli.main(args) == 0
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["mIoU"] > 50.0  # predicting "background" everywhere scores ~27 here
    assert set(results["per_class"]) == set(CLASSES)
    hub_entry = json.loads((run_dir / "eval" / "hub_metrics.json").read_text())
    assert hub_entry == {"dataset": "shapes", "mIoU": round(results["mIoU"], 2), "split": "val"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]

    output = tmp_path / "eval"
    assert (
        evaluate_cli.main(
            [
                "--checkpoint",
                str(run_dir / "last.pth"),
                "--output",
                str(output),
                "--mode",
                "slide",
                "--crop",
                "32",
                "32",
                "--stride",
                "16",
                "16",
                "--flip",
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    slide = json.loads((output / "results.json").read_text())
    assert slide["mode"] == "slide" and slide["flip"] is True
    assert slide["mIoU"] > 50.0
    assert "| mIoU | mAcc | aAcc |" in (output / "results.md").read_text()
    overlays = sorted((output / "overlays").glob("*.png"))
    assert len(overlays) == 2
    assert Image.open(overlays[0]).size == (96, 32)


@pytest.mark.parametrize("photometric_on, resolved", [("auto", "worker"), ("device", "device")])
def test_resume_continues_from_last_checkpoint(tiny_dataset, tmp_path, photometric_on, resolved):
    """Also with MMSeg's colour jitter made batched on the device (workers then send uint8 crops and masks)."""
    run_dir = tmp_path / "run"
    switch = [f"data.photometric_on={photometric_on}"]
    config = load_finetune_config("finetune_voc_aug", tiny_overrides(tiny_dataset, 4) + switch)
    finetune(config, run_dir)
    first = torch.load(run_dir / "last.pth", weights_only=True)
    assert first["step"] == 4 and first["kind"] == "finetune" and first["backbone_prefix"] == "backbone."
    assert first["config"]["data"]["photometric_on"] == resolved
    config = load_finetune_config("finetune_voc_aug", tiny_overrides(tiny_dataset, 6) + switch)
    finetune(config, run_dir)
    second = torch.load(run_dir / "last.pth", weights_only=True)
    assert second["step"] == 6
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)
