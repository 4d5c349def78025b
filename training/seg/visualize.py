"""Prediction overlays: image | image blended with the prediction | image blended with the ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IGNORE_COLOUR = (0, 0, 0)


def denormalize(image: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """Normalised float ``[3, H, W]`` -> uint8 RGB ``[H, W, 3]``."""
    mean_t = torch.tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    rgb = (image * std_t + mean_t).clamp(0, 1) * 255
    return rgb.round().byte().permute(1, 2, 0).cpu().numpy()


def colorize(label: torch.Tensor, palette: np.ndarray) -> np.ndarray:
    """Label map ``[H, W]`` (ids ``0..K-1``, anything else = ignore) -> uint8 RGB ``[H, W, 3]``."""
    label = label.cpu().numpy()
    table = np.concatenate([np.asarray(palette, dtype=np.uint8), np.array([IGNORE_COLOUR], dtype=np.uint8)])
    index = np.where((label >= 0) & (label < len(palette)), label, len(palette))
    return table[index]


def save_overlay(
    path: str | Path,
    image: torch.Tensor,
    pred: torch.Tensor,
    target: torch.Tensor,
    palette: np.ndarray,
    mean: list[float],
    std: list[float],
    alpha: float = 0.5,
) -> Path:
    """Write one PNG: image, prediction overlay, ground-truth overlay side by side.

    ``image``: normalised ``[3, H, W]``; ``pred``/``target``: ``[H, W]`` at the image's size (ignore = black)."""
    rgb = denormalize(image, mean, std)
    if rgb.shape[:2] != tuple(pred.shape):
        rgb = np.asarray(Image.fromarray(rgb).resize((pred.shape[1], pred.shape[0]), Image.BILINEAR))
    blend = lambda colours: (rgb * (1 - alpha) + colours * alpha).round().astype(np.uint8)  # noqa: E731
    panel = np.concatenate([rgb, blend(colorize(pred, palette)), blend(colorize(target, palette))], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(panel).save(path)
    return path
