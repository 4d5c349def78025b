"""Offline pseudo-labels for unlabelled images: an export's prototype segmenter labels a folder of images, pixels
below a confidence threshold are ignored, and the result is a folder dataset with its classes and unify map."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from PIL import Image

from mdp_hub.errors import UserError
from mdp_hub.segmenter import PrototypeSegmenter
from training.data.errors import DatasetLayoutError
from training.data.label_space import LOCAL_IGNORE
from training.data.readers import IMAGE_SUFFIXES, FolderReader, load_image

CLASSES_FILE = "classes.txt"


UNIFY_FILE = "unify_map.json"


SUMMARY_FILE = "pseudo_labels.json"


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), sorted."""
    if not folder.is_dir():
        raise DatasetLayoutError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetLayoutError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def threshold_labels(labels: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """uint8 mask: ``labels`` where ``scores >= threshold`` and a class was found, else 255 (same shape)."""
    keep = (scores >= threshold) & (labels >= 0)
    return torch.where(keep, labels, LOCAL_IGNORE).to(torch.uint8)


def mine(
    model: str, images: Path, out: Path, *, threshold: float = 0.5, dataset: str | None = None, device: str = "cpu"
) -> dict:
    """Write the pseudo-labelled folder ``out`` (see the module docstring) and return its summary.

    Everything is written into a hidden folder next to ``out`` that replaces ``out`` (absent or empty) only once
    complete, so a failure at any image leaves ``out`` as it was and the same command can simply be run again."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: must be a probability in [0, 1]")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: not empty; pseudo-labels are written into a new folder")
    files = list_images(images)
    segmenter = PrototypeSegmenter.from_pretrained(model).to(device)
    _, class_names, dataset = segmenter.candidates(dataset)
    if len(class_names) >= LOCAL_IGNORE:
        raise UserError(
            f"{model}: {len(class_names)} classes do not fit the folder format's 0..254 ids; "
            f"pick one dataset with --dataset ({', '.join(segmenter.dataset_names)})"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    container = Path(tempfile.mkdtemp(prefix=f".{out.name}.mining-", dir=out.parent))
    staging = container / out.resolve().name  # the folder reader names the dataset after its folder
    try:
        staging.mkdir()
        summary = _write_pseudo_labels(segmenter, files, images, staging, class_names, dataset, threshold)
        summary.update(model=str(model), dataset_spec=f"folder:{out}")
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(staging, out)  # also over an empty folder
    finally:
        shutil.rmtree(container, ignore_errors=True)
    return summary


def _write_pseudo_labels(
    segmenter: PrototypeSegmenter,
    files: list[Path],
    images: Path,
    out: Path,
    class_names: list[str],
    dataset: str | None,
    threshold: float,
) -> dict:
    """Classes, masks, images and unification map of the pseudo-labelled folder ``out``; returns the summary."""
    (out / CLASSES_FILE).write_text("".join(f"{name}\n" for name in class_names))
    device = segmenter.prototypes.device

    class_pixels = torch.zeros(len(class_names), dtype=torch.long)
    total_pixels = 0
    for path in files:
        relative = path.relative_to(images)
        pixels = load_image(path)  # raises BadSampleError naming the file
        result = segmenter.predict(segmenter.preprocess(pixels)[None].to(device), restrict_to=dataset)
        mask = threshold_labels(result.labels[0], result.scores[0], threshold).cpu()
        target = out / "masks" / relative.with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.numpy(), mode="L").save(target)
        # the image goes last, so every image in images/ has its mask even if a later file fails
        (out / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / "images" / relative)
        class_pixels += torch.bincount(mask[mask != LOCAL_IGNORE].long(), minlength=len(class_names))
        total_pixels += mask.numel()

    reader = FolderReader(out)  # the data layer's own reader must accept what was written
    if len(reader) != len(files):
        raise DatasetLayoutError(f"{out}: the folder reader lists {len(reader)} samples, {len(files)} were written")
    source_names = class_names if dataset is None else [f"{dataset}/{name}" for name in class_names]
    unify = {f"{reader.dataset_name}/{name}": source for name, source in zip(class_names, source_names)}
    (out / UNIFY_FILE).write_text(json.dumps(unify, indent=1) + "\n")
    kept = int(class_pixels.sum())
    return {
        "images": str(images),
        "threshold": threshold,
        "dataset": dataset,
        "num_images": len(files),
        "pixels": total_pixels,
        "kept_pixels": kept,
        "kept_fraction": kept / max(total_pixels, 1),
        "class_pixels": {name: int(n) for name, n in zip(class_names, class_pixels.tolist()) if n > 0},
    }
