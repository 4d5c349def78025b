"""Learning-dynamics measures of dense pretraining: pure functions on detached tensors.

Shapes: B images, D channels, h x w feature map, P pixels, C classes. Labels are global class ids with -1 for
ignored pixels, already at the feature map's resolution. Every function returns Python floats (they run off the
hot path, every ``train.probe_every`` steps) and NaN when there is nothing to measure.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pixels_and_labels(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, D, h, w] and [B, h, w] -> (labelled pixels [P, D] float32, their labels [P])."""
    pixels = features.detach().permute(0, 2, 3, 1).reshape(-1, features.shape[1]).float()
    flat = labels.reshape(-1)
    keep = flat >= 0
    return pixels[keep], flat[keep]


def off_diagonal_cosine(prototypes: torch.Tensor, seen: torch.Tensor) -> tuple[float, float]:
    """(mean, max) cosine between different prototypes among the ``seen`` classes: [C, D], [C] bool."""
    unit = F.normalize(prototypes[seen].float(), dim=1)
    count = unit.shape[0]
    if count < 2:
        return math.nan, math.nan
    cosine = unit @ unit.t()
    off = cosine[~torch.eye(count, dtype=torch.bool, device=cosine.device)]
    return float(off.mean()), float(off.max())


def prototype_drift(previous: torch.Tensor, current: torch.Tensor, seen: torch.Tensor, steps: int) -> float:
    """Mean (1 - cosine) between a prototype and itself ``steps`` steps earlier, per step: [C, D] x2, [C] bool."""
    if steps <= 0 or not bool(seen.any()):
        return math.nan
    cosine = F.cosine_similarity(previous[seen].float(), current[seen].float(), dim=1)
    return float((1.0 - cosine).mean()) / steps


def alignment_uniformity(
    pixels: torch.Tensor, labels: torch.Tensor, max_pixels: int = 2048, generator: torch.Generator | None = None
) -> tuple[float, float]:
    """Wang & Isola (2020) on unit pixel embeddings [P, D] with labels [P], a random subset of ``max_pixels``.

    alignment = E ||x - y||^2 over same-class pairs (lower = tighter classes); uniformity = log E exp(-2 ||x - y||^2)
    over all pairs (lower = better spread on the sphere).
    """
    if pixels.shape[0] > max_pixels:
        subset = torch.randperm(pixels.shape[0], generator=generator)[:max_pixels].to(pixels.device)
        pixels, labels = pixels[subset], labels[subset]
    count = pixels.shape[0]
    if count < 2:
        return math.nan, math.nan
    unit = F.normalize(pixels.float(), dim=1)
    squared = (2.0 - 2.0 * unit @ unit.t()).clamp(min=0.0)
    pairs = ~torch.eye(count, dtype=torch.bool, device=unit.device)
    same = (labels[:, None] == labels[None, :]) & pairs
    alignment = float(squared[same].mean()) if bool(same.any()) else math.nan
    uniformity = float(torch.logsumexp(-2.0 * squared[pairs], dim=0) - math.log(int(pairs.sum())))
    return alignment, uniformity


def effective_rank(pixels: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred pixels [P, D] (Roy & Vetterli, 2007)."""
    if pixels.shape[0] < 2:
        return math.nan
    singular = torch.linalg.svdvals(pixels.float() - pixels.float().mean(0))
    weights = singular / singular.sum().clamp(min=1e-12)
    entropy = -(weights * weights.clamp(min=1e-12).log()).sum()
    return float(entropy.exp())


def image_level_share(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cosine of a labelled pixel's vector to its own image's mean vector: [B, D, h, w], [B, h, w].

    Near 1 means the map carries one vector per image (no within-image structure left to separate classes).
    """
    unit = F.normalize(features.detach().float(), dim=1)
    valid = (labels >= 0)[:, None].to(unit.dtype)
    image_mean = F.normalize((unit * valid).sum((2, 3), keepdim=True), dim=1)
    cosine = (unit * image_mean).sum(1, keepdim=True)
    return float((cosine * valid).sum() / valid.sum().clamp(min=1.0))


def _known_classes(
    pixels: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixels [P, D] whose label [P] is one of ``classes``."""
    known = torch.isin(labels, classes)
    return pixels[known], labels[known]


def nearest_centroid_accuracy(
    fit_pixels: torch.Tensor, fit_labels: torch.Tensor, test_pixels: torch.Tensor, test_labels: torch.Tensor
) -> float:
    """Accuracy of the nearest cosine class centroid (centroids from the fit pixels) on the test pixels.

    Only test pixels of classes present among the fit pixels are scored. [P, D], [P] for both sets.
    """
    classes, index = torch.unique(fit_labels, return_inverse=True)
    test_pixels, test_labels = _known_classes(test_pixels, test_labels, classes)
    if fit_pixels.shape[0] == 0 or test_pixels.shape[0] == 0:
        return math.nan
    sums = torch.zeros(classes.shape[0], fit_pixels.shape[1], device=fit_pixels.device)
    sums.index_add_(0, index, F.normalize(fit_pixels.float(), dim=1))
    scores = F.normalize(test_pixels.float(), dim=1) @ F.normalize(sums, dim=1).t()
    return float((classes[scores.argmax(1)] == test_labels).float().mean())


def ridge_probe_accuracy(
    fit_pixels: torch.Tensor,
    fit_labels: torch.Tensor,
    test_pixels: torch.Tensor,
    test_labels: torch.Tensor,
    ridge: float = 1e-2,
) -> float:
    """Closed-form linear probe: ridge regression onto one-hot classes, features standardised on the fit pixels.

    [P, D], [P] for both sets; ``ridge`` is relative to the number of fit pixels. Only test pixels of classes
    present among the fit pixels are scored.
    """
    classes, index = torch.unique(fit_labels, return_inverse=True)
    test_pixels, test_labels = _known_classes(test_pixels, test_labels, classes)
    if fit_pixels.shape[0] == 0 or test_pixels.shape[0] == 0:
        return math.nan
    mean, std = fit_pixels.float().mean(0), fit_pixels.float().std(0).clamp(min=1e-6)

    def design(pixels: torch.Tensor) -> torch.Tensor:
        standard = (pixels.float() - mean) / std
        return torch.cat([standard, torch.ones_like(standard[:, :1])], dim=1)

    targets = F.one_hot(index, classes.shape[0]).float()
    fit = design(fit_pixels).double()
    gram = fit.t() @ fit + ridge * fit.shape[0] * torch.eye(fit.shape[1], dtype=fit.dtype, device=fit.device)
    weights = torch.linalg.solve(gram, fit.t() @ targets.double()).float()
    predicted = classes[(design(test_pixels) @ weights).argmax(1)]
    return float((predicted == test_labels).float().mean())


def prototype_regime(
    prototypes: torch.Tensor,
    anchors: torch.Tensor,
    anchor_share: torch.Tensor,
    seen: torch.Tensor,
    dataset_classes: dict[str, torch.Tensor],
    faded_below: float = math.exp(-3.0),
) -> dict[str, float]:
    """Where a run's prototypes are between their random anchors and pure class means.

    prototypes, anchors: [C, D]; anchor_share: [C] weight of the anchor in each prototype; seen: [C] bool;
    dataset_classes: dataset name -> [K] global ids. Per dataset (seen classes only): the median anchor share,
    its maximum, and the mean off-diagonal prototype cosine (classes of one dataset often share images, so this
    is where class means collapse). Over every seen class whose anchor share fell below ``faded_below`` (three
    windows of regions): the largest cosine of a prototype to its own anchor.
    """
    metrics = {}
    unit = F.normalize(prototypes.float(), dim=1)
    for name, class_ids in dataset_classes.items():
        ids = class_ids[seen[class_ids]]
        if ids.numel() == 0:
            continue
        shares = anchor_share[ids].float()
        metrics[f"anchor_share_median_{name}"] = float(shares.median())
        metrics[f"anchor_share_max_{name}"] = float(shares.max())
        metrics[f"prototype_cos_within_{name}"] = off_diagonal_cosine(
            unit[ids], torch.ones_like(ids, dtype=torch.bool)
        )[0]
    faded = seen & (anchor_share < faded_below)
    if bool(faded.any()):
        to_anchor = (unit[faded] * F.normalize(anchors[faded].float(), dim=1)).sum(1)
        metrics["prototype_cos_to_anchor_max_faded"] = float(to_anchor.max())
    return metrics
