"""Losses of downstream fine-tuning (pure functions on tensors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.data.label_space import IGNORE_INDEX


def segmentation_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = IGNORE_INDEX, avg_non_ignore: bool = False
) -> torch.Tensor:
    """Pixel-wise cross-entropy, a scalar.

    ``logits``: ``[B, K, H, W]``; ``target``: ``[B, H, W]`` int64 local ids, ``ignore_index`` for unlabelled
    pixels. MMSegmentation's default (``avg_non_ignore=False``) divides by all pixels, ignored ones counting 0;
    ``avg_non_ignore=True`` divides by the labelled pixels only (PyTorch's ``ignore_index`` mean).
    """
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    if avg_non_ignore:
        return per_pixel.sum() / (target != ignore_index).sum().clamp(min=1)
    return per_pixel.mean()
