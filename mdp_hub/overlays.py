"""``mdp-hub segment``: colour overlays of prototype-segmenter predictions with a legend of the classes present.

Each output PNG is ``image | image blended with the class colours | legend`` (class colour, name and share of
the image, largest first). Colours come from ``segmenter.class_colour``, so a class looks the same in every
overlay whether or not the prediction was restricted to one dataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .segmenter import PrototypeSegmentation, PrototypeSegmenter, class_colour, open_image

NO_CLASS_COLOUR = (0, 0, 0)
ROW_HEIGHT = 18
SWATCH = 12
MARGIN = 6


def present_classes(result: PrototypeSegmentation) -> list[tuple[int, str, float]]:
    """``(id, name, share of the image)`` of every class in ``result.labels [H, W]``, largest first."""
    labels = result.labels.flatten()
    counts = torch.bincount(labels[labels >= 0], minlength=len(result.class_names))
    shares = counts.double() / max(labels.numel(), 1)
    order = torch.argsort(counts, descending=True, stable=True)
    return [(i, result.class_names[i], shares[i].item()) for i in order.tolist() if counts[i] > 0]


def render_overlay(image: Image.Image, result: PrototypeSegmentation, alpha: float = 0.5) -> Image.Image:
    """``image | blend | legend`` for an RGB image and its ``[H, W]`` segmentation."""
    if result.labels.shape != (image.height, image.width):
        raise ValueError(
            f"labels {tuple(result.labels.shape)} do not match the image size {image.height}x{image.width}"
        )
    palette = np.array([class_colour(name) for name in result.class_names] + [NO_CLASS_COLOUR], dtype=np.uint8)
    labels = result.labels.cpu().numpy()
    colours = palette[np.where(labels >= 0, labels, len(result.class_names))]
    rgb = np.asarray(image, dtype=np.float32)
    blend = Image.fromarray((rgb * (1 - alpha) + colours * alpha).round().astype(np.uint8))

    rows = present_classes(result)
    font = ImageFont.load_default()
    texts = [f"{name}  {100 * share:.1f}%" if share >= 0.0005 else f"{name}  <0.1%" for _, name, share in rows]
    measure = ImageDraw.Draw(blend)
    text_width = max((measure.textlength(text, font=font) for text in texts), default=0)
    legend_width = int(MARGIN * 3 + SWATCH + text_width)
    height = max(image.height, MARGIN * 2 + ROW_HEIGHT * len(rows))
    canvas = Image.new("RGB", (2 * image.width + legend_width, height), (255, 255, 255))
    canvas.paste(image, (0, 0))
    canvas.paste(blend, (image.width, 0))
    draw = ImageDraw.Draw(canvas)
    left = 2 * image.width + MARGIN
    for row, ((index, name, _), text) in enumerate(zip(rows, texts)):
        top = MARGIN + row * ROW_HEIGHT
        draw.rectangle(
            [left, top, left + SWATCH, top + SWATCH], fill=tuple(int(v) for v in palette[index]), outline=(0, 0, 0)
        )
        draw.text((left + SWATCH + MARGIN, top), text, fill=(0, 0, 0), font=font)
    return canvas


def segment_files(
    segmenter: PrototypeSegmenter,
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    restrict_to: str | None = None,
) -> list[tuple[Path, PrototypeSegmentation]]:
    """Write ``<out_dir>/<image stem>.png`` overlays; returns each written path with its segmentation.

    Every file is checked to be an image before any overlay is written, so a bad file fails the whole call
    (a file whose header is fine but whose data is truncated still fails when its turn comes).
    """
    paths = [Path(p) for p in images]
    stems = [p.stem for p in paths]
    clashing = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashing:
        raise ValueError(f"several images would write the same overlay: {', '.join(s + '.png' for s in clashing)}")
    out_dir = Path(out_dir)
    inputs = {path.resolve() for path in paths}
    overwritten = [str(p) for p in paths if (out_dir / f"{p.stem}.png").resolve() in inputs]
    if overwritten:
        raise ValueError(f"--out {out_dir}: the overlays would overwrite the input images {', '.join(overwritten)}")
    for path in paths:
        open_image(path, decode=False)
    dataset = None if restrict_to is None else segmenter.resolve_dataset(restrict_to)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        image = open_image(path)
        result = segmenter.segment(image, restrict_to=dataset)
        target = out_dir / f"{path.stem}.png"
        render_overlay(image, result).save(target, format="PNG")
        written.append((target, result))
    return written
