"""Pseudo-label a folder of unlabeled images with the prototypes of an MDP model (the authors' COCO-without-labels
experiment, offline): ``python -m training.mine --model SRC --images DIR --out DIR [--threshold 0.5]``.

Every pixel takes its nearest class prototype; pixels whose confidence (softmax probability at the pretraining
temperature, ``PrototypeSegmenter.predict``) is below ``--threshold`` become 255 (ignore). The output is the
generic folder format of the data layer (``folder:OUT``)::

    OUT/classes.txt           one class per line: the global names "<dataset>/<class>", or with --dataset the
                              classes of that dataset
    OUT/images/<rel path>     the input images, copied byte for byte
    OUT/masks/<rel path>.png  local ids of classes.txt, 255 = below the threshold or no prototype
    OUT/unify_map.json        "<OUT name>/<class>" -> the pretraining class it came from
    OUT/pseudo_labels.json    model, threshold, pixel counts

Feeding it to pretraining: add ``folder:OUT`` to ``data.datasets``; with ``data.unify_map=OUT/unify_map.json``
the pseudo-labels train the existing prototypes of their classes instead of new ones. The folder format allows
at most 255 classes, so a label space larger than that (the paper's 342) needs ``--dataset``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from mdp_hub.errors import UserError, command
from mdp_hub.help_format import HelpFormatter, plain
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.mine", description=plain(__doc__.split("\n\n")[0]), formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="export folder with prototypes, MDP pretraining checkpoint, or Hub repo ORG/NAME"
    )
    parser.add_argument("--images", required=True, type=Path, help="folder of unlabeled images (searched recursively)")
    parser.add_argument("--out", required=True, type=Path, help="new folder for the pseudo-labelled dataset")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="minimum confidence of a kept pixel (default 0.5, the method's pseudo_label_threshold)",
    )
    parser.add_argument("--dataset", help="label with one pretraining dataset's classes only, e.g. voc_aug")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    return parser.parse_args(argv)


@command("python -m training.mine", expected=(ValueError,))
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = mine(
        args.model, args.images, args.out, threshold=args.threshold, dataset=args.dataset, device=args.device
    )
    print(
        f"kept {summary['kept_pixels']} of {summary['pixels']} pixels ({100 * summary['kept_fraction']:.1f}%) "
        f"at confidence >= {args.threshold} in {summary['num_images']} images -> {summary['dataset_spec']}"
    )
    top = sorted(summary["class_pixels"].items(), key=lambda item: -item[1])[:10]
    if top:
        print("most kept classes: " + ", ".join(f"{name} {count}" for name, count in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
