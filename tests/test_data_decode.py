"""File decoding (TorchCodec fast path and PIL fallback) and the run-length value counts of label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import decode
from training.data.counting import value_counts
from training.data.errors import BadSampleError


def _pixels(seed: int = 0, height: int = 37, width: int = 53) -> np.ndarray:
    """Smooth colour gradients plus noise: a JPEG-like picture with detail in every channel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (height + width)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _image_files(folder):
    """One file per format and colour mode a dataset may hold, and what PIL's ``convert("RGB")`` makes of it."""
    rgb = Image.fromarray(_pixels())
    files = {
        "baseline.jpg": (rgb, dict(quality=90)),
        "progressive.jpg": (rgb, dict(quality=85, progressive=True)),
        "gray.jpg": (rgb.convert("L"), {}),
        "cmyk.jpg": (rgb.convert("CMYK"), {}),
        "rgb.png": (rgb, {}),
        "rgba.png": (Image.fromarray(np.dstack([_pixels(), _pixels(1)[..., 0]])), {}),
        "gray_alpha.png": (rgb.convert("LA"), {}),
        "palette.png": (rgb.convert("P"), {}),
        "gray16.png": (Image.fromarray((_pixels()[..., 0].astype(np.uint16) * 257)), {}),
        "rgb.bmp": (rgb, {}),
        "rgb.webp": (rgb, dict(lossless=True)),
    }
    for name, (image, options) in files.items():
        image.save(folder / name, **options)
    return {name: np.asarray(Image.open(folder / name).convert("RGB")) for name in files}


@pytest.fixture(params=["torchcodec", "pil"])
def decoders(request, monkeypatch):
    """Each test runs on the fast path and on the PIL path users without TorchCodec get."""
    if request.param == "pil":
        monkeypatch.setattr(decode, "decode_jpeg", None)
        monkeypatch.setattr(decode, "decode_png", None)
    return request.param


def test_torchcodec_is_installed_so_the_fast_path_runs():
    assert decode.fast_decoding(), "TorchCodec failed to load; the data workers would fall back to PIL"


def test_every_image_format_decodes_to_exactly_what_pil_gives(tmp_path, decoders):
    for name, expected in _image_files(tmp_path).items():
        image = decode.load_image(tmp_path / name)
        assert image.dtype == torch.uint8 and image.shape == (3, *expected.shape[:2]), name
        assert np.array_equal(image.permute(1, 2, 0).numpy(), expected), f"{name} ({decoders}) differs from PIL"


def test_label_pngs_keep_their_stored_values_palette_indices_included(tmp_path, decoders):
    rng = np.random.default_rng(3)
    values = rng.integers(0, 21, (29, 31)).astype(np.uint8)
    values[:4] = 255
    Image.fromarray(values).save(tmp_path / "gray.png")  # SegmentationClassAug, ADE20K, COCO-Stuff, Cityscapes
    palette = Image.fromarray(values, mode="P")
    palette.putpalette(rng.integers(0, 256, 768).astype(np.uint8).tolist())
    palette.save(tmp_path / "palette.png")  # VOC SegmentationClass: indices, whatever the colours
    palette.save(tmp_path / "palette_trns.png", transparency=255)
    for name in ("gray.png", "palette.png", "palette_trns.png"):
        mask = decode.read_label_png(tmp_path / name)
        assert mask.dtype == np.uint8 and np.array_equal(mask, values), name
    wide = rng.integers(0, 400, (5, 7)).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert np.array_equal(decode.read_label_png(tmp_path / "wide.png"), wide)


def test_colour_masks_truncated_and_missing_files_raise_naming_the_file(tmp_path, decoders):
    Image.fromarray(_pixels()).save(tmp_path / "colour.png")
    with pytest.raises(BadSampleError, match=r"colour\.png: label image has mode 'RGB'"):
        decode.read_label_png(tmp_path / "colour.png")
    Image.fromarray(_pixels(height=200, width=300)).save(tmp_path / "full.jpg", quality=95)
    Image.fromarray(_pixels(height=200, width=300)[..., 0]).save(tmp_path / "full.png")
    for name in ("full.jpg", "full.png"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadSampleError, match=r"cut_full\.jpg: image is truncated or corrupt"):
        decode.load_image(tmp_path / "cut_full.jpg")
    with pytest.raises(BadSampleError, match=r"cut_full\.png: mask is truncated or corrupt"):
        decode.read_label_png(tmp_path / "cut_full.png")
    with pytest.raises(BadSampleError, match=r"nothing\.jpg: image file not found"):
        decode.load_image(tmp_path / "nothing.jpg")
    with pytest.raises(BadSampleError, match=r"nothing\.png: mask file not found"):
        decode.read_label_png(tmp_path / "nothing.png")


@pytest.mark.parametrize("kind", ["regions", "noise", "constant", "single_pixel"])
def test_value_counts_equal_a_plain_histogram(kind):
    rng = np.random.default_rng(7)
    if kind == "regions":  # long runs: the run-length path
        values = np.kron(rng.integers(0, 256, (12, 9)), np.ones((19, 23))).astype(np.uint8)
    elif kind == "noise":  # short runs: the PIL histogram path
        values = rng.integers(0, 256, (64, 80)).astype(np.uint8)
    elif kind == "constant":
        values = np.full((31, 17), 255, dtype=np.uint8)
    else:
        values = np.array([[4]], dtype=np.uint8)
    counts = value_counts(values)
    assert counts.dtype == np.int64 and counts.shape == (256,)
    assert np.array_equal(counts, np.bincount(values.ravel(), minlength=256))
    assert np.array_equal(value_counts(values[:, ::2]), np.bincount(values[:, ::2].ravel(), minlength=256))


def test_value_counts_refuses_wider_integers():
    with pytest.raises(TypeError, match="uint8"):
        value_counts(np.zeros((2, 2), dtype=np.int64))
    assert value_counts(np.zeros((0, 3), dtype=np.uint8)).sum() == 0
