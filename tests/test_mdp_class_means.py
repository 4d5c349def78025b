"""MDP in the class-mean regime: prototypes that are pure class means keep classes that share every image apart.

Every image of the tiny dataset holds both of its classes (horizontal and vertical stripes) under its own strong
colour cast, so a pixel's embedding is dominated by what its image looks like. A prototype window of 16 regions
makes the prototypes pure class means within a few steps. With the paper's plain projection head the two class
means collapse onto one vector (cosine ~1); with the shipped head (whitened output) and the within-image term
they stay apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.engine.logger import read_metrics
from training.pretrain import main


def write_cooccurring_stripes(root: Path, images: int = 24, size: int = 48, seed: int = 0) -> Path:
    """A generic-folder dataset: two stripe orientations split at a random column, a random colour cast."""
    rng = np.random.default_rng(seed)
    for folder in ("images/train", "masks/train"):
        (root / folder).mkdir(parents=True)
    (root / "classes.txt").write_text("horizontal\nvertical\n")
    y, x = np.mgrid[:size, :size]
    for index in range(images):
        half_period = int(rng.integers(2, 4))
        split = int(rng.integers(size // 4, 3 * size // 4))
        vertical_side = (x >= split) if rng.random() < 0.5 else (x < split)
        texture = np.where(vertical_side, (x // half_period) % 2, (y // half_period) % 2)
        image = rng.uniform(0, 255, 3) * 0.8 + texture[..., None] * 50.0 + rng.normal(0, 8, (size, size, 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images/train" / f"{index:03d}.png")
        Image.fromarray(vertical_side.astype(np.uint8)).save(root / "masks/train" / f"{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def stripes(tmp_path_factory) -> Path:
    return write_cooccurring_stripes(tmp_path_factory.mktemp("cooccurring") / "stripes")


def class_mean_run(stripes: Path, run: Path, *overrides: str) -> dict:
    """60 steps of the demo recipe on ``stripes``; returns the last probe record."""
    values = {
        "data.datasets": f"[folder:{stripes}]",
        "data.crop_size": 32,
        "data.base_size": 48,
        "data.num_workers": 0,
        "method.arch": "test_resnet",
        "method.output_stride": 8,
        "method.options.window": 16,
        "method.options.sparse_coding": "null",  # two classes: no top-k of other classes to code
        "train.batch_size": 8,
        "train.epochs": 100,
        "train.max_steps": 60,
        "train.probe_every": 60,
        "train.probe_images": 8,
        "train.log_every": 10,
        "train.plots": False,
        "export.enabled": False,
    }
    args = [f"--set={key}={value}" for key, value in values.items()]
    assert main(["--output", str(run), *args, *(f"--set={o}" for o in overrides)]) == 0
    return [r for r in read_metrics(run / "metrics.jsonl") if "prototype_cos_within_stripes" in r][-1]


@pytest.mark.slow
def test_class_mean_prototypes_of_classes_sharing_every_image_stay_apart(stripes, tmp_path):
    shipped = class_mean_run(stripes, tmp_path / "shipped")
    assert shipped["anchor_share_median_stripes"] == 0.0  # pure class means
    assert shipped["prototype_cos_within_stripes"] < 0.5
    assert shipped["val_embed_image_share"] < 0.7
    paper_head = class_mean_run(
        stripes,
        tmp_path / "paper_head",
        "method.head_output_norm=none",
        "method.options.within_image_weight=0.0",
        "method.options.prototype_anchors=true",
    )
    assert paper_head["anchor_share_median_stripes"] < 0.01  # the anchors have faded: class means again
    assert paper_head["prototype_cos_within_stripes"] > 0.9  # the collapse the shipped head prevents
