"""`python -m training.evaluate`: MMSegmentation-style evaluation of a fine-tuned segmentation checkpoint.

    python -m training.evaluate --checkpoint runs/finetune_synthetic/last.pth --data cityscapes:/data/cityscapes \\
        [--mode whole|slide] [--crop 512 1024 --stride 341 682] [--flip] [--output DIR]

Single-scale inference (optionally with a horizontal flip), the image first rescaled like MMSeg's test ``Resize``
(``eval.test_scale``, e.g. short side 512), the scores resized back to the label's resolution, then one
dataset-level confusion matrix: per-class IoU / Acc, mIoU (nan-mean over classes that occur in the ground truth or
the predictions), mAcc, aAcc. Writes ``results.json``, ``results.md`` and prediction overlays (PNG). Runs under
``torchrun`` too: each process scores a disjoint shard and the matrices are summed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from mdp_hub.errors import command
from mdp_hub.help_format import HelpFormatter, plain
from training.config import ConfigError, from_dict
from training.data.datasets import build_segmentation_dataset
from training.engine import distributed
from training.engine.checkpoint import load_checkpoint
from training.engine.numerics import autocast
from training.seg.config import EvalConfig, FinetuneConfig, resolve_data_spec
from training.seg.inference import predict_logits
from training.seg.metrics import ConfusionMatrix, SegmentationMetrics
from training.seg.models import build_segmentation_model
from training.seg.visualize import save_overlay

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
HUB_METRICS_JSON = "hub_metrics.json"


def keep_ratio_size(height: int, width: int, test_scale: list[int]) -> tuple[int, int]:
    """MMSeg's keep-ratio ``Resize(scale=(long, short))``: the largest size whose long side is <= ``long`` and
    short side <= ``short`` (images are scaled up as well as down); empty ``test_scale`` keeps the size."""
    if not test_scale:
        return height, width
    long_bound, short_bound = max(test_scale), min(test_scale)
    factor = min(long_bound / max(height, width), short_bound / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


@torch.inference_mode()
def evaluate_dataset(
    model: torch.nn.Module,
    dataset,
    eval_config: EvalConfig,
    *,
    device: torch.device,
    amp: str = "none",
    num_workers: int = 0,
    overlay_dir: Path | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> SegmentationMetrics:
    """Score ``model`` on an evaluation dataset (``build_segmentation_dataset(train=False)``: whole images,
    masks in local ids with -1 ignore). Each process takes every ``world_size``-th image; the confusion
    matrices are summed over processes, so every rank returns the same metrics."""
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    shard = Subset(dataset, range(rank, len(dataset), world_size))
    loader = DataLoader(shard, batch_size=1, shuffle=False, num_workers=num_workers)
    meter = ConfusionMatrix(dataset.num_classes, list(dataset.class_names), device=device)
    was_training = model.training
    model.eval()
    overlays_left = eval_config.overlays if (overlay_dir is not None and rank == 0) else 0
    for item in loader:
        image, target = item["image"].to(device), item["mask"].to(device)
        height, width = target.shape[-2:]
        resized = image
        size = keep_ratio_size(image.shape[-2], image.shape[-1], eval_config.test_scale)
        if size != tuple(image.shape[-2:]):
            resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        with autocast(amp, device):
            scores = predict_logits(
                model,
                resized,
                mode=eval_config.mode,
                crop_size=tuple(eval_config.crop_size),
                stride=tuple(eval_config.stride),
                flip=eval_config.flip,
                output_size=(height, width),
            )
        pred = scores.argmax(dim=1)
        meter.update(pred, target)
        if overlays_left > 0:
            name = Path(item["name"][0]).name
            save_overlay(overlay_dir / f"{name}.png", image[0], pred[0], target[0], dataset.palette, mean, std)
            overlays_left -= 1
    model.train(was_training)
    meter.all_reduce()
    return meter.compute()


def hub_metrics_entry(metrics: SegmentationMetrics, info: dict) -> dict:
    """The result in the form ``mdp_hub.export.export(metrics=...)`` / ``mdp-hub export --metrics FILE`` takes,
    so the exported model card's ``model-index`` carries the measured number. (The Hub requires a URL with a
    ``source_name``, which a local run does not have; the protocol stays in ``results.json``.)"""
    return {"dataset": info["dataset"], "mIoU": round(metrics.miou, 2), "split": info.get("split", "validation")}


def write_results(output_dir: Path, metrics: SegmentationMetrics, info: dict) -> tuple[Path, Path]:
    """``results.json`` (``info`` + all scores), ``results.md`` (settings, summary and per-class table) and, when
    the mIoU is defined, ``hub_metrics.json`` for the exporter's ``--metrics``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / RESULTS_JSON, output_dir / RESULTS_MD
    json_path.write_text(json.dumps({**info, **metrics.to_dict()}, indent=2) + "\n")
    settings = "\n".join(f"- {key}: `{value}`" for key, value in info.items())
    md_path.write_text(f"# Evaluation\n\n{settings}\n\n{metrics.markdown()}\n")
    if metrics.miou == metrics.miou:  # NaN when no class occurs at all: nothing to publish
        (output_dir / HUB_METRICS_JSON).write_text(json.dumps(hub_metrics_entry(metrics, info), indent=2) + "\n")
    return json_path, md_path


def load_finetuned_model(checkpoint_path: Path) -> tuple[torch.nn.Module, FinetuneConfig, dict]:
    """The segmentation model of a fine-tuning checkpoint, loaded strictly, with its config and checkpoint."""
    checkpoint = load_checkpoint(checkpoint_path, kind="finetune")
    config = from_dict(checkpoint["config"], FinetuneConfig)
    class_names = checkpoint["label_space"]["datasets"][0]["class_names"]
    model = build_segmentation_model(config.model, len(class_names), checkpoint["arch"])
    model.load_state_dict(checkpoint["model"], strict=True)
    return model, config, checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=plain(__doc__.split("\n")[0]), formatter_class=HelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="fine-tuning checkpoint (last.pth)")
    parser.add_argument(
        "--data", default=None, help="evaluation dataset spec NAME:PATH[:split]; default: the checkpoint's data.val"
    )
    parser.add_argument("--mode", choices=["whole", "slide"], default=None, help="default: the checkpoint's")
    parser.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"), help="slide window")
    parser.add_argument("--stride", type=int, nargs=2, default=None, metavar=("H", "W"), help="slide stride")
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped inference")
    parser.add_argument(
        "--test-scale",
        type=int,
        nargs="*",
        default=None,
        metavar="N",
        help="keep-ratio resize bound LONG SHORT before inference (none = native size)",
    )
    parser.add_argument("--overlays", type=int, default=None, help="number of prediction overlays to write")
    parser.add_argument("--output", type=Path, default=None, help="default: <checkpoint folder>/eval")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast precision")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if present")
    parser.add_argument("--num-workers", type=int, default=2, help="data loader workers (default 2)")
    return parser.parse_args(argv)


@command("python -m training.evaluate")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dist_info = distributed.init_distributed(args.device)
    try:
        model, config, checkpoint = load_finetuned_model(args.checkpoint)
        eval_config = config.eval
        for name, value in (
            ("mode", args.mode),
            ("crop_size", args.crop),
            ("stride", args.stride),
            ("test_scale", args.test_scale),
            ("overlays", args.overlays),
        ):
            if value is not None:
                setattr(eval_config, name, list(value) if isinstance(value, (list, tuple)) else value)
        eval_config.flip = eval_config.flip or args.flip
        spec = resolve_data_spec(args.data or config.data.val, train=False)
        dataset = build_segmentation_dataset(spec, train=False, mean=config.data.mean, std=config.data.std)
        trained_names = checkpoint["label_space"]["datasets"][0]["class_names"]
        if list(dataset.class_names) != list(trained_names):
            raise ConfigError(
                f"--data {spec}: its {dataset.num_classes} classes differ from the "
                f"{len(trained_names)} classes the checkpoint was trained on"
            )
        output = args.output or args.checkpoint.parent / "eval"
        metrics = evaluate_dataset(
            model.to(dist_info.device),
            dataset,
            eval_config,
            device=dist_info.device,
            amp=args.amp,
            num_workers=args.num_workers,
            overlay_dir=output / "overlays",
            mean=config.data.mean,
            std=config.data.std,
        )
        if dist_info.is_main:
            info = {
                "checkpoint": str(args.checkpoint),
                "data": str(spec),
                "dataset": dataset.reader.dataset_name,
                "split": dataset.reader.split,
                "step": checkpoint["step"],
                "arch": checkpoint["arch"],
                "head": config.model.head,
                "init": config.init,
                "mode": eval_config.mode,
                "flip": eval_config.flip,
                "test_scale": eval_config.test_scale,
            }
            json_path, md_path = write_results(output, metrics, info)
            print(
                f"mIoU {metrics.miou:.2f}  mAcc {metrics.macc:.2f}  aAcc {metrics.aacc:.2f}  -> {json_path}, {md_path}"
            )
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
