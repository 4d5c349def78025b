"""MoCo-v2 photometric views made batched on the training device (``data.photometric_on: device``).

Workers return one uint8 crop per sample, or the crop's source region still to be enlarged and flipped
(``JointTrainTransform.device_crop``); here the whole batch is resized (``resize_regions``) and gets its query and
key views at once: colour jitter (brightness, contrast, saturation, hue) with
probability, random grayscale, Gaussian blur with a random sigma, then normalisation with mean/std (after the
jitter, as on the worker side) and zero padding outside each crop's real size. Every random parameter is drawn
per sample and per view, as tensors on the device; each op is a handful of whole-batch kernels (no loop over
samples, no host sync). Both views are processed as one batch of ``2B``.

Differences from the worker path (torchvision's PIL kernels, PIL's GaussianBlur), stated so nobody relies on
them: the four colour ops run in a fixed order (brightness, contrast, saturation, hue) instead of a random order
per sample; the blur is a true separable Gaussian (kernel ``2 * ceil(3 * sigma_max) + 1``, reflect border)
rather than PIL's box approximation; arithmetic is float32 on 0-1 values instead of uint8 rounding per op.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import roi_align

from training.data.label_space import lookup_per_sample
from training.data.transforms import PhotometricConfig, check_mean_std

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, torchvision's rgb_to_grayscale


def _uniform(n: int, low: float, high: float, device, generator) -> torch.Tensor:
    """``n`` draws of U(low, high) as float32 ``[n, 1, 1, 1]``."""
    return torch.rand(n, 1, 1, 1, device=device, generator=generator) * (high - low) + low


def _chance(n: int, p: float, device, generator) -> torch.Tensor:
    """``n`` Bernoulli(p) draws as bool ``[n, 1, 1, 1]``."""
    return torch.rand(n, 1, 1, 1, device=device, generator=generator) < p


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """float ``[N, 3, H, W]`` -> luma ``[N, 1, H, W]``."""
    weights = torch.tensor(GRAY_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """float ``[N, 3, H, W]`` in 0-1 -> HSV ``[N, 3, H, W]``, hue in [0, 1)."""
    r, g, b = images.unbind(1)
    maxc, _ = images.max(dim=1)
    minc, _ = images.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = torch.where(delta > 0, torch.remainder(hue / 6.0, 1.0), torch.zeros_like(hue))
    saturation = torch.where(
        maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
    return torch.stack((hue, saturation, maxc), dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """HSV ``[N, 3, H, W]`` (hue in [0, 1)) -> RGB ``[N, 3, H, W]``: channel ``c = v - v s clamp(min(k, 4 - k), 0, 1)``
    with ``k = (n + 6 h) mod 6`` and ``n = 5, 3, 1`` for R, G, B (one broadcast instead of six sector cases)."""
    hue, saturation, value = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = torch.tensor((5.0, 3.0, 1.0), dtype=hsv.dtype, device=hsv.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * hue, 6.0)
    return value - value * saturation * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample: float ``[N, C, H, W]``, sigma ``[N]`` -> ``[N, C, H, W]``.

    All samples share one kernel length ``2 * ceil(3 * max_sigma) + 1``; the per-sample kernels go into a grouped
    convolution over ``N * C`` channels, so the whole batch is two convolutions. Borders are reflected.
    """
    n, c, h, w = images.shape
    radius = max(1, math.ceil(3.0 * max_sigma))
    if radius >= min(h, w):  # reflect padding needs the image to be larger than the pad
        radius = max(1, min(h, w) - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1).to(images.dtype)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N * C, K]
    flat = images.reshape(1, n * c, h, w)
    flat = nn.functional.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = nn.functional.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = nn.functional.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


def replicate_edges(images: torch.Tensor, sizes: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, C, H, W]`` (any dtype) whose sample ``i`` is real in ``[:sizes[i, 0], :sizes[i, 1]]`` -> the same with
    the rest filled by repeating the last real row and column; with ``flip`` (bool ``[B]``) the flagged samples are
    also mirrored horizontally, so their real part ends at column ``W`` (one gather for the batch either way;
    per-sample sizes, no host sync)."""
    b, c, h, w = images.shape
    rows = torch.minimum(torch.arange(h, device=images.device).view(1, h), sizes[:, 0:1] - 1)  # [B, H]
    cols = torch.minimum(torch.arange(w, device=images.device).view(1, w), sizes[:, 1:2] - 1)  # [B, W]
    if flip is not None:
        cols = torch.where(flip.view(b, 1), cols.flip(-1), cols)
    index = (rows.view(b, h, 1) * w + cols.view(b, 1, w)).view(b, 1, h * w).expand(b, c, h * w)
    return images.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)


def resize_regions(images: torch.Tensor, regions: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Finish the crops workers left unresampled: uint8 ``[B, C, H, W]`` whose sample ``i`` holds a source region
    ``[:regions[i, 0], :regions[i, 1]]`` -> float32 ``[B, C, H, W]`` (0-255 scale) whose sample ``i`` is that region
    flipped horizontally if ``regions[i, 2]`` and bilinearly resized (``align_corners=False``) to
    ``[:sizes[i, 0], :sizes[i, 1]]``; outside that, the values are the resize's clamped extrapolation.

    One ``roi_align`` for the batch (one bilinear sample per output pixel at the pixel centre, per-sample boxes):
    it equals ``F.interpolate(region, size, mode="bilinear", align_corners=False)`` exactly when enlarging, which
    is the only case workers leave to the device (no antialiasing needed). A region already at its size and not
    flipped passes through unchanged. Each region is first extended by its own edge pixels (and mirrored, in the
    same gather), so samples next to its border read clamped values, as interpolate does, not the zero padding.
    """
    b, _, h, w = images.shape
    flip = regions[:, 2].bool()
    x = replicate_edges(images, regions[:, :2], flip).float()
    region_h, region_w = regions[:, 0].float(), regions[:, 1].float()
    left = torch.where(flip, w - region_w, torch.zeros_like(region_w))  # a mirrored region ends at column w
    boxes = torch.stack(
        (
            torch.arange(b, device=x.device, dtype=torch.float32),
            left,
            torch.zeros_like(left),
            left + w * region_w / sizes[:, 1].float(),
            h * region_h / sizes[:, 0].float(),
        ),
        dim=1,
    )
    return roi_align(x, boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)


class BatchPhotometric(nn.Module):
    """Batched MoCo-v2 jitter and normalisation: uint8 crops ``[B, 3, H, W]`` -> ``views`` float32 views.

    No parameters or buffers, so it never enters a state dict; random draws use ``generator`` (on the images'
    device) when given, else the global RNG of that device, which training checkpoints save and restore.
    """

    def __init__(self, photometric: PhotometricConfig, mean, std):
        super().__init__()
        self.config = photometric
        self.mean, self.std = check_mean_std(mean, std)

    def jitter(
        self, images: torch.Tensor, valid: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """float ``[N, 3, H, W]`` in 0-1 -> jittered ``[N, 3, H, W]`` in 0-1, independent draws per sample.

        ``valid`` (bool ``[N, 1, H, W]``, optional) marks real pixels: the contrast mean ignores the padding.
        """
        cfg, n, device = self.config, images.shape[0], images.device
        out = images
        if cfg.color_jitter_p > 0:
            apply = _chance(n, cfg.color_jitter_p, device, generator)
            jittered = images
            if cfg.brightness > 0:
                factor = _uniform(n, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, device, generator)
                jittered = (jittered * factor).clamp_(0.0, 1.0)
            if cfg.contrast > 0:
                factor = _uniform(n, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, device, generator)
                gray = grayscale(jittered)
                if valid is None:
                    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
                else:
                    mean = (gray * valid).sum(dim=(1, 2, 3), keepdim=True) / valid.sum(dim=(1, 2, 3), keepdim=True)
                jittered = (factor * jittered + (1 - factor) * mean).clamp_(0.0, 1.0)
            if cfg.saturation > 0:
                factor = _uniform(n, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, device, generator)
                jittered = (factor * jittered + (1 - factor) * grayscale(jittered)).clamp_(0.0, 1.0)
            if cfg.hue > 0:
                shift = _uniform(n, -cfg.hue, cfg.hue, device, generator)
                hsv = rgb_to_hsv(jittered)
                hue = torch.remainder(hsv[:, 0:1] + shift, 1.0)
                jittered = hsv_to_rgb(torch.cat((hue, hsv[:, 1:]), dim=1)).clamp_(0.0, 1.0)
            out = torch.where(apply, jittered, out)
        if cfg.grayscale_p > 0:
            apply = _chance(n, cfg.grayscale_p, device, generator)
            out = torch.where(apply, grayscale(out).expand_as(out), out)
        if cfg.blur_p > 0:
            apply = _chance(n, cfg.blur_p, device, generator)
            low, high = cfg.blur_sigma
            sigma = _uniform(n, low, high, device, generator).view(n)
            out = torch.where(apply, gaussian_blur(out, sigma, high), out)
        return out

    def forward(
        self,
        images: torch.Tensor,
        sizes: torch.Tensor | None = None,
        views: int = 2,
        generator: torch.Generator | None = None,
        regions: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """uint8 ``[B, 3, H, W]`` (+ real crop sizes int64 ``[B, 2]``, optional) -> ``views`` float32 tensors
        ``[B, 3, H, W]``: jittered, normalised, zero (= mean colour) outside each crop's real size.

        ``regions`` (int64 ``[B, 3]``, needs ``sizes``): samples that still hold their source region are resized
        and flipped first (``resize_regions``). With ``sizes``, whatever the padding holds is replaced by the crop's
        last row / column, so the blur sees no artificial border (workers pad with zeros, the cheapest fill)."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"BatchPhotometric expects uint8 [B, 3, H, W] crops, got {images.dtype} {tuple(images.shape)}"
            )
        b, _, h, w = images.shape
        valid = None
        if sizes is not None and tuple(sizes.shape) != (b, 2):
            raise ValueError(f"crop sizes must be int64 [B, 2] = [{b}, 2], got {tuple(sizes.shape)}")
        if regions is not None and (sizes is None or tuple(regions.shape) != (b, 3)):
            raise ValueError(
                f"source regions must be int64 [B, 3] = [{b}, 3] and come with crop sizes, got {tuple(regions.shape)}"
            )
        with torch.autocast(images.device.type, enabled=False):  # resize and jitter in fp32 even inside AMP
            x = images if regions is None else resize_regions(images, regions, sizes)
            if sizes is not None:
                x = replicate_edges(x, sizes)
                rows = torch.arange(h, device=images.device).view(1, 1, h, 1) < sizes[:, 0].view(b, 1, 1, 1)
                cols = torch.arange(w, device=images.device).view(1, 1, 1, w) < sizes[:, 1].view(b, 1, 1, 1)
                valid = (rows & cols).repeat(views, 1, 1, 1)
            x = x.float().div_(255.0).repeat(views, 1, 1, 1)
            if self.config.enabled:
                x = self.jitter(x, valid, generator)
            mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
            inv_std = 1.0 / torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) * inv_std
            if valid is not None:
                x = x * valid
        return list(x.chunk(views, dim=0))


class DeviceViews(nn.Module):
    """Wraps the callable the training loop calls: a batch whose ``image`` is uint8 (worker side of
    ``photometric_on: device``, with ``image_size`` and ``source_region``) gets its crops finished and float views
    made on its device before ``model(batch)``, ``image`` and ``image_k``
    for pretraining (``views=2``) or ``image`` alone for fine-tuning (``views=1``); its uint8 ``mask`` (local
    ids, 255 = ignore) becomes int64 ids through ``label_tables[dataset_id]`` (int64 ``[D, 256]``, e.g.
    ``SegmentationSamples.label_tables``).

    Batches that already carry float views and int64 masks pass through unchanged. Holds no state of its own.
    """

    def __init__(
        self,
        model,
        augment: BatchPhotometric,
        channels_last: bool = False,
        label_tables: torch.Tensor | None = None,
        views: int = 2,
    ):
        super().__init__()
        if views not in (1, 2):
            raise ValueError(f"DeviceViews makes 1 or 2 views, not {views}")
        self.model = model
        self.augment = augment
        self.channels_last = channels_last
        self.label_tables = label_tables
        self.views = views

    def forward(self, batch: dict):
        images, masks = batch["image"], batch.get("mask")
        if images.dtype == torch.uint8:
            views = self.augment(images, batch.get("image_size"), views=self.views, regions=batch.get("source_region"))
            if self.channels_last:
                views = [view.contiguous(memory_format=torch.channels_last) for view in views]
            batch = {k: v for k, v in batch.items() if k not in ("image_size", "source_region")}
            batch.update(zip(("image", "image_k"), views))
        if masks is not None and masks.dtype == torch.uint8:
            if self.label_tables is None:
                raise ValueError("DeviceViews got uint8 masks (local ids) but no label_tables to map them")
            if self.label_tables.device != masks.device:  # moved once, on the first batch
                self.label_tables = self.label_tables.to(masks.device)
            batch = {**batch, "mask": lookup_per_sample(self.label_tables, batch["dataset_id"], masks)}
        return self.model(batch)
