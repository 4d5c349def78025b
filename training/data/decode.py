"""Decoding files: images to uint8 RGB, label PNGs to the values they store (palette indices, never colours).

JPEGs, 8-bit PNG images and 8-bit grayscale label PNGs (SegmentationClassAug, ADE20K, COCO-Stuff, Cityscapes)
are decoded by TorchCodec (libjpeg-turbo / libpng straight into a tensor; torchvision.io's successor). On one
thread that is ~1.4x faster than PIL for a 640x480 JPEG and ~1.7x for its label PNG, with bit-identical pixels
(tests/test_data_decode.py). Everything else goes through PIL: palette label PNGs (VOC's SegmentationClass;
TorchCodec expands palettes to colours), 16-bit or sub-byte PNGs, BMP, TIFF, WebP, and every file when
TorchCodec is missing or built for another torch. Either way a missing, truncated or corrupt file raises
``BadSampleError`` naming it. Like PIL and MMSegmentation, EXIF orientation is not applied: masks stay aligned
with the stored pixels.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.data.errors import BadSampleError

log = logging.getLogger(__name__)

try:
    from torchcodec.decoders import decode_jpeg, decode_png
except (ImportError, OSError, RuntimeError) as error:  # not installed, or its binary does not match this torch
    decode_jpeg = decode_png = None
    log.info("TorchCodec unavailable (%s); every file is decoded with PIL, ~1.4x slower", error)

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_GRAY = 0
LABEL_MODES = ("P", "L", "I", "I;16")


def fast_decoding() -> bool:
    """True when TorchCodec decodes the common formats (else PIL decodes everything)."""
    return decode_jpeg is not None


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise BadSampleError(path, f"{what} file not found") from error
    except IsADirectoryError as error:
        raise BadSampleError(path, f"{what} path is a directory, not a file") from error


def png_header(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, or None if ``data`` is not a PNG."""
    if len(data) < 26 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decoder_message(error: Exception) -> str:
    return str(error).strip().splitlines()[-1]


def load_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to uint8 RGB ``[3, H, W]`` (grayscale, palette, CMYK and alpha files are converted).

    The tensor is a channels-last view of ``[H, W, 3]`` memory, as decoders produce it; torch's fast uint8
    resize kernels want that layout (training.data.transforms.crop_image).
    """
    path = Path(path)
    return decode_image_bytes(read_bytes(path, "image"), path)


def decode_image_bytes(data: bytes, where: str | Path) -> torch.Tensor:
    """:func:`load_image` of an encoded image held in memory (e.g. a Parquet cell); errors name ``where``."""
    if fast_decoding():
        header = png_header(data)
        try:
            if data.startswith(JPEG_MAGIC):
                return decode_jpeg(as_tensor(data), mode="RGB")
            if header is not None and header[0] == 8:
                return decode_png(as_tensor(data), mode="RGB")
        except RuntimeError as error:  # TorchCodec reports truncation and corruption as RuntimeError
            raise BadSampleError(where, f"image is truncated or corrupt ({decoder_message(error)})") from error
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.array(image.convert("RGB"))  # convert() decodes fully: truncation raises here
    except (OSError, ValueError, SyntaxError) as error:
        raise BadSampleError(where, f"image is truncated or corrupt ({error})") from error
    return torch.from_numpy(pixels).permute(2, 0, 1)


def read_label_png(path: str | Path) -> np.ndarray:
    """Values stored in a single-channel (palette or grayscale) label image, ``[H, W]`` (uint8 for 8-bit files).

    Colour-coded (RGB) masks are refused: their colours cannot be turned into class ids safely.
    """
    path = Path(path)
    return decode_label_bytes(read_bytes(path, "mask"), path)


def decode_label_bytes(data: bytes, where: str | Path) -> np.ndarray:
    """:func:`read_label_png` of an encoded label image held in memory; errors name ``where``."""
    if fast_decoding() and png_header(data) == (8, PNG_GRAY):
        try:
            return decode_png(as_tensor(data), mode="UNCHANGED")[0].numpy()
        except RuntimeError as error:
            raise BadSampleError(where, f"mask is truncated or corrupt ({decoder_message(error)})") from error
    try:
        with Image.open(io.BytesIO(data)) as label:
            if label.mode not in LABEL_MODES:
                raise BadSampleError(
                    where,
                    f"label image has mode {label.mode!r}; expected a single-channel palette ('P') or "
                    "grayscale ('L') PNG of class indices (colour-coded masks cannot be decoded safely)",
                )
            return np.asarray(label)
    except (OSError, ValueError, SyntaxError) as error:
        raise BadSampleError(where, f"mask is truncated or corrupt ({error})") from error
