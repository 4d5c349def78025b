"""Pseudo-labels for unlabeled images: nearest class prototype of each momentum embedding, with a confidence.

As in the authors' "COCO without labels" experiment: unlabeled images go through the momentum encoder and each
pixel takes the label of its most similar prototype. Confidence is that class's softmax probability over the
initialised prototypes at the training temperature; pixels below ``threshold`` get -1 (ignore).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.mdp.losses import centred_prototype_logits, prototype_logits
from training.mdp.mixing import resize_labels


@torch.no_grad()
def pseudo_labels_from_embeddings(
    embeddings: torch.Tensor,
    prototypes: torch.Tensor,
    class_mask: torch.Tensor,
    threshold: float,
    tau: float = 0.07,
    class_offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """embeddings [B, D, h, w] unit; prototypes [C, D] (normalised here); class_mask [C] bool; class_offsets
    [C, D] of dataset centring (``centred_prototype_logits``) or None.

    Returns (labels [B, h, w] int64 with -1 below ``threshold`` or when no prototype exists,
    confidence [B, h, w] float32 in [0, 1]).
    """
    batch, dim, height, width = embeddings.shape
    flat = embeddings.permute(0, 2, 3, 1).reshape(-1, dim)
    if class_offsets is None:
        logits = prototype_logits(flat, F.normalize(prototypes, dim=1), tau)
    else:
        logits = centred_prototype_logits(flat, F.normalize(prototypes, dim=1), class_offsets, tau)
    probs = torch.softmax(logits.masked_fill(~class_mask[None, :], float("-inf")), dim=1)
    confidence, labels = torch.nan_to_num(probs).max(dim=1)
    labels = torch.where(confidence >= threshold, labels, -1)
    labels = torch.where(confidence > 0, labels, -1)
    return labels.reshape(batch, height, width), confidence.reshape(batch, height, width)


@torch.no_grad()
def pseudo_label(
    method_or_encoder: nn.Module,
    prototypes: torch.Tensor,
    images: torch.Tensor,
    threshold: float,
    tau: float = 0.07,
    class_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-label ``images`` [B, 3, H, W] at input resolution.

    method_or_encoder: a method (its ``momentum_encoder`` is used, else its ``encoder``) or an encoder whose
    output is unit embeddings [B, D, h, w]. class_mask: [C] bool of usable prototypes; by default the rows of
    ``prototypes`` with non-zero norm (uninitialised prototypes are zero).
    Returns (labels [B, H, W] int64, -1 = below threshold; confidence [B, H, W] float32), nearest-upsampled.
    """
    encoder = getattr(method_or_encoder, "momentum_encoder", None)
    if encoder is None:
        encoder = getattr(method_or_encoder, "encoder", method_or_encoder)
    if class_mask is None:
        class_mask = prototypes.norm(dim=1) > 0
    embeddings = encoder(images)
    if embeddings.dim() != 4:
        raise ValueError(
            f"pseudo_label needs dense embeddings [B, D, h, w], the encoder gave {tuple(embeddings.shape)}"
        )
    labels, confidence = pseudo_labels_from_embeddings(embeddings, prototypes, class_mask, threshold, tau)
    size = tuple(images.shape[-2:])
    return resize_labels(labels, size), resize_labels(confidence, size)
