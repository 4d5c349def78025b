"""The dense projection head of MDP pretraining: defined once here, trained by ``training`` and rebuilt from an
export by :class:`mdp_hub.PrototypeSegmenter`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .checkpoint_io import state_dict_mismatch
from .errors import CheckpointError

OUTPUT_NORMS = ("none", "batchnorm", "whiten")


class BatchWhitening2d(nn.Module):
    """Whitens the channels of ``[B, C, h, w]`` over the pixels of the batch: zero mean, identity covariance.

    Training: Cholesky whitening with the batch's own mean and covariance (W-MSE, Ermolov et al. 2021), whose
    running averages are kept as buffers; eval: the running ones. A per-channel batch norm centres and scales
    each channel; whitening also equalises the variance along directions that mix channels, so no direction
    shared by the pixels of an image or a dataset can dominate the embeddings. The covariance is shrunk towards
    the identity by ``C / pixels``, so that small batches stay well-posed. Computed in float32.
    """

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-3):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_cov", torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            pixels = x.permute(0, 2, 3, 1).reshape(-1, channels).float()
            if self.training:
                mean = pixels.mean(0)
                centred = pixels - mean
                cov = centred.t() @ centred / max(pixels.shape[0] - 1, 1)
                with torch.no_grad():
                    self.running_mean.lerp_(mean.detach(), self.momentum)
                    self.running_cov.lerp_(cov.detach(), self.momentum)
            else:
                centred, cov = pixels - self.running_mean, self.running_cov
            # Shrunk towards a multiple of the identity by channels / pixels (Ledoit and Wolf, 2004): a small
            # batch estimates a covariance poorly, and whitening by it would amplify noise directions.
            shrinkage = min(1.0, channels / max(pixels.shape[0], 1))
            eye = torch.eye(channels, device=x.device)
            regularised = (1.0 - shrinkage) * cov + (shrinkage * cov.diagonal().mean() + self.eps) * eye
            white = torch.linalg.solve_triangular(torch.linalg.cholesky(regularised), centred.t(), upper=False)
        return white.t().to(x.dtype).reshape(batch, height, width, channels).permute(0, 3, 1, 2)


def _output_norm(kind: str, channels: int) -> nn.Module | None:
    if kind == "whiten":
        return BatchWhitening2d(channels)
    if kind == "batchnorm":  # non-affine, as MoCo v3's projector ends
        return nn.BatchNorm2d(channels, affine=False)
    if kind == "none":
        return None
    raise ValueError(f"output_norm must be one of {', '.join(OUTPUT_NORMS)}, got {kind!r}")


class DenseProjectionHead(nn.Module):
    """1x1 conv -> BN -> ReLU -> 1x1 conv [-> output norm], at every position: ``[B, C_in, h, w] -> [B, D, h, w]``.

    At output stride 8 a wide hidden layer is expensive (2048->2048 costs ~20% of a ResNet-50 forward at
    512^2), hence the narrow default; the head is discarded after pretraining. ``output_norm`` ("none",
    "batchnorm" or "whiten") normalises the output over the batch's pixels before the caller's L2
    normalisation; docs/METHOD.md says why MDP whitens.
    """

    def __init__(
        self, in_channels: int, hidden_channels: int = 512, out_channels: int = 128, output_norm: str = "none"
    ):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden_channels)
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Conv2d(hidden_channels, out_channels, 1)
        self.out_norm = _output_norm(output_norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.out(self.act(self.bn(self.proj(x))))
        return out if self.out_norm is None else self.out_norm(out)


def output_norm_of(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The ``output_norm`` a dense head's state dict was saved with (read from its buffers)."""
    if "out_norm.running_cov" in state_dict:
        return "whiten"
    return "batchnorm" if "out_norm.running_mean" in state_dict else "none"


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
    head = DenseProjectionHead(in_channels, hidden, embed_dim, output_norm=output_norm_of(state_dict))
    problems = state_dict_mismatch(state_dict, head.state_dict())
    if problems:
        raise CheckpointError(f"{source}: projection head does not fit the dense head layout: {problems}")
    head.load_state_dict(state_dict, strict=True)
    return head
