"""Small segmentation datasets written the ways the Hugging Face Hub ships them, for the ``hf:`` reader's tests:
Parquet shards with a dataset card (and optionally ``id2label.json``), and ``save_to_disk`` folders with a
``ClassLabel`` mask feature."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("background", "square", "disc")


def scene(seed: int, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB ``[H, W, 3]`` and local ids ``[H, W]``: a square and a disc on a noisy background."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    x, y = rng.integers(2, size // 2, 2)
    mask[y : y + size // 3, x : x + size // 3] = 1
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.integers(size // 2, size - 6, 2)
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = 2
    colours = np.array([[90, 90, 90], [220, 40, 40], [40, 60, 220]], np.float32)
    image = colours[mask] + rng.normal(0, 10, (size, size, 3))
    return image.clip(0, 255).astype(np.uint8), mask


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def rows(count: int, seed: int, *, shift: int = 0, corrupt_row: int | None = None) -> dict:
    images, masks = [], []
    for index in range(count):
        image, mask = scene(seed + index)
        data = png_bytes(image)
        images.append({"bytes": data[: len(data) // 3] if index == corrupt_row else data, "path": None})
        masks.append({"bytes": png_bytes(mask + np.uint8(shift)), "path": None})
    return {"image": images, "label": masks}


def write_parquet_repo(
    folder: Path,
    *,
    id2label: bool = True,
    shift: int = 0,
    corrupt_row: int | None = None,
    train_shards: tuple[int, ...] = (6,),
):
    """``data/train-0000i-of-0000n.parquet`` (``train_shards`` rows each), ``data/validation-00000-of-00001.parquet``
    (3 rows), README.md (+ id2label.json): the Hub repo layout. ``corrupt_row`` counts through the train shards."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    (folder / "data").mkdir(parents=True)
    files = [("train", i, len(train_shards), sum(train_shards[:i]), n) for i, n in enumerate(train_shards)]
    for split, index, count, start, size in [*files, ("validation", 0, 1, 100, 3)]:
        corrupt = corrupt_row - start if split == "train" and corrupt_row is not None else None
        table = datasets.Dataset.from_dict(rows(size, start, shift=shift, corrupt_row=corrupt), features=features)
        table.to_parquet(str(folder / "data" / f"{split}-{index:05d}-of-{count:05d}.parquet"))
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "  - split: validation\n    path: data/validation-*\n---\n# shapes\nA tiny segmentation dataset.\n"
    )
    if id2label:
        (folder / "id2label.json").write_text(json.dumps({str(i): name for i, name in enumerate(CLASSES)}))
    return folder


def write_saved_to_disk(folder: Path):
    """A ``DatasetDict.save_to_disk`` folder whose mask is a 2-D ``ClassLabel`` array (names in the features)."""
    import datasets

    label = datasets.ClassLabel(names=list(CLASSES))
    features = datasets.Features({"photo": datasets.Image(), "segmentation": datasets.List(datasets.List(label))})
    splits = {}
    for split, count, seed in (("train", 6, 10), ("validation", 3, 200)):
        photos, masks = [], []
        for index in range(count):
            image, mask = scene(seed + index)
            photos.append({"bytes": png_bytes(image), "path": None})
            masks.append(mask.tolist())
        splits[split] = datasets.Dataset.from_dict({"photo": photos, "segmentation": masks}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder
