"""Dataset-level segmentation metrics, computed the way MMSegmentation's ``IoUMetric`` does.

One ``[K, K]`` confusion matrix (rows = ground truth, columns = prediction) is accumulated on the device over the
whole validation set; nothing is averaged per image or per batch. From it:

* IoU_k = TP_k / (GT_k + Pred_k - TP_k). A class whose union is 0 (never in the ground truth and never predicted
  anywhere in the set) has IoU NaN and is **left out of the mean**; a class that is predicted but absent from the
  ground truth has IoU 0 and **counts**. mIoU = nanmean(IoU), exactly ``np.nanmean`` in MMSeg.
* aAcc = sum TP / number of labelled pixels; Acc_k = TP_k / GT_k (NaN when GT_k = 0); mAcc = nanmean(Acc).

Ground-truth pixels equal to ``ignore_index`` (``-1`` in this project's label tensors, 255 on disk) are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.data.label_space import IGNORE_INDEX
from training.engine.distributed import all_reduce_sum_


def reduce_zero_label(label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """MMSeg's ``reduce_zero_label`` on an integer label map of any shape: 0 -> ignore, v -> v - 1, ignore stays.

    For datasets whose 0 means "unlabelled" (ADE20K, COCO-Stuff 10k); never for VOC or COCO-Stuff 164k, where 0
    is a real class. Works on signed tensors and on uint8 (where the result of 0 - 1 would otherwise wrap).
    """
    shifted = label.long() - 1
    shifted = torch.where((label == 0) | (label == ignore_index), torch.full_like(shifted, ignore_index), shifted)
    return shifted.to(label.dtype)


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``[K, K]`` int64 counts, ``[gt, pred]``, of predictions ``pred`` and labels ``target`` (same shape, int).

    Pixels whose label is ``ignore_index`` are dropped. Uses a weighted bincount so the shape of the work never
    depends on the data, which keeps it free of host synchronisation on accelerators.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
    valid = target != ignore_index
    flat_index = torch.where(valid, target * num_classes + pred, torch.zeros_like(target)).flatten()
    counts = torch.bincount(flat_index, weights=valid.flatten().to(torch.float64), minlength=num_classes**2)
    return counts.round().long().view(num_classes, num_classes)


@dataclass
class SegmentationMetrics:
    """Per-class and mean scores as Python floats (NaN for a class with no support); percentages, like MMSeg."""

    class_names: list[str]
    iou: list[float]
    acc: list[float]
    miou: float
    macc: float
    aacc: float

    def to_dict(self) -> dict:
        return {
            "mIoU": self.miou,
            "mAcc": self.macc,
            "aAcc": self.aacc,
            "per_class": {
                name: {"IoU": iou, "Acc": acc} for name, iou, acc in zip(self.class_names, self.iou, self.acc)
            },
        }

    def markdown(self) -> str:
        """Per-class table plus a summary row, NaN shown as "n/a" (class absent from GT and predictions)."""

        def fmt(value: float) -> str:
            return "n/a" if value != value else f"{value:.2f}"

        lines = ["| class | IoU | Acc |", "|---|---:|---:|"]
        lines += [
            f"| {name} | {fmt(iou)} | {fmt(acc)} |" for name, iou, acc in zip(self.class_names, self.iou, self.acc)
        ]
        lines += [
            "",
            "| mIoU | mAcc | aAcc |",
            "|---:|---:|---:|",
            f"| {fmt(self.miou)} | {fmt(self.macc)} | {fmt(self.aacc)} |",
        ]
        return "\n".join(lines)


class ConfusionMatrix:
    """Accumulates a dataset-level confusion matrix on ``device``; ``compute()`` gives ``SegmentationMetrics``.

    ``check_labels=True`` (the default) rejects labels outside ``[0, K)`` other than ``ignore_index`` with an
    error instead of silently dropping them; it costs one host sync per update, so the training loop's own
    validation may turn it off after the data has been checked once.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        device: torch.device | str = "cpu",
        ignore_index: int = IGNORE_INDEX,
        check_labels: bool = True,
    ):
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
        self.ignore_index = ignore_index
        self.check_labels = check_labels
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``, ``target``: int tensors of the same shape, e.g. ``[B, H, W]``."""
        if self.check_labels:
            bad = (target != self.ignore_index) & ((target < 0) | (target >= self.num_classes))
            if bool(bad.any()):
                values = torch.unique(target[bad]).tolist()
                raise ValueError(
                    f"labels {values[:10]} are outside [0, {self.num_classes}) and are not the ignore "
                    f"index {self.ignore_index}: wrong num_classes or label encoding?"
                )
        self.matrix += confusion_matrix(
            pred.to(self.matrix.device), target.to(self.matrix.device), self.num_classes, self.ignore_index
        )

    def all_reduce(self) -> None:
        """Sum the matrices of all processes (no-op without torch.distributed)."""
        all_reduce_sum_(self.matrix)

    def compute(self) -> SegmentationMetrics:
        return metrics_from_confusion(self.matrix, self.class_names)


def metrics_from_confusion(matrix: torch.Tensor, class_names: list[str]) -> SegmentationMetrics:
    """Scores from a ``[K, K]`` ``[gt, pred]`` count matrix (see the module docstring for the rules)."""
    matrix = matrix.double().cpu()
    true_positive = matrix.diag()
    gt_area = matrix.sum(dim=1)
    pred_area = matrix.sum(dim=0)
    union = gt_area + pred_area - true_positive
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, true_positive / union.clamp(min=1), nan)
    acc = torch.where(gt_area > 0, true_positive / gt_area.clamp(min=1), nan)
    labelled = gt_area.sum()
    aacc = (true_positive.sum() / labelled).item() * 100 if labelled > 0 else float("nan")
    return SegmentationMetrics(
        class_names=list(class_names),
        iou=(iou * 100).tolist(),
        acc=(acc * 100).tolist(),
        miou=torch.nanmean(iou).item() * 100,
        macc=torch.nanmean(acc).item() * 100,
        aacc=aacc,
    )
