"""Joint image + mask augmentation.

Geometry (rescale, crop with a max-single-class ratio, flip, pad) is drawn once per sample (``CropBox``) and
applied to the image and the mask; photometric jitter touches only the image, independently for each view, so the
query and momentum views share geometry. Only the crop is resampled: bilinear antialiased for the image, exact
nearest-neighbour index maps for the mask (label values never mix); masks are padded with 255.

Photometric jitter has two homes. Worker side (``views``, fine-tuning and ``data.photometric_on: worker``) runs
on PIL images (torchvision's PIL kernels, PIL's Gaussian blur as in MoCo v2). Device side (the GPU default)
is training.data.device_augment: workers return one uint8 crop, or its unresampled source region
(``device_crop``), and the trainer resizes and makes the views batched on its device. See docs/DATA.md for the
measured costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from training.data.counting import value_counts
from training.data.label_space import LOCAL_IGNORE

CAT_MAX_RATIO_RETRIES = 10  # MMSeg's RandomCrop


@dataclass
class PhotometricConfig:
    """MoCo-v2-style jitter applied to each view: colour jitter, grayscale, Gaussian blur (probabilities)."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self):
        for name in ("color_jitter_p", "grayscale_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PhotometricConfig.{name} = {getattr(self, name)} is not a probability")

    @property
    def enabled(self) -> bool:
        return max(self.color_jitter_p, self.grayscale_p, self.blur_p) > 0

    def build(self) -> v2.Transform:
        """PIL RGB image -> jittered PIL RGB image."""
        return v2.Compose(
            [
                v2.RandomApply(
                    [v2.ColorJitter(self.brightness, self.contrast, self.saturation, self.hue)], p=self.color_jitter_p
                ),
                v2.RandomGrayscale(p=self.grayscale_p),
                v2.RandomApply([PILGaussianBlur(self.blur_sigma)], p=self.blur_p),
            ]
        )


class PILGaussianBlur(torch.nn.Module):
    """MoCo v2's blur: PIL ``GaussianBlur`` with radius ``sigma ~ U(low, high)`` pixels."""

    def __init__(self, sigma: tuple[float, float]):
        super().__init__()
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def forward(self, image: Image.Image) -> Image.Image:
        radius = float(torch.empty(1).uniform_(*self.sigma))
        return image.filter(ImageFilter.GaussianBlur(radius))


NO_PHOTOMETRIC = PhotometricConfig(color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def as_pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    pair = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f"crop_size {size!r}: expected a positive int or (height, width)")
    return pair


def check_mean_std(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean {mean} / std {std}: expected three values each, std > 0")
    if max(mean) > 1.0 or max(std) > 1.0:
        raise ValueError(f"mean {mean} / std {std} look like 0-255 values; give them on the 0-1 scale")
    return mean, std


def crop_ratio_ok(mask_region: np.ndarray, cat_max_ratio: float) -> bool:
    """MMSeg's rule: at least two labelled classes and none above ``cat_max_ratio`` of the labelled pixels.

    ``mask_region``: uint8 local ids (255 = ignore), any shape.
    """
    counts = value_counts(mask_region)[:LOCAL_IGNORE]
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


@dataclass(frozen=True)
class CropBox:
    """One draw of the geometry: the source region ``[top, top + src_h) x [left, left + src_w)`` (integer pixels)
    resized to the crop ``height x width``, then an optional horizontal flip. It is the crop of the image rescaled
    by ``height / src_h`` (``width / src_w``) at that position."""

    top: int
    left: int
    src_h: int
    src_w: int
    height: int
    width: int
    flip: bool

    def nearest_rows_cols(self) -> tuple[np.ndarray, np.ndarray]:
        """Source row / column of every output pixel under nearest-neighbour resizing of the region (pixel centres,
        the convention of bilinear with ``align_corners=False``; exact integer arithmetic); columns reversed when
        flipped."""
        rows = self.top + (2 * np.arange(self.height) + 1) * self.src_h // (2 * self.height)
        cols = self.left + (2 * np.arange(self.width) + 1) * self.src_w // (2 * self.width)
        return rows, (cols[::-1] if self.flip else cols)


def crop_mask(mask: np.ndarray, box: CropBox) -> np.ndarray:
    """uint8 ``[H, W]`` -> the box's nearest-neighbour crop uint8 ``[box.height, box.width]`` (exact label values;
    two 1-D gathers, only the crop's pixels are touched).

    The per-pixel column gather runs on the fewer rows: the source region's when upsampling (then whole rows are
    repeated), the output's when downsampling."""
    rows, cols = box.nearest_rows_cols()
    if box.src_h < box.height:
        region = mask[box.top : box.top + box.src_h]
        return region.take(cols, axis=1).take(rows - box.top, axis=0)
    return mask.take(rows, axis=0).take(cols, axis=1)


def crop_image(image: torch.Tensor, box: CropBox) -> torch.Tensor:
    """uint8 ``[3, H, W]`` -> the box's bilinear antialiased crop uint8 ``[3, box.height, box.width]``
    (channels-last memory).

    Only the source region is resampled, flipped first and copied channels-last: torch's uint8 resize is ~2x
    faster in that layout than channels-first, and ~4x faster than PIL's ``Image.resize(box=...)`` (docs/DATA.md).
    """
    region = image.as_subclass(torch.Tensor)[None, :, box.top : box.top + box.src_h, box.left : box.left + box.src_w]
    if box.flip:
        region = region.flip(-1)
    region = region.contiguous(memory_format=torch.channels_last)
    return torch.nn.functional.interpolate(
        region, size=(box.height, box.width), mode="bilinear", align_corners=False, antialias=True
    )[0]


class JointTrainTransform:
    """Random rescale -> crop (max-single-class ratio) -> flip -> per-view photometric -> normalise -> pad.

    The crop box is drawn in the rescaled frame and mapped to source coordinates, so only the crop is ever
    resampled: bilinear antialiased for the image, exact nearest-neighbour index maps for the mask. With
    ``photometric_on="device"`` (pretraining) the photometric views are made later on the training device
    (training.data.device_augment) and workers return one uint8 crop or source region (``device_crop``).
    ``base_size`` = short side before the random ratio (MMSeg: 512); ``None`` keeps each image's own size.
    """

    def __init__(
        self,
        *,
        crop_size,
        mean,
        std,
        scale_range=(0.5, 2.0),
        cat_max_ratio=0.75,
        base_size=None,
        photometric: PhotometricConfig | None = None,
        hflip_p: float = 0.5,
    ):
        self.crop_size = as_pair(crop_size)
        self.mean, self.std = check_mean_std(mean, std)
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range {scale_range}: expected 0 < low <= high")
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.cat_max_ratio = float(cat_max_ratio)
        self.base_size = base_size
        self.hflip_p = hflip_p
        photometric = photometric or PhotometricConfig()
        self.photometric_config = photometric
        self.photometric = photometric.build() if photometric.enabled else None
        self.normalize = Normalize(self.mean, self.std)

    def draw(
        self, height: int, width: int, mask: np.ndarray | None, label_map=None
    ) -> tuple[CropBox, np.ndarray | None]:
        """Random geometry for a ``height x width`` image and, if ``mask`` (uint8 ``[H, W]``) is given, its crop in
        local ids: ``label_map`` (training.data.readers.LabelMap) maps the raw values of the cropped pixels only.

        The ratio ~ U(scale_range) rescales the image (times ``base_size / short side``); the crop position is
        drawn in that rescaled frame and mapped back to a whole-pixel source region, so the sample's effective
        scale is ``crop / region`` (within one source pixel of the drawn one). Up to ``CAT_MAX_RATIO_RETRIES``
        positions are tried until the cropped mask passes ``crop_ratio_ok`` (MMSeg's RandomCrop); else the last.
        """
        ratio = float(torch.empty(1).uniform_(*self.scale_range))
        scale = ratio * (self.base_size / min(height, width) if self.base_size else 1.0)
        scaled_h, scaled_w = max(1, round(height * scale)), max(1, round(width * scale))
        crop_h, crop_w = min(self.crop_size[0], scaled_h), min(self.crop_size[1], scaled_w)
        # Source pixels under the crop; the whole image when the rescaled image is no larger than the crop.
        src_h = height if crop_h == scaled_h else max(1, min(height, round(crop_h * height / scaled_h)))
        src_w = width if crop_w == scaled_w else max(1, min(width, round(crop_w * width / scaled_w)))
        flip = bool(torch.rand(()) < self.hflip_p)
        check = mask is not None and self.cat_max_ratio < 1.0
        for _ in range(CAT_MAX_RATIO_RETRIES if check else 1):
            top = int(torch.randint(0, scaled_h - crop_h + 1, ())) * (height - src_h) // max(1, scaled_h - crop_h)
            left = int(torch.randint(0, scaled_w - crop_w + 1, ())) * (width - src_w) // max(1, scaled_w - crop_w)
            box = CropBox(top, left, src_h, src_w, crop_h, crop_w, flip)
            cropped = None if mask is None else crop_mask(mask, box)
            if label_map is not None and cropped is not None:
                cropped = label_map(cropped, in_place=True)  # the crop is a fresh array
            if not check or crop_ratio_ok(cropped, self.cat_max_ratio):
                break
        return box, cropped

    def geometric(
        self, image: torch.Tensor, mask: np.ndarray | None, label_map=None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 ``[3, H, W]`` and uint8 ``[H, W]`` (or None for unlabelled images; raw values with ``label_map``)
        -> cropped uint8 image ``[3, h, w]`` and local-id mask ``[h, w]``, ``h, w`` <= crop size (padding comes
        after normalisation)."""
        box, cropped = self.draw(image.shape[-2], image.shape[-1], mask, label_map)
        return crop_image(image, box), (None if cropped is None else torch.from_numpy(cropped))

    def device_crop(self, image: torch.Tensor, mask: np.ndarray | None, label_map=None) -> dict[str, torch.Tensor]:
        """The worker side of ``photometric_on="device"``: the item fields the training device finishes.

        - ``image`` uint8 ``[3, *crop_size]`` (channels-last memory), zero elsewhere (the device repeats edge
          pixels there before the blur: BatchPhotometric).
        - ``image_size`` int64 ``[2]``: the finished crop's real (height, width).
        - ``source_region`` int64 ``[3]``: (height, width, flip) of what ``image`` holds top-left. When the draw
          enlarges (or keeps) the image, which is most draws, that is the unresampled source region: the device
          resizes and flips it batched (``resize_regions``; bilinear without antialiasing is exact for
          enlargement), which takes the resize, the costliest step after decoding, off the worker. When it
          shrinks the image, the worker resizes with antialiasing and ``source_region`` = (``image_size``, 0).
        - ``mask`` uint8 ``[*crop_size]`` local ids padded with 255, always finished here (only when ``mask``).
        """
        box, cropped = self.draw(image.shape[-2], image.shape[-1], mask, label_map)
        if box.src_h <= box.height and box.src_w <= box.width:
            region = image.as_subclass(torch.Tensor)[:, box.top : box.top + box.src_h, box.left : box.left + box.src_w]
            source = (box.src_h, box.src_w, int(box.flip))
        else:
            region = crop_image(image, box)
            source = (box.height, box.width, 0)
        padded = torch.zeros((*self.crop_size, 3), dtype=torch.uint8).permute(2, 0, 1)  # channels-last
        padded[:, : region.shape[-2], : region.shape[-1]] = region
        item = {
            "image": padded,
            "image_size": torch.tensor((box.height, box.width), dtype=torch.int64),
            "source_region": torch.tensor(source, dtype=torch.int64),
        }
        if cropped is not None:
            item["mask"] = pad_to(torch.from_numpy(cropped), self.crop_size, LOCAL_IGNORE)
        return item

    def views(self, image: torch.Tensor, count: int) -> list[torch.Tensor]:
        """``count`` photometric views of one uint8 crop, each normalised and zero-padded (= mean colour) to the
        crop size, f32 ``[3, H, W]``."""
        if self.photometric is None:
            return [pad_to(self.normalize(image), self.crop_size, 0.0)] * count
        picture = F.to_pil_image(image.as_subclass(torch.Tensor))
        return [
            pad_to(self.normalize(F.pil_to_tensor(self.photometric(picture))), self.crop_size, 0.0)
            for _ in range(count)
        ]

    def pad_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return pad_to(mask, self.crop_size, LOCAL_IGNORE)


def pad_to(tensor: torch.Tensor, size: tuple[int, int], value: float) -> torch.Tensor:
    """Pad the last two dims on the bottom/right up to ``size``."""
    pad_h, pad_w = size[0] - tensor.shape[-2], size[1] - tensor.shape[-1]
    if pad_h <= 0 and pad_w <= 0:
        return tensor.as_subclass(torch.Tensor)
    return torch.nn.functional.pad(tensor.as_subclass(torch.Tensor), (0, max(pad_w, 0), 0, max(pad_h, 0)), value=value)


class Normalize:
    """uint8 ``[3, H, W]`` -> float32 ``(x / 255 - mean) / std`` in one fused multiply-add (v2.ToDtype followed by
    v2.Normalize makes three passes over the image, a visible share of the per-sample cost at 512x512)."""

    def __init__(self, mean, std):
        mean, std = check_mean_std(mean, std)
        self.scale = (1.0 / (255.0 * torch.tensor(std))).view(3, 1, 1)
        self.shift = (-torch.tensor(mean) / torch.tensor(std)).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, image.as_subclass(torch.Tensor).float(), self.scale)


class EvalTransform:
    """Whole image, normalised; the mask is left untouched (sliding-window evaluation sees full size)."""

    def __init__(self, *, mean, std):
        self.normalize = Normalize(mean, std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.normalize(image)
