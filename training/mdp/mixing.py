"""Cross-dataset mixing of a batch with partners from other datasets (MDP section 5), vectorised.

Every mode is written as one per-pixel partner weight ``alpha`` in [0, 1]:
    mixed image = (1 - alpha) * own image + alpha * partner image
    region (CutMix box) and ClassMix: alpha is a {0, 1} mask, the label is the partner's where alpha = 1;
    pixel Mixup ("intermediate class"): alpha = 1 - lambda everywhere, the pixel has both labels.
Labels stay global ids; ignore (-1) is kept on whichever side it comes from, and the loss
(``pixel_to_prototype_nce`` with ``labels_b``/``weight_b``) weighs the two labels by (1 - alpha, alpha).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NO_MIX, REGION_MIX, PIXEL_MIX = 0, 1, 2


@dataclass
class MixedBatch:
    """image [B, 3, H, W]; labels_a (own) and labels_b (partner) [B, H, W] global ids with -1 = ignore;
    partner_weight [B, H, W] float alpha; partner [B] int64 partner index; mode [B] int64 (NO/REGION/PIXEL_MIX).
    """

    image: torch.Tensor
    labels_a: torch.Tensor
    labels_b: torch.Tensor
    partner_weight: torch.Tensor
    partner: torch.Tensor
    mode: torch.Tensor
    ground_truth: torch.Tensor | None = None  # labels allowed to update memories (no pseudo-labels), if known

    def hard_labels(self) -> torch.Tensor:
        """[B, H, W] the label of the larger share of each pixel (exact for box and ClassMix pixels)."""
        return torch.where(self.partner_weight > 0.5, self.labels_b, self.labels_a)


def cross_dataset_partners(dataset_id: torch.Tensor) -> torch.Tensor:
    """[B] dataset ids -> [B] partner indices, uniform over images of *other* datasets in the batch.

    An image whose dataset is the only one in the batch gets a random other image of its own dataset (or
    itself when B = 1), so mixing still adds diversity; no host sync.
    """
    batch = dataset_id.shape[0]
    scores = torch.rand(batch, batch, device=dataset_id.device)
    same_dataset = dataset_id[:, None] == dataset_id[None, :]
    is_self = torch.eye(batch, dtype=torch.bool, device=dataset_id.device)
    scores = scores + same_dataset.to(scores.dtype) + is_self.to(scores.dtype)
    return scores.argmin(dim=1)


def box_masks(lam: torch.Tensor, start_x: torch.Tensor, start_y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Region boxes of MDP section 5.1: start (r_x, r_y), size (W sqrt(1-lam), H sqrt(1-lam)), clipped.

    lam, start_x, start_y: [B] (starts in pixels). Returns [B, H, W] bool, True inside the box; before
    clipping the box covers a fraction 1 - lam of the image.
    """
    side = torch.sqrt(1.0 - lam)
    box_w, box_h = (width * side).round(), (height * side).round()
    x0, y0 = start_x.floor(), start_y.floor()
    xs = torch.arange(width, device=lam.device, dtype=lam.dtype)
    ys = torch.arange(height, device=lam.device, dtype=lam.dtype)
    inside_x = (xs[None, :] >= x0[:, None]) & (xs[None, :] < (x0 + box_w)[:, None])
    inside_y = (ys[None, :] >= y0[:, None]) & (ys[None, :] < (y0 + box_h)[:, None])
    return inside_y[:, :, None] & inside_x[:, None, :]


def random_box_masks(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """[B, H, W] bool boxes with lam ~ U(0, 1) and a uniform start point."""
    lam = torch.rand(batch, device=device)
    start_x = torch.rand(batch, device=device) * width
    start_y = torch.rand(batch, device=device) * height
    return box_masks(lam, start_x, start_y, height, width)


def class_mix_masks(labels: torch.Tensor, num_classes: int, ignore_index: int = -1) -> torch.Tensor:
    """ClassMix: for each image a random ceil(n/2) of its n present classes; [B, H, W] -> [B, H, W] bool.

    The mask covers the pixels of the chosen classes (never ignore pixels).
    """
    batch = labels.shape[0]
    valid = labels != ignore_index
    flat = torch.where(valid, labels, num_classes).reshape(batch, -1)
    present = torch.zeros(batch, num_classes + 1, dtype=torch.bool, device=labels.device)
    present.scatter_(1, flat, True)
    present = present[:, :num_classes]
    scores = torch.rand(batch, num_classes, device=labels.device).masked_fill(~present, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    chosen = present & (rank < (present.sum(1, keepdim=True) + 1) // 2)
    chosen = torch.cat([chosen, chosen.new_zeros(batch, 1)], dim=1)
    return chosen.gather(1, flat).reshape(labels.shape)


def cross_dataset_mix(
    images: torch.Tensor,
    labels: torch.Tensor,
    dataset_id: torch.Tensor,
    num_classes: int,
    p_mix: float = 0.5,
    pixel_mix: str = "mixup",
    region_fraction: float = 0.5,
    ignore_index: int = -1,
) -> MixedBatch:
    """Mix each image, with probability ``p_mix``, with a partner from another dataset.

    images [B, 3, H, W], labels [B, H, W] global ids, dataset_id [B]. A mixed image uses region mixing with
    probability ``region_fraction``, otherwise pixel mixing ``pixel_mix`` in {"mixup", "classmix"}
    (lam ~ U(0, 1) = Beta(1, 1) for both box and Mixup).
    """
    if pixel_mix not in ("mixup", "classmix"):
        raise ValueError(f"pixel_mix must be 'mixup' or 'classmix', got {pixel_mix!r}")
    if not 0.0 <= p_mix <= 1.0 or not 0.0 <= region_fraction <= 1.0:
        raise ValueError(f"p_mix and region_fraction must be in [0, 1], got {p_mix!r}, {region_fraction!r}")
    batch, _, height, width = images.shape
    device = images.device
    partner = cross_dataset_partners(dataset_id)
    partner_labels = labels[partner]

    draw = torch.rand(batch, device=device)
    mixed = draw < p_mix
    region = mixed & (draw < p_mix * region_fraction)
    mode = torch.where(region, REGION_MIX, torch.where(mixed, PIXEL_MIX, NO_MIX))

    region_alpha = random_box_masks(batch, height, width, device).to(images.dtype)
    if pixel_mix == "mixup":
        pixel_alpha = (1.0 - torch.rand(batch, 1, 1, device=device, dtype=images.dtype)).expand(batch, height, width)
    else:
        pixel_alpha = class_mix_masks(partner_labels, num_classes, ignore_index).to(images.dtype)
    alpha = torch.where(region[:, None, None], region_alpha, pixel_alpha) * mixed[:, None, None]

    image = torch.lerp(images, images[partner], alpha[:, None])
    return MixedBatch(image, labels, partner_labels, alpha, partner, mode)


def unmixed_batch(images: torch.Tensor, labels: torch.Tensor) -> MixedBatch:
    """The identity mix: every image is its own partner with weight 0."""
    batch, _, height, width = images.shape
    own = torch.arange(batch, device=images.device)
    no_weight = images.new_zeros(batch, height, width)
    return MixedBatch(images, labels, labels, no_weight, own, torch.full_like(own, NO_MIX))


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of [B, H, W] int64 labels (or float maps) to ``size``, keeping exact ids."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0]
    return resized.to(labels.dtype)
