"""Joint image + mask augmentation (torchvision.transforms.v2).

Geometry (rescale, crop with a max-single-class ratio, flip, pad) is drawn once per sample and applied to the
image and the mask; photometric jitter touches only the image, independently for each view, so the query and
momentum views share geometry. Masks are resized with nearest neighbour only and padded with 255 (ignore).

Photometric jitter runs on PIL images (torchvision's PIL kernels, PIL's Gaussian blur as in MoCo v2): at 512x512
the tensor kernels cost several times more (hue conversion, a dense 2-D blur kernel); see docs/DATA.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

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
        return v2.Compose([
            v2.RandomApply([v2.ColorJitter(self.brightness, self.contrast, self.saturation, self.hue)],
                           p=self.color_jitter_p),
            v2.RandomGrayscale(p=self.grayscale_p),
            v2.RandomApply([PILGaussianBlur(self.blur_sigma)], p=self.blur_p),
        ])


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
    """MMSeg's rule: at least two labelled classes and none above ``cat_max_ratio`` of the labelled pixels."""
    counts = np.bincount(mask_region.ravel(), minlength=256)[:LOCAL_IGNORE]
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


class JointTrainTransform:
    """Random rescale -> crop (max-single-class ratio) -> flip -> per-view photometric -> normalise -> pad.

    To keep decode + augment cheap the crop box is chosen in rescaled coordinates and mapped back, so only the
    cropped region is ever resized. ``base_size`` = short side before the random ratio (MMSeg: 512); ``None``
    keeps each image's own size.
    """

    def __init__(self, *, crop_size, mean, std, scale_range=(0.5, 2.0), cat_max_ratio=0.75, base_size=None,
                 photometric: PhotometricConfig | None = None, hflip_p: float = 0.5):
        self.crop_size = as_pair(crop_size)
        self.mean, self.std = check_mean_std(mean, std)
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range {scale_range}: expected 0 < low <= high")
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.cat_max_ratio = float(cat_max_ratio)
        self.base_size = base_size
        self.hflip_p = hflip_p
        photometric = photometric or PhotometricConfig()
        self.photometric = photometric.build() if photometric.enabled else None
        self.normalize = Normalize(self.mean, self.std)

    def _geometry(self, height: int, width: int, mask: np.ndarray | None) -> tuple[int, int, int, int, int, int]:
        """Source box (top, left, height, width) and its output size (height, width) after rescaling."""
        ratio = float(torch.empty(1).uniform_(*self.scale_range))
        scale = ratio * (self.base_size / min(height, width) if self.base_size else 1.0)
        out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
        crop_h, crop_w = min(self.crop_size[0], out_h), min(self.crop_size[1], out_w)
        for _ in range(CAT_MAX_RATIO_RETRIES):
            top = int(torch.randint(0, out_h - crop_h + 1, ()))
            left = int(torch.randint(0, out_w - crop_w + 1, ()))
            src_top, src_left = math.floor(top / scale), math.floor(left / scale)
            src_h = max(1, min(height - src_top, math.ceil(crop_h / scale)))
            src_w = max(1, min(width - src_left, math.ceil(crop_w / scale)))
            if mask is None or self.cat_max_ratio >= 1.0 or crop_ratio_ok(
                    mask[src_top:src_top + src_h, src_left:src_left + src_w], self.cat_max_ratio):
                break
        return src_top, src_left, src_h, src_w, crop_h, crop_w

    def geometric(self, image: torch.Tensor, mask: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 ``[3, H, W]`` and uint8 ``[H, W]`` (or None for unlabelled images) -> cropped uint8 image
        ``[3, h, w]`` and mask ``[h, w]``, ``h, w`` <= crop size (padding comes after normalisation)."""
        top, left, src_h, src_w, out_h, out_w = self._geometry(image.shape[-2], image.shape[-1], mask)
        flip = bool(torch.rand(()) < self.hflip_p)
        image_t = F.resized_crop(tv_tensors.Image(image), top, left, src_h, src_w, [out_h, out_w], antialias=True)
        image_t = F.horizontal_flip(image_t) if flip else image_t
        if mask is None:
            return image_t, None
        mask_t = F.resized_crop(tv_tensors.Mask(torch.from_numpy(mask)), top, left, src_h, src_w, [out_h, out_w])
        return image_t, (F.horizontal_flip(mask_t) if flip else mask_t)

    def views(self, image: torch.Tensor, count: int) -> list[torch.Tensor]:
        """``count`` photometric views of one uint8 crop, each normalised and zero-padded (= mean colour) to the
        crop size, f32 ``[3, H, W]``."""
        if self.photometric is None:
            return [pad_to(self.normalize(image), self.crop_size, 0.0)] * count
        picture = F.to_pil_image(image.as_subclass(torch.Tensor))
        return [pad_to(self.normalize(F.pil_to_tensor(self.photometric(picture))), self.crop_size, 0.0)
                for _ in range(count)]

    def pad_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return pad_to(mask, self.crop_size, LOCAL_IGNORE)


def pad_to(tensor: torch.Tensor, size: tuple[int, int], value: float) -> torch.Tensor:
    """Pad the last two dims on the bottom/right up to ``size``."""
    pad_h, pad_w = size[0] - tensor.shape[-2], size[1] - tensor.shape[-1]
    if pad_h <= 0 and pad_w <= 0:
        return tensor.as_subclass(torch.Tensor)
    return torch.nn.functional.pad(tensor.as_subclass(torch.Tensor), (0, max(pad_w, 0), 0, max(pad_h, 0)),
                                   value=value)


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
