"""MMSegmentation-style evaluation of a segmentation model on a dataset: keep-ratio test resize, whole or sliding
window inference, one dataset-level confusion matrix, and the results files (JSON, Markdown, Hub metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from training.config import from_dict
from training.engine import distributed
from training.engine.checkpoint import load_checkpoint
from training.engine.numerics import autocast
from training.seg.config import EvalConfig, FinetuneConfig
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
