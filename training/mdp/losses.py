"""Losses of MDP and its baselines: pure functions on tensors.

Shapes: P pixels (flattened over the batch), C global classes, D embedding dim, N memory entries.
Labels are global class ids with ``ignore_index`` (-1) for pixels without a label. Every loss averages over
the pixels that contribute and returns 0 (still attached to the graph) when none does, without a host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mdp_hub.prototypes import centred_prototype_logits  # noqa: F401  (shared with the prototype segmenter)


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(values * weights) / sum(weights), 0 when all weights are 0 ([P], [P] -> scalar)."""
    return (values * weights).sum() / weights.sum().clamp(min=1e-12)


def prototype_logits(embeddings: torch.Tensor, prototypes: torch.Tensor, tau: float) -> torch.Tensor:
    """Cosine similarity over temperature in float32, autocast off: [P, D] x [C, D] -> [P, C].

    Both inputs are expected L2-normalised (zero rows give zero similarity).
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        return embeddings.float() @ prototypes.float().t() / tau


def _gather_log_prob(log_probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log_probs [P, C], labels [P] (any value where not valid) -> [P] log-probability of the label, 0 if not valid."""
    safe_labels = torch.where(valid, labels, 0)
    picked = log_probs.gather(1, safe_labels[:, None]).squeeze(1)
    return torch.where(valid, picked, torch.zeros_like(picked))


def topk_other_classes(
    logits: torch.Tensor, labels: torch.Tensor, class_mask: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest-scoring initialised classes other than each pixel's label.

    logits [P, C], labels [P], class_mask [C] bool -> (indices [P, k] int64, valid [P, k] bool). ``valid`` is
    False where fewer than k such classes exist.
    """
    has_label = labels >= 0
    is_label = F.one_hot(labels.clamp(min=0), logits.shape[1]).bool() & has_label[:, None]
    excluded = is_label | ~class_mask[None, :]
    scores = logits.detach().masked_fill(excluded, float("-inf"))
    top_scores, top_index = scores.topk(k, dim=1)
    return top_index, torch.isfinite(top_scores)


def csc1_exclusion(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_mask: torch.Tensor,
    k: int,
    keep_labels: tuple[torch.Tensor, ...] | list[torch.Tensor] = (),
) -> torch.Tensor:
    """CSC1: [P, C] bool, True for each pixel's top-k most similar non-label classes (not pushed away).

    logits [P, C], labels [P]; ``keep_labels`` ([P] each, e.g. both labels of a mixed pixel) are never
    excluded, so every label stays in its own denominator.
    """
    top_index, top_valid = topk_other_classes(logits, labels, class_mask, k)
    excluded = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, top_index, top_valid)
    for kept in keep_labels:
        excluded &= ~(F.one_hot(kept.clamp(min=0), logits.shape[1]).bool() & (kept >= 0)[:, None])
    return excluded


def prototype_log_probs(
    logits: torch.Tensor, class_mask: torch.Tensor, exclude_from_denominator: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-softmax over the initialised classes: [P, C] logits -> [P, C], -inf for masked classes.

    class_mask: [C] bool, False for uninitialised prototypes. exclude_from_denominator: optional [P, C] bool,
    classes dropped from a pixel's denominator (CSC1). Computed once per step and shared by the losses below.
    """
    denominator_mask = class_mask[None, :].expand_as(logits)
    if exclude_from_denominator is not None:
        denominator_mask = denominator_mask & ~exclude_from_denominator
    return F.log_softmax(logits.float().masked_fill(~denominator_mask, float("-inf")), dim=1)


def pixel_to_prototype_nce(
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    class_mask: torch.Tensor,
    labels_b: torch.Tensor | None = None,
    weight_b: torch.Tensor | None = None,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Pixel-to-prototype InfoNCE: -log softmax over all initialised classes at the pixel's label.

    log_probs: [P, C] from ``prototype_log_probs`` (logits = cos(q_i, mu_c) / tau). labels: [P] global ids.
    class_mask: [C] bool; pixels whose label has no prototype yet are skipped, as are ``ignore_index`` ones.
    labels_b, weight_b ([P] each, optional): a second label with weight ``weight_b`` in [0, 1] (the partner's
    share of a mixed pixel); the pixel loss is (1-w) l(y_a) + w l(y_b), renormalised over the labelled sides.
    Returns a scalar.
    """

    def side(side_labels: torch.Tensor, side_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = (side_labels != ignore_index) & class_mask[side_labels.clamp(min=0)]
        weight = side_weight * valid
        return -_gather_log_prob(log_probs, side_labels, valid) * weight, weight

    if labels_b is None:
        loss_a, pixel_weight = side(labels, torch.ones_like(log_probs[:, 0]))
        return _masked_mean(loss_a, (pixel_weight > 0).to(loss_a.dtype))
    if weight_b is None:
        raise ValueError("labels_b needs weight_b (the partner's share of each pixel)")
    loss_a, weight_a = side(labels, 1.0 - weight_b)
    loss_b, weight_b_valid = side(labels_b, weight_b)
    total_weight = weight_a + weight_b_valid
    pixel_loss = (loss_a + loss_b) / total_weight.clamp(min=1e-12)
    return _masked_mean(pixel_loss, (total_weight > 0).to(pixel_loss.dtype))


def within_image_region_nce(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    regions: torch.Tensor,
    present: torch.Tensor,
    tau: float = 0.07,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Within-image contrast: each pixel against the region embeddings of the classes of its own image.

    embeddings: [B, P, D] unit query embeddings; labels: [B, P] global ids (``ignore_index`` = skip);
    regions: [B, C, D] unit region embeddings of the same images (``region_means`` of the momentum encoder),
    present: [B, C] bool. For pixel i of image b:
        l_i = -log( exp(q_i . r_{b,y_i} / tau) / sum_{c present in b} exp(q_i . r_{b,c} / tau) )
    Pixels whose class has no region in their image, and images with fewer than two classes, are skipped.
    Returns a scalar.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        logits = torch.einsum("bpd,bcd->bpc", embeddings.float(), regions.float()) / tau
    log_probs = F.log_softmax(logits.masked_fill(~present[:, None, :], float("-inf")), dim=2)
    safe_labels = labels.clamp(min=0)
    contrasted = present.sum(1, keepdim=True) >= 2
    valid = (labels != ignore_index) & present.gather(1, safe_labels) & contrasted
    picked = log_probs.gather(2, safe_labels[..., None]).squeeze(2)
    picked = torch.where(valid, picked, torch.zeros_like(picked))
    return _masked_mean(-picked.reshape(-1), valid.reshape(-1).to(picked.dtype))


def sparse_coding_loss(
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    class_mask: torch.Tensor,
    k: int = 5,
    code_temperature_ratio: float = 1.0,
    ignore_index: int = -1,
) -> torch.Tensor:
    """CSC2 pixel-to-class sparse coding: pull each pixel towards its top-k most similar non-label prototypes.

    L = mean_i [ -sum_{c in T_i} a_ic log p_ic ], log p = ``log_probs`` [P, C] from ``prototype_log_probs``
    (without CSC1 exclusion), T_i = top-k initialised classes other than y_i, a_i = stop-gradient softmax
    over T_i of logits / code_temperature_ratio, i.e. similarities at temperature tau * ratio (log_probs
    differ from logits by a per-pixel constant, which neither top-k nor that softmax sees). labels [P];
    pixels with ``ignore_index`` or an uninitialised label are skipped. Returns a scalar.
    """
    valid = (labels != ignore_index) & class_mask[labels.clamp(min=0)]
    top_index, top_valid = topk_other_classes(log_probs, labels, class_mask, k)
    code_logits = log_probs.detach().gather(1, top_index) / code_temperature_ratio
    code = torch.softmax(code_logits.masked_fill(~top_valid, float("-inf")), dim=1)
    code = torch.nan_to_num(code) * top_valid
    picked = log_probs.gather(1, top_index).masked_fill(~top_valid, 0.0)
    pixel_loss = -(code * picked).sum(1)
    return _masked_mean(pixel_loss, (valid & top_valid.any(1)).to(pixel_loss.dtype))


def pixel_to_pixel_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, tau: float = 0.07, ignore_index: int = -1
) -> torch.Tensor:
    """Within-image supervised contrast (the paper's Eq. 2 baseline).

    embeddings: [B, P, D] unit vectors, labels: [B, P]. For anchor i of image b, positives are the other
    labelled pixels of b with the same label, the denominator all other labelled pixels of b:
        l_i = -1/|P_i| sum_{p in P_i} log( exp(q_i.q_p/tau) / sum_{a in A_i} exp(q_i.q_a/tau) ).
    Anchors without a positive are skipped. Returns a scalar.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        logits = torch.bmm(embeddings.float(), embeddings.float().transpose(1, 2)) / tau
    valid = labels != ignore_index
    not_self = ~torch.eye(labels.shape[1], dtype=torch.bool, device=labels.device)[None]
    others = valid[:, None, :] & valid[:, :, None] & not_self
    positives = others & (labels[:, None, :] == labels[:, :, None])
    log_probs = logits - torch.logsumexp(logits.masked_fill(~others, float("-inf")), dim=2, keepdim=True)
    num_positives = positives.sum(2)
    anchor_loss = -log_probs.masked_fill(~positives, 0.0).sum(2) / num_positives.clamp(min=1)
    return _masked_mean(anchor_loss.reshape(-1), (num_positives > 0).reshape(-1).to(anchor_loss.dtype))


def pixel_to_region_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    bank_embeddings: torch.Tensor,
    bank_labels: torch.Tensor,
    tau: float = 0.07,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Pixel-to-region supervised contrast against a region memory, multiple positives per pixel.

    embeddings: [P, D] unit, labels: [P]; bank_embeddings: [N, D] unit, bank_labels: [N] (-1 = empty slot).
    l_i = -1/|P_i| sum_{r in P_i} log( exp(q_i.r/tau) / sum_{n filled} exp(q_i.n/tau) ), P_i = bank entries
    with label y_i. Pixels without a positive in the bank are skipped. Returns a scalar.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        logits = embeddings.float() @ bank_embeddings.float().t() / tau
    filled = bank_labels >= 0
    log_probs = logits - torch.logsumexp(logits.masked_fill(~filled[None, :], float("-inf")), dim=1, keepdim=True)
    positives = (labels[:, None] == bank_labels[None, :]) & filled[None, :] & (labels != ignore_index)[:, None]
    num_positives = positives.sum(1)
    pixel_loss = -log_probs.masked_fill(~positives, 0.0).sum(1) / num_positives.clamp(min=1)
    return _masked_mean(pixel_loss, (num_positives > 0).to(pixel_loss.dtype))


def pixel_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, allowed: torch.Tensor | None = None, ignore_index: int = -1
) -> torch.Tensor:
    """Per-pixel cross-entropy in float32, mean over labelled pixels (0 when there is none).

    logits: [P, C] over the concatenated label space, labels: [P] global ids. allowed: optional [P, C] bool
    restricting each pixel's softmax to its own dataset's classes (the multi-head baseline: equal to one
    classifier per dataset trained with CE on local labels); pixels whose label is not allowed are skipped.
    Scalar.
    """
    logits = logits.float()
    valid = labels != ignore_index
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
        valid = valid & allowed.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
    log_probs = F.log_softmax(logits, dim=1)
    return _masked_mean(-_gather_log_prob(log_probs, labels, valid), valid.to(log_probs.dtype))


def moco_infonce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """MoCo InfoNCE: query [B, D], positive key [B, D], negatives queue [K, D], all unit. Scalar."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        query = query.float()
        positive = (query * key.float()).sum(1, keepdim=True)
        negative = query @ queue.float().t()
        logits = torch.cat([positive, negative], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(query.shape[0], dtype=torch.long, device=query.device))
