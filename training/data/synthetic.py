"""Synthetic multi-dataset benchmark written to disk in the real dataset layouts.

Four small datasets, each with its real class list but rendering only a subset of it: VOC 2012 + aug
(palette PNGs with 255 boundaries), ADE20K (0 = "other" objects), COCO-Stuff 164k (raw stuffthingmaps ids,
255 unlabeled) and a Cityscapes downstream set (raw labelIds) whose label space is partly new.

Every rendered class is a *concept* with a visual identity (colour distribution, texture, shape family, scale).
Classes that mean the same thing across datasets (person, car, sky, building, grass, ...) share a concept, with
a small per-dataset colour shift, so cross-dataset similarity exists; look-alike concepts (cat/dog, bus/truck,
person/rider, brick/concrete wall) differ only in texture details. Objects occlude each other on textured
stuff regions, with random scale, colour, lighting and noise, so training from scratch does not saturate.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import classes
from training.data.readers import coco_stuff_raw_table

SYNTHETIC_VERSION = "v1"
MARKER_FILE = "synthetic.json"


@dataclass(frozen=True)
class Concept:
    """Visual identity of a class: mean RGB in 0..1, colour spread per instance, texture, shape, size."""

    color: tuple[float, float, float]
    texture: str
    frequency: float = 8.0  # texture cycles per 100 px
    contrast: float = 0.2  # texture amplitude (relative brightness change)
    spread: float = 0.05  # per-instance colour standard deviation
    shape: str = "region"  # "region" for stuff, else a thing's shape family
    size: tuple[float, float] = (0.2, 0.5)  # thing height as a fraction of the image height


CONCEPTS: dict[str, Concept] = {
    # stuff
    "sky": Concept((0.47, 0.66, 0.90), "gradient", contrast=0.25, spread=0.06),
    "building": Concept((0.56, 0.50, 0.46), "windows", frequency=9.0, contrast=0.35, spread=0.08),
    "wall": Concept((0.78, 0.74, 0.66), "noise", frequency=4.0, contrast=0.08, spread=0.05),
    "wall_brick": Concept((0.62, 0.34, 0.25), "bricks", frequency=10.0, contrast=0.35, spread=0.04),
    "wall_concrete": Concept((0.62, 0.40, 0.32), "noise", frequency=10.0, contrast=0.30, spread=0.04),
    "road": Concept((0.36, 0.36, 0.39), "noise", frequency=30.0, contrast=0.12, spread=0.03),
    "sidewalk": Concept((0.62, 0.57, 0.57), "checker", frequency=7.0, contrast=0.12, spread=0.03),
    "grass": Concept((0.30, 0.60, 0.22), "stripes", frequency=25.0, contrast=0.25, spread=0.05),
    "terrain": Concept((0.50, 0.58, 0.30), "dots", frequency=14.0, contrast=0.25, spread=0.05),
    "tree": Concept((0.20, 0.42, 0.16), "noise", frequency=12.0, contrast=0.45, spread=0.05),
    "water": Concept((0.20, 0.40, 0.62), "waves", frequency=10.0, contrast=0.25, spread=0.05),
    "floor": Concept((0.60, 0.44, 0.30), "stripes", frequency=6.0, contrast=0.18, spread=0.06),
    "mountain": Concept((0.46, 0.42, 0.38), "noise", frequency=6.0, contrast=0.30, spread=0.05),
    "sand": Concept((0.84, 0.75, 0.55), "noise", frequency=40.0, contrast=0.10, spread=0.04),
    "fence": Concept((0.55, 0.50, 0.42), "grid", frequency=12.0, contrast=0.45, spread=0.04),
    # things
    "person": Concept(
        (0.45, 0.35, 0.40), "stripes", frequency=4.0, contrast=0.10, spread=0.22, shape="person", size=(0.30, 0.70)
    ),
    "rider": Concept(
        (0.45, 0.35, 0.40), "stripes", frequency=18.0, contrast=0.25, spread=0.22, shape="person", size=(0.30, 0.60)
    ),
    "car": Concept((0.50, 0.50, 0.55), "gradient", contrast=0.15, spread=0.25, shape="car", size=(0.18, 0.40)),
    "bus": Concept(
        (0.85, 0.70, 0.20), "windows", frequency=8.0, contrast=0.25, spread=0.08, shape="bus", size=(0.30, 0.55)
    ),
    "truck": Concept(
        (0.80, 0.68, 0.25), "noise", frequency=8.0, contrast=0.12, spread=0.08, shape="bus", size=(0.30, 0.55)
    ),
    "cat": Concept(
        (0.70, 0.52, 0.32), "stripes", frequency=16.0, contrast=0.30, spread=0.10, shape="animal", size=(0.20, 0.40)
    ),
    "dog": Concept(
        (0.66, 0.50, 0.34), "dots", frequency=16.0, contrast=0.30, spread=0.10, shape="animal", size=(0.22, 0.45)
    ),
    "horse": Concept(
        (0.45, 0.28, 0.16), "noise", frequency=5.0, contrast=0.10, spread=0.06, shape="quadruped", size=(0.35, 0.60)
    ),
    "sheep": Concept(
        (0.88, 0.86, 0.80), "noise", frequency=35.0, contrast=0.25, spread=0.03, shape="quadruped", size=(0.25, 0.45)
    ),
    "cow": Concept(
        (0.25, 0.22, 0.20), "dots", frequency=5.0, contrast=0.90, spread=0.04, shape="quadruped", size=(0.30, 0.55)
    ),
    "boat": Concept(
        (0.80, 0.80, 0.82), "stripes", frequency=5.0, contrast=0.15, spread=0.15, shape="boat", size=(0.20, 0.40)
    ),
    "aeroplane": Concept((0.85, 0.85, 0.88), "gradient", contrast=0.10, spread=0.04, shape="plane", size=(0.20, 0.35)),
    "bottle": Concept((0.25, 0.55, 0.30), "gradient", contrast=0.40, spread=0.12, shape="bottle", size=(0.25, 0.45)),
    "chair": Concept(
        (0.50, 0.32, 0.18), "stripes", frequency=10.0, contrast=0.20, spread=0.08, shape="chair", size=(0.25, 0.45)
    ),
    "pole": Concept((0.58, 0.58, 0.58), "gradient", contrast=0.10, spread=0.04, shape="pole", size=(0.55, 0.85)),
    "traffic_sign": Concept(
        (0.85, 0.15, 0.12), "rings", frequency=20.0, contrast=0.50, spread=0.04, shape="sign", size=(0.10, 0.18)
    ),
    "other": Concept(
        (0.50, 0.50, 0.50), "checker", frequency=20.0, contrast=0.50, spread=0.25, shape="blob", size=(0.15, 0.35)
    ),
}


@dataclass(frozen=True)
class SyntheticDataset:
    """Which concepts a dataset renders and the raw label value it writes for each."""

    name: str
    top: dict[str, int]  # stuff concepts for the upper band (sky-like)
    middle: dict[str, int]  # stuff concepts with an irregular skyline (buildings, trees, walls)
    bottom: dict[str, int]  # ground stuff
    things: dict[str, int]
    max_things: int
    size: tuple[tuple[int, int], tuple[int, int]]  # (height range, width range)
    color_shift: tuple[float, float, float]
    thing_scale: float = 1.0  # VOC is object-centric: larger things


def _voc(name: str) -> int:
    return classes.VOC_CLASSES.index(name)


def _ade(name: str) -> int:  # raw ADE20K value = local id + 1
    return classes.ADE20K_CLASSES.index(name) + 1


def _coco(name: str) -> int:  # raw 0-based stuffthingmaps id
    return int(np.flatnonzero(coco_stuff_raw_table() == classes.COCO_STUFF_CLASSES.index(name))[0])


def _cityscapes(name: str) -> int:  # raw labelId
    train_id = classes.CITYSCAPES_CLASSES.index(name)
    return next(i for i, t in classes.CITYSCAPES_ID_TO_TRAIN_ID.items() if t == train_id)


BACKGROUND = _voc("background")
DATASETS: dict[str, SyntheticDataset] = {
    "voc_aug": SyntheticDataset(
        "voc_aug",
        top={"sky": BACKGROUND, "wall": BACKGROUND},
        middle={"building": BACKGROUND, "tree": BACKGROUND, "mountain": BACKGROUND},
        bottom={"grass": BACKGROUND, "road": BACKGROUND, "water": BACKGROUND, "floor": BACKGROUND},
        things={
            c: _voc(n)
            for c, n in [
                ("person", "person"),
                ("car", "car"),
                ("bus", "bus"),
                ("cat", "cat"),
                ("dog", "dog"),
                ("horse", "horse"),
                ("boat", "boat"),
                ("aeroplane", "aeroplane"),
                ("bottle", "bottle"),
                ("chair", "chair"),
            ]
        },
        max_things=3,
        size=((128, 176), (160, 192)),
        color_shift=(0.0, 0.0, 0.0),
        thing_scale=1.6,
    ),
    "ade20k": SyntheticDataset(
        "ade20k",
        top={"sky": _ade("sky"), "wall": _ade("wall")},
        middle={"building": _ade("building"), "tree": _ade("tree"), "mountain": _ade("mountain")},
        bottom={
            "road": _ade("road"),
            "grass": _ade("grass"),
            "floor": _ade("floor"),
            "water": _ade("water"),
            "sand": _ade("sand"),
            "sidewalk": _ade("sidewalk"),
        },
        things={"person": _ade("person"), "car": _ade("car"), "chair": _ade("chair"), "bus": _ade("bus"), "other": 0},
        max_things=5,
        size=((128, 192), (128, 192)),
        color_shift=(0.02, -0.01, 0.0),
    ),
    "coco_stuff164k": SyntheticDataset(
        "coco_stuff164k",
        top={"sky": _coco("sky-other"), "wall_concrete": _coco("wall-concrete")},
        middle={"building": _coco("building-other"), "tree": _coco("tree"), "wall_brick": _coco("wall-brick")},
        bottom={"grass": _coco("grass"), "road": _coco("road"), "water": _coco("sea"), "sand": _coco("sand")},
        things={
            c: _coco(n)
            for c, n in [
                ("person", "person"),
                ("car", "car"),
                ("bus", "bus"),
                ("truck", "truck"),
                ("dog", "dog"),
                ("cat", "cat"),
                ("sheep", "sheep"),
                ("cow", "cow"),
            ]
        },
        max_things=5,
        size=((128, 192), (128, 192)),
        color_shift=(-0.01, 0.0, 0.02),
    ),
    "cityscapes": SyntheticDataset(
        "cityscapes",
        top={"sky": _cityscapes("sky")},
        middle={"building": _cityscapes("building"), "tree": _cityscapes("vegetation"), "fence": _cityscapes("fence")},
        bottom={"road": _cityscapes("road"), "sidewalk": _cityscapes("sidewalk"), "terrain": _cityscapes("terrain")},
        things={
            c: _cityscapes(n)
            for c, n in [
                ("person", "person"),
                ("rider", "rider"),
                ("car", "car"),
                ("truck", "truck"),
                ("bus", "bus"),
                ("pole", "pole"),
                ("traffic_sign", "traffic sign"),
            ]
        },
        max_things=6,
        size=((96, 96), (192, 192)),
        color_shift=(0.0, 0.02, -0.02),
    ),
}

# Images per split; VOC's train_aug = official train (with boundaries) + SBD-style aug.
DEFAULT_SIZES = {
    "voc_train": 60,
    "voc_aug": 240,
    "voc_val": 60,
    "ade20k_train": 300,
    "ade20k_val": 60,
    "coco_stuff164k_train": 300,
    "coco_stuff164k_val": 60,
    "cityscapes_train": 200,
    "cityscapes_val": 60,
}


# ---- rendering ---------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, height: int, width: int, frequency: float) -> np.ndarray:
    """Bilinearly upsampled uniform noise in [-1, 1], ``[H, W]``."""
    cells = max(2, int(frequency * max(height, width) / 100))
    small = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((width, height), Image.BILINEAR))


def texture(concept: Concept, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Texture pattern in about [-1, 1] over the pixel grid, float32 ``[H, W]``."""
    height, width = yy.shape
    angle = rng.uniform(0, np.pi)
    period = 100.0 / concept.frequency * rng.uniform(0.8, 1.25)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    phase = rng.uniform(0, 2 * np.pi)
    kind = concept.texture
    if kind == "gradient":
        return (yy / height - 0.5) * 2 * rng.choice([-1, 1]) + 0.2 * _smooth_noise(rng, height, width, 3)
    if kind == "stripes":
        return np.sin(2 * np.pi * u / period + phase)
    if kind == "checker":
        return np.sign(np.sin(np.pi * u / period + phase) * np.sin(np.pi * v / period))
    if kind == "dots":
        return np.where(np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period) > 0.6, 1.0, -0.3)
    if kind == "waves":
        return np.sin(2 * np.pi * (yy + 3 * np.sin(xx / 7 + phase)) / period)
    if kind == "rings":
        return np.sin(2 * np.pi * np.hypot(xx - xx.mean(), yy - yy.mean()) / period)
    if kind == "noise":
        return _smooth_noise(rng, height, width, concept.frequency) * 1.5
    if kind == "bricks":
        row = np.floor(yy / (period / 2))
        shifted = xx + (row % 2) * period / 2
        mortar = ((yy % (period / 2)) < 1.5) | ((shifted % period) < 1.5)
        return np.where(mortar, -1.0, 0.3 * _smooth_noise(rng, height, width, 20))
    if kind == "windows":
        return np.where(((xx % period) < period * 0.55) & ((yy % period) < period * 0.6), -1.0, 0.5)
    if kind == "grid":
        return np.where(((xx % period) < 2) | ((yy % (period * 2)) < 2), 1.0, -0.6)
    raise ValueError(f"unknown texture {kind!r}")


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _box(yy, xx, top, left, bottom, right):
    return (yy >= top) & (yy < bottom) & (xx >= left) & (xx < right)


def _figure_parts(shape: str, yy, xx, cy: float, cx: float, h: float, flip: int, rng: np.random.Generator):
    """A person or a four-legged animal. ``None`` for other shapes."""
    if shape == "person":
        return [
            (_ellipse(yy, xx, cy - 0.40 * h, cx, 0.10 * h, 0.08 * h), 1.6),
            (_box(yy, xx, cy - 0.30 * h, cx - 0.13 * h, cy + 0.10 * h, cx + 0.13 * h), 1.0),
            (_box(yy, xx, cy + 0.10 * h, cx - 0.11 * h, cy + 0.50 * h, cx - 0.02 * h), 0.6),
            (_box(yy, xx, cy + 0.10 * h, cx + 0.02 * h, cy + 0.50 * h, cx + 0.11 * h), 0.6),
        ]
    if shape in ("animal", "quadruped"):
        body_w = 0.55 * h if shape == "animal" else 0.7 * h
        ear = 0.12 * h
        parts = [
            (_ellipse(yy, xx, cy, cx, 0.25 * h, body_w), 1.0),
            (_ellipse(yy, xx, cy - 0.25 * h, cx + flip * body_w, 0.18 * h, 0.18 * h), 1.1),
            (
                _box(yy, xx, cy - 0.48 * h, cx + flip * body_w - ear, cy - 0.32 * h, cx + flip * body_w + ear),
                0.9 if shape == "animal" else 1.0,
            ),
        ]
        for offset in (-0.6, -0.3, 0.3, 0.6):
            parts.append(
                (
                    _box(
                        yy,
                        xx,
                        cy + 0.1 * h,
                        cx + offset * body_w - 0.05 * h,
                        cy + 0.5 * h,
                        cx + offset * body_w + 0.05 * h,
                    ),
                    0.8,
                )
            )
        return parts
    return None


def _vehicle_parts(shape: str, yy, xx, cy: float, cx: float, h: float, flip: int, rng: np.random.Generator):
    """Car, bus, boat or plane. ``None`` for other shapes."""
    if shape == "car":
        w = 1.0 * h
        return [
            (_box(yy, xx, cy - 0.1 * h, cx - w, cy + 0.3 * h, cx + w), 1.0),
            (_box(yy, xx, cy - 0.4 * h, cx - 0.55 * w, cy - 0.1 * h, cx + 0.45 * w), 0.7),
            (_ellipse(yy, xx, cy + 0.3 * h, cx - 0.6 * w, 0.18 * h, 0.18 * h), 0.15),
            (_ellipse(yy, xx, cy + 0.3 * h, cx + 0.6 * w, 0.18 * h, 0.18 * h), 0.15),
        ]
    if shape == "bus":
        w = 1.1 * h
        return [
            (_box(yy, xx, cy - 0.45 * h, cx - w, cy + 0.35 * h, cx + w), 1.0),
            (_ellipse(yy, xx, cy + 0.38 * h, cx - 0.7 * w, 0.12 * h, 0.12 * h), 0.15),
            (_ellipse(yy, xx, cy + 0.38 * h, cx + 0.7 * w, 0.12 * h, 0.12 * h), 0.15),
        ]
    if shape == "boat":
        hull = (yy >= cy) & (yy < cy + 0.3 * h) & (np.abs(xx - cx) < h * (0.9 - (yy - cy) / h))
        sail = (
            (yy >= cy - 0.6 * h)
            & (yy < cy)
            & (flip * (xx - cx) >= 0)
            & (flip * (xx - cx) < 0.5 * h * (yy - cy + 0.6 * h) / (0.6 * h))
        )
        return [(hull, 0.7), (sail, 1.2)]
    if shape == "plane":
        return [
            (_ellipse(yy, xx, cy, cx, 0.12 * h, 0.9 * h), 1.0),
            (_box(yy, xx, cy - 0.05 * h, cx - 0.15 * h, cy + 0.5 * h, cx + 0.15 * h), 0.9),
            (_box(yy, xx, cy - 0.4 * h, cx - flip * 0.85 * h - 0.08 * h, cy, cx - flip * 0.85 * h + 0.08 * h), 0.8),
        ]
    return None


def _object_parts(shape: str, yy, xx, cy: float, cx: float, h: float, flip: int, rng: np.random.Generator):
    """Bottle, chair, pole, sign or a random blob. ``None`` for other shapes."""
    if shape == "bottle":
        return [
            (_box(yy, xx, cy - 0.15 * h, cx - 0.15 * h, cy + 0.5 * h, cx + 0.15 * h), 1.0),
            (_box(yy, xx, cy - 0.5 * h, cx - 0.06 * h, cy - 0.15 * h, cx + 0.06 * h), 0.8),
        ]
    if shape == "chair":
        return [
            (_box(yy, xx, cy - 0.5 * h, cx - 0.3 * h, cy, cx - 0.2 * h), 1.0),
            (_box(yy, xx, cy - 0.05 * h, cx - 0.3 * h, cy + 0.05 * h, cx + 0.3 * h), 1.1),
            (_box(yy, xx, cy + 0.05 * h, cx - 0.3 * h, cy + 0.5 * h, cx - 0.22 * h), 0.8),
            (_box(yy, xx, cy + 0.05 * h, cx + 0.22 * h, cy + 0.5 * h, cx + 0.3 * h), 0.8),
        ]
    if shape == "pole":
        return [(_box(yy, xx, cy - 0.5 * h, cx - 0.025 * h, cy + 0.5 * h, cx + 0.025 * h), 1.0)]
    if shape == "sign":
        return [(_ellipse(yy, xx, cy, cx, 0.5 * h, 0.5 * h), 1.0)]
    if shape == "blob":
        radius = np.hypot(yy - cy, xx - cx)
        theta = np.arctan2(yy - cy, xx - cx)
        wobble = sum(rng.uniform(0.05, 0.2) * np.sin(k * theta + rng.uniform(0, 6.3)) for k in (2, 3, 5))
        return [(radius < 0.5 * h * (1 + wobble), 1.0)]
    return None


def thing_parts(shape: str, yy, xx, cy: float, cx: float, h: float, flip: int, rng: np.random.Generator):
    """Boolean masks of a thing's parts and their brightness factors: ``[(mask [H, W], tone)]``."""
    for parts_of in (_figure_parts, _vehicle_parts, _object_parts):
        parts = parts_of(shape, yy, xx, cy, cx, h, flip, rng)
        if parts is not None:
            return parts
    raise ValueError(f"unknown shape {shape!r}")


def _paint(
    image: np.ndarray, where: np.ndarray, concept: Concept, base: np.ndarray, pattern: np.ndarray, tone: float = 1.0
) -> None:
    shade = (1.0 + concept.contrast * pattern[where])[:, None] * tone
    image[where] = np.clip(base[None, :] * shade, 0, 1)


class _Canvas:
    """An image being rendered, its label map and the pixel grid; shared by the stuff and thing painters."""

    def __init__(
        self, spec: SyntheticDataset, rng: np.random.Generator, height: int, width: int, background_value: int
    ):
        self.rng = rng
        self.height, self.width = height, width
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.image = np.zeros((height, width, 3), dtype=np.float32)
        self.label = np.full((height, width), background_value, dtype=np.uint8)
        self.shift = np.asarray(spec.color_shift, dtype=np.float32)

    def instance_colour(self, concept: Concept) -> np.ndarray:
        """Base colour of one instance: the concept's colour, the dataset's shift and per-instance jitter."""
        return np.clip(np.asarray(concept.color) + self.shift + self.rng.normal(0, concept.spread, 3), 0.02, 0.98)

    def fill(self, region: np.ndarray, name: str, value: int) -> None:
        """Paint ``region`` with a fresh instance of concept ``name`` and label it ``value``."""
        concept = CONCEPTS[name]
        _paint(self.image, region, concept, self.instance_colour(concept), texture(concept, self.rng, self.yy, self.xx))
        self.label[region] = value


def _paint_stuff(canvas: _Canvas, spec: SyntheticDataset) -> None:
    """An upper band with a wavy horizon, an optional skyline band, the ground split in one or two parts."""
    rng, yy, xx, height, width = canvas.rng, canvas.yy, canvas.xx, canvas.height, canvas.width
    horizon = height * rng.uniform(0.25, 0.55) + height * 0.05 * np.sin(xx[0] / rng.uniform(8, 30) + rng.uniform(0, 6))
    top_name = rng.choice(list(spec.top))
    canvas.fill(yy < horizon[None, :], top_name, spec.top[top_name])
    ground_line = horizon + height * rng.uniform(0.1, 0.3)
    if rng.random() < 0.8:
        edges = np.cumsum(rng.integers(width // 8, width // 3, size=12))
        block = np.searchsorted(edges, np.arange(width), side="right")
        heights = rng.uniform(0.1, 0.45, size=13)[block] * height
        middle_name = rng.choice(list(spec.middle))
        canvas.fill(
            (yy >= (horizon - heights)[None, :]) & (yy < ground_line[None, :]), middle_name, spec.middle[middle_name]
        )
    else:
        ground_line = horizon
    ground = yy >= ground_line[None, :]
    names = rng.choice(list(spec.bottom), size=2)
    split = width * rng.uniform(0.2, 0.8)
    slope = rng.uniform(-1.5, 1.5)
    left = (xx - split) < slope * (yy - height)
    canvas.fill(ground & left, names[0], spec.bottom[names[0]])
    canvas.fill(ground & ~left, names[1], spec.bottom[names[1]])


def _paint_things(canvas: _Canvas, spec: SyntheticDataset) -> None:
    """Objects, painted back to front so later ones occlude earlier ones."""
    rng, yy, xx, height, width = canvas.rng, canvas.yy, canvas.xx, canvas.height, canvas.width
    image, label = canvas.image, canvas.label
    for _ in range(int(rng.integers(1, spec.max_things + 1))):
        name = rng.choice(list(spec.things))
        concept = CONCEPTS[name]
        h = height * rng.uniform(*concept.size) * spec.thing_scale
        cy = rng.uniform(0.35 * height, 0.85 * height)
        cx = rng.uniform(0.1 * width, 0.9 * width)
        base = canvas.instance_colour(concept)
        pattern = texture(concept, rng, yy, xx)
        flip = int(rng.choice([-1, 1]))
        for mask, tone in thing_parts(concept.shape, yy, xx, cy, cx, h, flip, rng):
            _paint(image, mask, concept, base, pattern, tone)
            label[mask] = spec.things[name]
        if concept.shape == "sign":  # signs stand on a pole
            pole = _box(yy, xx, cy + 0.5 * h, cx - 0.04 * h, cy + 4 * h, cx + 0.04 * h) & (label != spec.things[name])
            _paint(image, pole, CONCEPTS["pole"], canvas.instance_colour(CONCEPTS["pole"]), np.zeros_like(yy))
            label[pole] = spec.things.get("pole", label[pole])


def render(spec: SyntheticDataset, rng: np.random.Generator, background_value: int) -> tuple[np.ndarray, np.ndarray]:
    """One image uint8 ``[H, W, 3]`` and its raw label map uint8 ``[H, W]`` (values from ``spec``)."""
    height = int(rng.integers(spec.size[0][0], spec.size[0][1] + 1))
    width = int(rng.integers(spec.size[1][0], spec.size[1][1] + 1))
    canvas = _Canvas(spec, rng, height, width, background_value)
    _paint_stuff(canvas, spec)
    _paint_things(canvas, spec)
    # Lighting, sensor noise.
    image = canvas.image * rng.uniform(0.7, 1.2) + rng.uniform(-0.08, 0.08)
    image = image + rng.normal(0, 0.035, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), canvas.label


def boundary_band(label: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels within ``width`` of a change of label (VOC's 255 "void" outlines), bool ``[H, W]``."""
    band = np.zeros(label.shape, dtype=bool)
    for shift in range(1, width + 1):
        band[:-shift] |= label[:-shift] != label[shift:]
        band[shift:] |= label[shift:] != label[:-shift]
        band[:, :-shift] |= label[:, :-shift] != label[:, shift:]
        band[:, shift:] |= label[:, shift:] != label[:, :-shift]
    return band


# ---- writers in the real layouts -----------------------------------------------------------------------------
def _rng(seed: int, dataset: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, sorted(DATASETS).index(dataset), sum(map(ord, split)), index])


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=92)


def _save_png(label: np.ndarray, path: Path, palette: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(label, mode="L")
    if palette is not None:
        picture = picture.convert("P")
        picture.putpalette(palette.flatten().tolist())
    picture.save(path)


def write_voc(root: Path, seed: int, sizes: dict[str, int]) -> Path:
    """``VOCdevkit/VOC2012`` with SegmentationClass (palette, 255 boundaries), SegmentationClassAug, lists."""
    voc = root / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    palette = classes.voc_colormap(256)
    spec = DATASETS["voc_aug"]
    ids = {}
    for split, count in (("train", sizes["voc_train"]), ("aug", sizes["voc_aug"]), ("val", sizes["voc_val"])):
        ids[split] = [f"2099_{split}{i:05d}" for i in range(count)]
        for i, name in enumerate(ids[split]):
            image, label = render(spec, _rng(seed, "voc_aug", split, i), BACKGROUND)
            _save_jpeg(image, voc / "JPEGImages" / f"{name}.jpg")
            if split == "aug":  # SBD-derived labels: no boundary band
                _save_png(label, voc / "SegmentationClassAug" / f"{name}.png")
            else:
                outlined = np.where(boundary_band(label), 255, label).astype(np.uint8)
                _save_png(outlined, voc / "SegmentationClass" / f"{name}.png", palette)
    for split, names in (
        ("train", ids["train"]),
        ("val", ids["val"]),
        ("trainval", ids["train"] + ids["val"]),
        ("aug", ids["aug"]),
        ("trainaug", ids["train"] + ids["aug"]),
    ):
        (lists / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return voc


def write_ade20k(root: Path, seed: int, sizes: dict[str, int]) -> Path:
    ade = root / "ADEChallengeData2016"
    for split, prefix, count in (
        ("training", "train", sizes["ade20k_train"]),
        ("validation", "val", sizes["ade20k_val"]),
    ):
        for i in range(count):
            image, label = render(DATASETS["ade20k"], _rng(seed, "ade20k", split, i), 0)
            _save_jpeg(image, ade / "images" / split / f"ADE_{prefix}_{i + 1:08d}.jpg")
            _save_png(label, ade / "annotations" / split / f"ADE_{prefix}_{i + 1:08d}.png")
    (ade / "objectInfo150.txt").write_text(
        "Idx\tName\n" + "".join(f"{i + 1}\t{n}\n" for i, n in enumerate(classes.ADE20K_CLASSES))
    )
    return ade


def write_coco_stuff164k(root: Path, seed: int, sizes: dict[str, int]) -> Path:
    coco = root / "coco_stuff164k"
    for split, count in (("train2017", sizes["coco_stuff164k_train"]), ("val2017", sizes["coco_stuff164k_val"])):
        for i in range(count):
            rng = _rng(seed, "coco_stuff164k", split, i)
            image, label = render(DATASETS["coco_stuff164k"], rng, 255)
            # COCO-Stuff leaves thin unlabeled gaps where annotators stopped short of a boundary.
            label = np.where(boundary_band(label, 1) & (rng.random(label.shape) < 0.5), 255, label).astype(np.uint8)
            name = f"{9_000_000_000 + i:012d}"
            _save_jpeg(image, coco / "images" / split / f"{name}.jpg")
            _save_png(label, coco / "annotations" / split / f"{name}.png")
    return coco


def write_cityscapes(root: Path, seed: int, sizes: dict[str, int]) -> Path:
    """``cityscapes`` with leftImg8bit PNGs and raw ``*_gtFine_labelIds.png`` (ego vehicle at the bottom)."""
    city_root = root / "cityscapes"
    cities = {"train": ("aachen", "bremen", "zurich"), "val": ("frankfurt", "lindau")}
    for split, count in (("train", sizes["cityscapes_train"]), ("val", sizes["cityscapes_val"])):
        for i in range(count):
            rng = _rng(seed, "cityscapes", split, i)
            image, label = render(DATASETS["cityscapes"], rng, 0)
            ego = int(rng.integers(3, 10))  # labelId 1 = ego vehicle (not trained on)
            label[-ego:] = 1
            image[-ego:] = (image[-ego:] * 0.2).astype(np.uint8)
            city = cities[split][i % len(cities[split])]
            stem = f"{city}_{i // len(cities[split]):06d}_000019"
            path = city_root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
            _save_png(label, city_root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
    return city_root


def _local_class_name(dataset: str, raw: int) -> str | None:
    """Class name of a raw label value written by the generator for ``dataset``; None for background/ignore."""
    if dataset == "voc_aug":
        return None if raw == BACKGROUND else classes.VOC_CLASSES[raw]
    if dataset == "ade20k":
        return None if raw == 0 else classes.ADE20K_CLASSES[raw - 1]
    if dataset == "coco_stuff164k":
        return classes.COCO_STUFF_CLASSES[int(coco_stuff_raw_table()[raw])]
    raise ValueError(f"no pretraining dataset {dataset!r} in the synthetic benchmark")


def unify_map(datasets: tuple[str, ...] = ("voc_aug", "ade20k", "coco_stuff164k")) -> dict[str, str]:
    """The label-unification map of the synthetic pretraining datasets: ``{"<dataset>/<class>": "<dataset>/<class>"}``.

    Two classes are merged when the generator renders them from the same concept (what a careful human merge of
    synonyms would do with full knowledge): every class is mapped to the concept's class in the first of
    ``datasets`` that renders it. VOC's "background" and ADE20K's "other" are catch-alls, never merged.
    """
    members: dict[str, list[str]] = {}
    for name in datasets:
        spec = DATASETS[name]
        for concept, raw in {**spec.top, **spec.middle, **spec.bottom, **spec.things}.items():
            local = _local_class_name(name, raw)
            if local is not None and f"{name}/{local}" not in members.setdefault(concept, []):
                members[concept].append(f"{name}/{local}")
    return {source: labels[0] for labels in members.values() for source in labels[1:]}


def resolve_sizes(sizes: dict[str, int] | None) -> dict[str, int]:
    """``DEFAULT_SIZES`` with overrides; unknown keys and empty splits are errors."""
    unknown = set(sizes or {}) - set(DEFAULT_SIZES)
    if unknown:
        raise ValueError(f"synthetic sizes: unknown keys {sorted(unknown)}; known: {sorted(DEFAULT_SIZES)}")
    resolved = {**DEFAULT_SIZES, **(sizes or {})}
    if min(resolved.values()) < 1:
        raise ValueError(f"synthetic sizes: every split needs at least one image, got {resolved}")
    return resolved


def _marker(seed: int, sizes: dict[str, int]) -> dict:
    return {"version": SYNTHETIC_VERSION, "seed": seed, "sizes": sizes}


def generate(out_dir: str | os.PathLike, seed: int = 0, sizes: dict[str, int] | None = None) -> dict:
    """Write the whole benchmark under ``out_dir`` (must not exist or be empty); return its spec strings.

    ``sizes`` overrides the number of images per split (keys of ``DEFAULT_SIZES``), e.g. for tests.
    """
    sizes = resolve_sizes(sizes)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty; the synthetic benchmark is written into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    write_voc(out, seed, sizes)
    write_ade20k(out, seed, sizes)
    write_coco_stuff164k(out, seed, sizes)
    write_cityscapes(out, seed, sizes)
    info = _marker(seed, sizes)
    (out / MARKER_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return synthetic_specs(out)


def synthetic_specs(root: str | os.PathLike) -> dict:
    """Spec strings of a generated benchmark folder."""
    root = Path(root).resolve()
    voc, ade = root / "VOCdevkit" / "VOC2012", root / "ADEChallengeData2016"
    coco, city = root / "coco_stuff164k", root / "cityscapes"
    return {
        "root": str(root),
        "pretrain": [f"voc_aug:{voc}:train_aug", f"ade20k:{ade}:training", f"coco_stuff164k:{coco}:train2017"],
        "pretrain_val": [f"voc_aug:{voc}:val", f"ade20k:{ade}:validation", f"coco_stuff164k:{coco}:val2017"],
        "downstream_train": f"cityscapes:{city}:train",
        "downstream_val": f"cityscapes:{city}:val",
    }


def default_cache_dir(seed: int) -> Path:
    base = os.environ.get("MDP_SYNTH_DIR")
    if base:
        return Path(base).expanduser() / f"{SYNTHETIC_VERSION}-seed{seed}"
    return Path.home() / ".cache" / "mdp-hub" / "synthetic" / f"{SYNTHETIC_VERSION}-seed{seed}"


def ensure_synthetic(
    root: str | os.PathLike | None = None, seed: int = 0, *, sizes: dict[str, int] | None = None
) -> dict:
    """Spec strings of the synthetic benchmark, generating it once (atomically) if the folder is absent.

    ``root``: where the benchmark lives; default ``$MDP_SYNTH_DIR/<version>-seed<seed>``, else
    ``~/.cache/mdp-hub/synthetic/<version>-seed<seed>``. Generation goes to a temporary sibling folder that is
    renamed into place, so concurrent callers never see a half-written benchmark.
    """
    expected = _marker(seed, resolve_sizes(sizes))
    target = Path(root).expanduser() if root is not None else default_cache_dir(seed)
    marker = target / MARKER_FILE
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info != expected:
            raise ValueError(f"{marker}: holds synthetic benchmark {info}, not {expected}; pass another folder")
        return synthetic_specs(target)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target}: exists but holds no {MARKER_FILE}; not overwriting it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        generate(staging, seed, sizes)
        if target.exists():
            target.rmdir()  # an empty folder left by the user
        os.rename(staging, target)
    except OSError:
        if not marker.is_file():  # the rename failed for another reason than a concurrent winner
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return synthetic_specs(target)
