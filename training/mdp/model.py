"""Encoders of the pretraining methods: a timm backbone, a projection head, and its momentum (EMA) copy.

The backbone is a plain timm model created headless (``num_classes=0, global_pool=''``), so its state dict is
exactly the timm/torchvision layout that ``mdp-hub export`` publishes. Output stride 8/16 is timm's dilation
(``output_stride=``): it changes strides, not weights, so the exported backbone loads into any stride.

Momentum encoder and BN buffers: the momentum encoder always runs its batch norms on the statistics of its own
(clean) batch, as MoCo's key encoder does. Its parameters follow the online encoder by EMA; its buffers (BN
running mean/var and ``num_batches_tracked``) are *copied* from the online encoder at every update, so that
in eval mode (pseudo-labelling, inspection) the two encoders normalise the same way. Running statistics are
already averages, so averaging them a second time would only add lag.
"""

from __future__ import annotations

import copy
import math

import timm
import torch
import torch.nn.functional as F
from torch import nn

from mdp_hub.heads import DenseProjectionHead


def create_backbone(arch: str = "resnet50", output_stride: int = 8, pretrained: bool = False) -> nn.Module:
    """A headless timm backbone whose ``forward_features`` returns ``[B, num_features, H/os, W/os]``."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    return timm.create_model(arch, pretrained=pretrained, num_classes=0, global_pool="", output_stride=output_stride)


class PooledProjectionHead(nn.Module):
    """MoCo-v2 MLP on globally pooled features: ``[B, C_in, h, w] -> [B, D]``."""

    def __init__(self, in_channels: int, hidden_channels: int = 2048, out_channels: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden_channels)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x.mean(dim=(2, 3)))))


class Encoder(nn.Module):
    """Backbone followed by an optional head; with a head the output is L2-normalised over dim 1.

    ``forward(x [B, 3, H, W])`` returns ``[B, D, h, w]`` (dense head), ``[B, D]`` (pooled head), or the raw
    backbone map ``[B, num_features, h, w]`` when ``head`` is None (the cross-entropy baselines).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(x)
        if self.head is None:
            return features
        return F.normalize(self.head(features), dim=1)


def build_encoder(
    arch: str = "resnet50",
    output_stride: int = 8,
    embed_dim: int = 128,
    head: str | None = "dense",
    head_hidden_dim: int | None = None,
    pretrained: bool = False,
    head_output_norm: str = "none",
) -> Encoder:
    """``head``: "dense" (pixel embeddings), "pooled" (MoCo-v2 image embedding) or None (backbone only).

    ``head_hidden_dim`` None = the backbone's width (2048 for ResNet-50).
    """
    backbone = create_backbone(arch, output_stride, pretrained)
    head_hidden_dim = head_hidden_dim or backbone.num_features
    if head == "dense":
        projection = DenseProjectionHead(backbone.num_features, head_hidden_dim, embed_dim, head_output_norm)
    elif head == "pooled":
        projection = PooledProjectionHead(backbone.num_features, head_hidden_dim, embed_dim)
    elif head is None:
        projection = None
    else:
        raise ValueError(f"head must be 'dense', 'pooled' or None, got {head!r}")
    return Encoder(backbone, projection)


def create_momentum_copy(encoder: nn.Module) -> nn.Module:
    """A frozen deep copy of ``encoder`` (same weights, ``requires_grad=False``) to be updated by EMA."""
    momentum_encoder = copy.deepcopy(encoder)
    for param in momentum_encoder.parameters():
        param.requires_grad_(False)
    return momentum_encoder


@torch.no_grad()
def ema_update_(online: nn.Module, momentum: nn.Module, m: float) -> None:
    """theta_m <- m * theta_m + (1 - m) * theta_online for parameters; buffers are copied (see module doc)."""
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m!r}")
    online_params = [p.detach() for p in online.parameters()]
    momentum_params = list(momentum.parameters())
    if len(online_params) != len(momentum_params):
        raise ValueError("online and momentum encoders have different parameter lists")
    torch._foreach_mul_(momentum_params, m)
    torch._foreach_add_(momentum_params, online_params, alpha=1.0 - m)
    online_buffers = list(online.buffers())
    momentum_buffers = list(momentum.buffers())
    if online_buffers:
        torch._foreach_copy_(momentum_buffers, online_buffers)


def momentum_schedule(step: int, total_steps: int, base: float = 0.999, final: float = 1.0) -> float:
    """Cosine ramp of the EMA momentum from ``base`` (step 0) to ``final`` (step >= total_steps).

    A pure function of the global optimizer step, so resuming needs no extra state (as DINO, MoCo v3).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps!r}")
    progress = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
