"""The prototype segmenter scored with no fine-tuning: an export's prototypes label each pixel of a dataset's images
directly, at confidence thresholds; mIoU per threshold as a results table."""

from __future__ import annotations

import torch

from mdp_hub.label_space import dataset_class_ids
from mdp_hub.segmenter import PrototypeSegmenter
from training.data import build_segmentation_dataset
from training.seg.metrics import ConfusionMatrix, metrics_from_confusion

THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.9)


@torch.inference_mode()
def zero_finetune_scores(
    segmenter: PrototypeSegmenter, spec: str, max_images: int | None = None, thresholds: tuple[float, ...] = THRESHOLDS
) -> dict:
    """mIoU / aAcc of one evaluation split (dataset spec string) in the restricted and open settings, and the
    kept share / accuracy of open-setting pseudo-labels at each confidence threshold."""
    dataset = build_segmentation_dataset(spec, train=False, mean=list(segmenter.mean), std=list(segmenter.std))
    name = segmenter.resolve_dataset(dataset.reader.dataset_name)
    num_classes = dataset.num_classes
    if (
        list(dataset.class_names)
        != segmenter.label_space["datasets"][segmenter.dataset_names.index(name)]["class_names"]
    ):
        raise ValueError(f"{spec}: its classes differ from those of {name!r} in the model's label space")
    # global id -> local id of this dataset; every other class (and "no prototype") -> the extra column K
    to_local = torch.full((len(segmenter.class_names) + 1,), num_classes, dtype=torch.long)
    to_local[torch.tensor(dataset_class_ids(segmenter.label_space, name))] = torch.arange(num_classes)
    device = segmenter.prototypes.device
    restricted = ConfusionMatrix(num_classes, list(dataset.class_names), device=device)
    open_set = ConfusionMatrix(num_classes + 1, [*dataset.class_names, "<other dataset>"], device=device)
    threshold_values = torch.tensor(thresholds, device=device).view(-1, 1, 1, 1)
    kept_pixels = torch.zeros(len(thresholds), dtype=torch.long, device=device)
    correct_kept = torch.zeros_like(kept_pixels)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    for index in range(count):
        item = dataset[index]
        image, target = item["image"][None].to(device), item["mask"][None].to(device)
        restricted.update(segmenter.predict(image, restrict_to=name).labels, target)
        everything = segmenter.predict(image, restrict_to=None)
        local = to_local.to(device)[everything.labels]
        open_set.update(local, target)
        kept = (everything.scores[None] >= threshold_values) & (target[None] >= 0)  # [T, 1, H, W]
        kept_pixels += kept.flatten(1).sum(1)
        correct_kept += (kept & (local == target)[None]).flatten(1).sum(1)
    scores_restricted = restricted.compute()
    scores_open = metrics_from_confusion(open_set.matrix, open_set.class_names)
    ground_truth = restricted.matrix.sum(dim=1).double()
    present = int((ground_truth > 0).sum())
    return {
        "spec": spec,
        "dataset": name,
        "images": count,
        "classes": num_classes,
        "classes_in_ground_truth": present,
        "restricted": {
            "mIoU": scores_restricted.miou,
            "aAcc": scores_restricted.aacc,
            "per_class_IoU": dict(zip(scores_restricted.class_names, scores_restricted.iou)),
        },
        # the extra column only collects errors: its own IoU (0) is not part of the mean
        "open": {"mIoU": float(torch.tensor(scores_open.iou[:num_classes]).nanmean()), "aAcc": scores_open.aacc},
        "majority_class_mIoU": 100 * float(ground_truth.max() / ground_truth.sum()) / max(present, 1),
        "pseudo_labels": {
            str(t): {"kept": float(k / ground_truth.sum()), "accuracy": float(c / max(k, 1))}
            for t, k, c in zip(thresholds, kept_pixels.tolist(), correct_kept.tolist())
        },
    }


def results_markdown(results: list[dict], info: dict) -> str:
    lines = [
        "# Zero-fine-tuning mIoU of the prototype segmenter (synthetic benchmark)",
        "",
        "Produced by `python -m training.experiments_prototypes`. Nearest class prototype per pixel at the "
        "image's native size, no decoder, no fine-tuning; MMSeg-style dataset-level mIoU (classes absent "
        "from ground truth and predictions are left out; predicted-but-absent classes count as 0).",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += [
        "",
        "| dataset (val split) | images | classes (in GT) | mIoU restricted | aAcc restricted | "
        "mIoU open label space | aAcc open | majority-class mIoU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['dataset']} | {r['images']} | {r['classes']} ({r['classes_in_ground_truth']}) | "
            f"{r['restricted']['mIoU']:.2f} | {r['restricted']['aAcc']:.2f} | {r['open']['mIoU']:.2f} | "
            f"{r['open']['aAcc']:.2f} | {r['majority_class_mIoU']:.2f} |"
        )
    thresholds = list(results[0]["pseudo_labels"]) if results else []
    lines += [
        "",
        "Pseudo-labels (open label space, as `python -m training.mine` writes them): share of labelled pixels "
        "kept at confidence >= threshold / accuracy of the kept pixels.",
        "",
        "| dataset | " + " | ".join(f">= {t}" for t in thresholds) + " |",
        "|---|" + "---:|" * len(thresholds),
    ]
    for r in results:
        cells = [f"{100 * q['kept']:.1f}% / {100 * q['accuracy']:.1f}%" for q in r["pseudo_labels"].values()]
        lines.append(f"| {r['dataset']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
