"""What a segmentation looks like: ``mdp-hub segment`` overlays, its ``--html`` report, and the views of
``mdp-hub demo``.

Each output PNG is ``image | image blended with the class colours | legend`` (class colour, name and share of
the image, largest first). Colours come from ``segmenter.class_colour``, so a class looks the same in every
overlay whether or not the prediction was restricted to one dataset. The HTML report holds, per image, the blend,
a confidence map (the softmax score of the chosen class) and the legend with each class's share, in one
self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

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


def _palette(result: PrototypeSegmentation) -> np.ndarray:
    """uint8 ``[K + 1, 3]``: every class's colour, then the colour of pixels without a class (label -1)."""
    return np.array([class_colour(name) for name in result.class_names] + [NO_CLASS_COLOUR], dtype=np.uint8)


def blend_image(image: Image.Image, result: PrototypeSegmentation, alpha: float = 0.5) -> Image.Image:
    """The RGB image blended with the colour of each pixel's class."""
    if result.labels.shape != (image.height, image.width):
        raise ValueError(
            f"labels {tuple(result.labels.shape)} do not match the image size {image.height}x{image.width}"
        )
    labels = result.labels.cpu().numpy()
    colours = _palette(result)[np.where(labels >= 0, labels, len(result.class_names))]
    rgb = np.asarray(image, dtype=np.float32)
    return Image.fromarray((rgb * (1 - alpha) + colours * alpha).round().astype(np.uint8))


def confidence_image(result: PrototypeSegmentation) -> Image.Image:
    """The score of each pixel's class as a dark-blue (0) to yellow (1) ramp."""
    scores = result.scores.float().clamp(0, 1).cpu().numpy()[..., None]
    low, high = np.array([20, 24, 82], dtype=np.float32), np.array([250, 230, 40], dtype=np.float32)
    return Image.fromarray((low + (high - low) * scores).round().astype(np.uint8))


def share_text(share: float) -> str:
    return f"{100 * share:.1f}%" if share >= 0.0005 else "<0.1%"


def legend_html(result: PrototypeSegmentation) -> str:
    """An HTML table of the classes present: colour swatch, name and share of the image, largest first."""
    rows = "".join(
        f'<tr><td><span style="display:inline-block;width:14px;height:14px;border:1px solid #000;'
        f'background:rgb{class_colour(name)}"></span></td><td class="class-name">{html.escape(name)}</td>'
        f'<td style="text-align:right">{share_text(share)}</td></tr>'
        for _, name, share in present_classes(result)
    )
    return f'<table class="legend"><tr><th></th><th>class</th><th>share</th></tr>{rows}</table>'


def downscale_note(result: PrototypeSegmentation) -> str:
    """``""``, or the sentence saying the network saw a downscaled copy of a large image."""
    if not result.downscaled:
        return ""
    (height, width), (net_height, net_width) = result.labels.shape[-2:], result.network_size
    return (
        f"a {width}x{height} image: the network saw it downscaled to {net_width}x{net_height}, labels are at full size"
    )


def for_display(image: Image.Image, result: PrototypeSegmentation, longest: int) -> tuple[Image.Image, Any]:
    """The image and its segmentation shrunk (labels nearest, scores bilinear) to at most ``longest`` pixels
    a side, for a page; shares of the classes are those of the full-size labels."""
    scale = longest / max(image.width, image.height)
    if scale >= 1:
        return image, result
    size = (max(1, round(image.height * scale)), max(1, round(image.width * scale)))
    labels = torch.nn.functional.interpolate(result.labels[None, None].float(), size=size, mode="nearest")
    scores = torch.nn.functional.interpolate(result.scores[None, None], size=size, mode="bilinear")
    shrunk = replace(result, labels=labels[0, 0].long(), scores=scores[0, 0], network_size=None)
    return image.resize((size[1], size[0]), Image.Resampling.BILINEAR), shrunk


def render_overlay(image: Image.Image, result: PrototypeSegmentation, alpha: float = 0.5) -> Image.Image:
    """``image | blend | legend`` for an RGB image and its ``[H, W]`` segmentation."""
    blend = blend_image(image, result, alpha)
    palette = _palette(result)

    rows = present_classes(result)
    font = ImageFont.load_default()
    texts = [f"{name}  {share_text(share)}" for _, name, share in rows]
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
    html_report: bool = False,
) -> list[tuple[Path, PrototypeSegmentation]]:
    """Write ``<out_dir>/<image stem>.png`` overlays (and with ``html_report`` ``<out_dir>/report.html``); returns
    each written overlay path with its segmentation.

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
    written, sections = [], []
    for path in paths:
        image = open_image(path)
        result = segmenter.segment(image, restrict_to=dataset)
        target = out_dir / f"{path.stem}.png"
        render_overlay(image, result).save(target, format="PNG")
        written.append((target, result))
        if html_report:
            sections.append(_report_section(path.name, image, result))
    if html_report:
        title = f"{len(paths)} image{'s' if len(paths) != 1 else ''}, classes of {dataset or 'every dataset'}"
        (out_dir / REPORT_NAME).write_text(_report_page(title, sections), encoding="utf-8")
    return written


REPORT_NAME = "report.html"
REPORT_IMAGE_SIDE = 768


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _report_section(name: str, image: Image.Image, result: PrototypeSegmentation) -> str:
    shown, view = for_display(image, result, REPORT_IMAGE_SIDE)
    note = downscale_note(result)
    return (
        f"<section><h2>{html.escape(name)}</h2>"
        + (f'<p class="note">{html.escape(note)}</p>' if note else "")
        + '<div class="row">'
        + f'<figure><img alt="overlay of {html.escape(name)}" src="{_data_uri(blend_image(shown, view))}">'
        + "<figcaption>classes</figcaption></figure>"
        + f'<figure><img alt="confidence of {html.escape(name)}" src="{_data_uri(confidence_image(view))}">'
        + "<figcaption>confidence (blue 0, yellow 1)</figcaption></figure>"
        + f"{legend_html(result)}</div></section>"
    )


def _report_page(title: str, sections: list[str]) -> str:
    style = (
        "body{font-family:sans-serif;margin:1.5em}figure{margin:0 1em 1em 0}img{max-width:100%}"
        ".row{display:flex;flex-wrap:wrap;align-items:flex-start}.legend td,.legend th{padding:2px 6px}"
        ".note{color:#8a4b00}"
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )
