"""The dense projection head of MDP pretraining: defined once here, trained by ``training`` and rebuilt from an
export by :class:`mdp_hub.PrototypeSegmenter`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .checkpoint_io import state_dict_mismatch
from .errors import CheckpointError


class DenseProjectionHead(nn.Module):
    """1x1 conv -> BN -> ReLU -> 1x1 conv, applied at every position: ``[B, C_in, h, w] -> [B, D, h, w]``.

    At output stride 8 a wide hidden layer is expensive (2048->2048 costs ~20% of a ResNet-50 forward at
    512^2), hence the narrow default; the head is discarded after pretraining.
    """

    def __init__(self, in_channels: int, hidden_channels: int = 512, out_channels: int = 128):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden_channels)
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Conv2d(hidden_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.bn(self.proj(x))))


def load_dense_projection_head(
    state_dict: Mapping[str, torch.Tensor], in_channels: int, *, source: str
) -> DenseProjectionHead:
    """A :class:`DenseProjectionHead` sized from its tensors (keys ``proj``/``bn``/``out``) and loaded strictly."""
    if "proj.weight" not in state_dict or "out.weight" not in state_dict:
        raise CheckpointError(
            f"{source}: projection head has tensors {sorted(state_dict)}; expected the dense "
            "head's proj.weight, bn.*, out.weight, out.bias"
        )
    hidden, width = state_dict["proj.weight"].shape[:2]
    embed_dim = state_dict["out.weight"].shape[0]
    if width != in_channels:
        raise CheckpointError(f"{source}: projection head takes {width} channels but the backbone gives {in_channels}")
    head = DenseProjectionHead(in_channels, hidden, embed_dim)
    problems = state_dict_mismatch(state_dict, head.state_dict())
    if problems:
        raise CheckpointError(f"{source}: projection head does not fit the dense head layout: {problems}")
    head.load_state_dict(state_dict, strict=True)
    return head
