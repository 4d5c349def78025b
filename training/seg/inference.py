"""Test-time inference: whole image or sliding window (MMSegmentation's semantics), optional horizontal flip.

Every function takes a model whose ``forward(image [B, 3, H, W])`` returns ``{"out": logits [B, K, H, W]}``
at the input size (``SegmentationModel``) and returns ``[B, K, H, W]`` scores for the input it was given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("whole", "slide")


def whole_inference(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, K, H, W]`` of the whole ``image [B, 3, H, W]`` in one forward pass."""
    return model(image)["out"]


def slide_inference(
    model: torch.nn.Module, image: torch.Tensor, crop_size: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """Sliding-window logits ``[B, K, H, W]`` of ``image [B, 3, H, W]``, as MMSeg's ``slide_inference``.

    Windows of ``crop_size`` (h, w) start every ``stride`` pixels; the last row/column of windows is shifted back
    to end at the image border, and a window larger than the image is clipped to it. Each pixel's logits are the
    mean over the windows that cover it (the count normalisation of MMSeg).
    """
    crop_h, crop_w = crop_size
    stride_h, stride_w = stride
    batch, _, height, width = image.shape
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    logits_sum = None
    counts = image.new_zeros(1, 1, height, width)
    for row in range(rows):
        for col in range(cols):
            y2 = min(row * stride_h + crop_h, height)
            x2 = min(col * stride_w + crop_w, width)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            crop_logits = model(image[:, :, y1:y2, x1:x2])["out"]
            if logits_sum is None:
                logits_sum = image.new_zeros(batch, crop_logits.shape[1], height, width)
            logits_sum[:, :, y1:y2, x1:x2] += crop_logits
            counts[:, :, y1:y2, x1:x2] += 1
    return logits_sum / counts


def predict_logits(
    model: torch.nn.Module,
    image: torch.Tensor,
    *,
    mode: str = "whole",
    crop_size: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    flip: bool = False,
    output_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Scores ``[B, K, h, w]`` for ``image [B, 3, H, W]``, resized bilinearly to ``output_size`` (h, w) if given.

    Without flip these are logits. With ``flip=True`` they are the mean of the softmax probabilities of the image
    and of its horizontal mirror (mirrored back), as MMSeg's test-time augmentation merges them.
    """
    if mode not in MODES:
        raise ValueError(f"inference mode {mode!r} is not one of {MODES}")
    if mode == "slide" and (crop_size is None or stride is None):
        raise ValueError("mode='slide' needs crop_size and stride")

    def run(batch: torch.Tensor) -> torch.Tensor:
        if mode == "whole":
            return whole_inference(model, batch)
        return slide_inference(model, batch, crop_size, stride)

    scores = run(image)
    if flip:
        scores = (scores.softmax(dim=1) + run(image.flip(-1)).flip(-1).softmax(dim=1)) / 2
    if output_size is not None and tuple(scores.shape[-2:]) != tuple(output_size):
        scores = F.interpolate(scores, size=tuple(output_size), mode="bilinear", align_corners=False)
    return scores
