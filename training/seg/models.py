"""Segmentation models for downstream fine-tuning: a timm backbone at output stride 8 plus an MMSeg-style head.

``SegmentationModel`` = ``backbone`` (timm ``features_only`` net, dilated to output stride 8, returning C4 and C5)
+ ``decode_head`` (DeepLabV3 ASPP or FCN on C5) + optional ``auxiliary_head`` (FCN on C4). Its state dict is
``backbone.<timm keys>``, ``decode_head.*``, ``auxiliary_head.*`` (docs/ARCHITECTURE.md, fine-tuning checkpoint).

The heads follow MMSegmentation's R-50-D8 configs: ASPP with 512 channels and dilations (1, 12, 24, 36) plus image
pooling; FCN with two 3x3 convs and the input concatenated; auxiliary FCN with 256 channels and one conv; dropout
0.1 before the 1x1 classifier; logits upsampled bilinearly (align_corners=False) to the input size.

Backbone weights come from ``load_backbone_weights(init, ...)``: "scratch", a timm name ("resnet50.a1_in1k",
"hf-hub:ORG/NAME", "local-dir:/path"), an MDP export folder, or a checkpoint file. Whatever the source, the
weights are loaded with ``strict=True``, so a state dict of the wrong architecture is an error, never a partial load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

import mdp_hub  # noqa: F401  (registers the mdp_* architectures with timm so exports naming them resolve)
from mdp_hub import checkpoint_io
from mdp_hub.integrity import CONFIG_FILENAME, verify_checksum
from training.config import ConfigError

HEADS = ("deeplabv3", "fcn")


@dataclass
class SegModelConfig:
    """The downstream model. ``arch`` is the timm architecture used when ``init`` does not name one ("scratch" or
    a plain state-dict file); for other inits it is taken from the source and must agree if both are given."""

    arch: str | None = None
    head: str = "deeplabv3"
    output_stride: int = 8  # 8 (MMSeg's D8 configs, the paper) or 16 (D16: ~2x cheaper, coarser)
    head_channels: int = 512
    aspp_dilations: list[int] = field(default_factory=lambda: [1, 12, 24, 36])
    aux_head: bool = False
    aux_channels: int = 256
    aux_weight: float = 0.4
    dropout: float = 0.1


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=dilation * (kernel_size // 2),
                dilation=dilation,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ASPPHead(nn.Module):
    """DeepLabV3 head: image pooling + one branch per dilation, concatenated, fused by a 3x3 conv.

    Input ``[B, in_channels, h, w]`` -> logits ``[B, num_classes, h, w]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        dilations: tuple[int, ...] = (1, 12, 24, 36),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels, 1))
        self.branches = nn.ModuleList(
            ConvBNReLU(in_channels, channels, 1 if d == 1 else 3, dilation=d) for d in dilations
        )
        self.bottleneck = ConvBNReLU((len(dilations) + 1) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([pooled] + [branch(x) for branch in self.branches], dim=1)
        return self.classifier(self.dropout(self.bottleneck(x)))


class FCNHead(nn.Module):
    """FCN head: ``num_convs`` 3x3 convs, optionally fused with the input (``concat_input``), then a 1x1 classifier.

    Input ``[B, in_channels, h, w]`` -> logits ``[B, num_classes, h, w]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        num_convs: int = 2,
        concat_input: bool = True,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.convs = nn.Sequential(
            *[ConvBNReLU(in_channels if i == 0 else channels, channels, 3) for i in range(num_convs)]
        )
        self.conv_cat = ConvBNReLU(in_channels + channels, channels, 3) if concat_input else None
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.classifier(self.dropout(out))


class SegmentationModel(nn.Module):
    """Backbone + decode head (+ auxiliary head).

    ``forward(image [B, 3, H, W])`` returns ``{"out": [B, K, H, W]}`` and, with an auxiliary head in training
    mode, ``"aux": [B, K, H, W]``; logits are upsampled to the input size.
    """

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, auxiliary_head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        c4, c5 = self.backbone(image)
        size = image.shape[-2:]
        out = {"out": F.interpolate(self.decode_head(c5), size=size, mode="bilinear", align_corners=False)}
        if self.auxiliary_head is not None and self.training:
            out["aux"] = F.interpolate(self.auxiliary_head(c4), size=size, mode="bilinear", align_corners=False)
        return out


def create_backbone(arch: str, output_stride: int = 8) -> nn.Module:
    """timm ``features_only`` backbone of ``arch`` at ``output_stride`` (dilated), returning its last two stages
    (C4, C5)."""
    if output_stride not in (8, 16):
        raise ValueError(f"model.output_stride must be 8 or 16, got {output_stride!r}")
    return timm.create_model(
        arch, pretrained=False, features_only=True, output_stride=output_stride, out_indices=(-2, -1)
    )


def build_segmentation_model(config: SegModelConfig, num_classes: int, arch: str) -> SegmentationModel:
    if config.head not in HEADS:
        raise ValueError(f"model.head={config.head!r} is not one of {HEADS}")
    backbone = create_backbone(arch, config.output_stride)
    c4_channels, c5_channels = backbone.feature_info.channels()
    if config.head == "deeplabv3":
        decode_head = ASPPHead(
            c5_channels, num_classes, config.head_channels, tuple(config.aspp_dilations), config.dropout
        )
    else:
        decode_head = FCNHead(
            c5_channels, num_classes, config.head_channels, num_convs=2, concat_input=True, dropout=config.dropout
        )
    auxiliary_head = None
    if config.aux_head:
        auxiliary_head = FCNHead(
            c4_channels, num_classes, config.aux_channels, num_convs=1, concat_input=False, dropout=config.dropout
        )
    return SegmentationModel(backbone, decode_head, auxiliary_head)


def _classifier_prefixes(arch: str) -> tuple[str, ...]:
    """Key prefixes of the classification head of ``arch`` (e.g. ``("fc.",)``), dropped from full state dicts."""
    names = timm.models.get_pretrained_cfg_value(arch, "classifier") or "fc"
    if isinstance(names, str):
        names = (names,)
    return tuple(f"{name}." for name in names)


def _timm_source_weights(name: str) -> tuple[str, dict[str, torch.Tensor]]:
    """Weights of a timm model name (``resnet50.a1_in1k``, ``hf-hub:...``, ``local-dir:...``), via timm's own
    resolution. timm loads them strictly into a model with the source's own classifier, then we drop it."""
    try:
        source = timm.create_model(name, pretrained=True)
    except RuntimeError as error:
        raise RuntimeError(f"init={name!r}: timm could not load these weights: {error}") from error
    arch = source.pretrained_cfg.get("architecture") or name.split(".")[0]
    source.reset_classifier(0)
    return arch, source.state_dict()


def _file_weights(path: Path) -> tuple[str | None, dict[str, torch.Tensor]]:
    """``(arch or None, backbone state dict)`` of a training checkpoint (cut at its ``backbone_prefix``) or a
    plain state dict file (``.safetensors`` / ``.pth``, read with ``weights_only=True``)."""
    content = checkpoint_io.load_file(path)
    state_dict, declared_prefix = checkpoint_io.unwrap_state_dict(content, source=path)
    backbone, _ = checkpoint_io.select_backbone(state_dict, prefix=declared_prefix, source=path)
    arch = content.get("arch") if checkpoint_io.is_training_checkpoint(content) else None
    return arch, backbone


def _export_folder_weights(folder: Path) -> tuple[str, dict[str, torch.Tensor]]:
    config_path = folder / CONFIG_FILENAME
    if not config_path.is_file():
        raise FileNotFoundError(f"init={str(folder)!r}: an MDP export folder needs config.json, not found")
    arch = json.loads(config_path.read_text()).get("architecture")
    if not arch:
        raise ValueError(f"{config_path}: no 'architecture' entry")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"init={str(folder)!r}: an MDP export folder needs model.safetensors, not found")
    verify_checksum(weights)
    _, state_dict = _file_weights(weights)
    return arch, state_dict


def resolve_init(init: str, arch: str | None) -> tuple[str, dict[str, torch.Tensor] | None]:
    """Turn an ``init`` string into ``(arch, headless backbone state dict or None for scratch)``.

    * ``"scratch"``: random init; ``arch`` is required (default "resnet50" is the caller's choice).
    * an existing directory: an MDP export folder (``config.json`` + ``model.safetensors``).
    * an existing file: a training checkpoint (pretrain or fine-tune; the backbone is cut out at its
      ``backbone_prefix``) or a plain backbone state dict (``.safetensors``/``.pth``; needs ``arch``).
    * anything else: a timm model name, including ``hf-hub:`` and ``local-dir:`` sources.
    """
    if init == "scratch":
        if not arch:
            raise ConfigError("init='scratch' needs model.arch (a timm architecture name)")
        return arch, None
    path = Path(init).expanduser()
    if path.is_dir():
        source_arch, state_dict = _export_folder_weights(path)
    elif path.is_file():
        source_arch, state_dict = _file_weights(path)
        source_arch = source_arch or arch
        if not source_arch:
            raise ConfigError(f"init={init!r} is a plain state dict without an architecture: set model.arch")
    elif os.sep in init and not init.startswith(("hf-hub:", "local-dir:")) or init.endswith((".pth", ".safetensors")):
        raise FileNotFoundError(f"init={init!r}: no such file or directory")
    else:
        source_arch, state_dict = _timm_source_weights(init)
    if arch and arch != source_arch:
        raise ConfigError(
            f"model.arch={arch!r} disagrees with init={init!r}, whose architecture is {source_arch!r}: "
            f"drop --set model.arch or set it to {source_arch!r}"
        )
    prefixes = _classifier_prefixes(source_arch)
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
    return source_arch, state_dict


def load_backbone_weights(model: SegmentationModel, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load a headless timm state dict into ``model.backbone`` strictly; a mismatch is a ``CheckpointError``
    naming the source and the missing / unexpected / wrongly shaped tensors."""
    checkpoint_io.verify_state_dict(state_dict, model.backbone, source=f"init={source!r}")
    model.backbone.load_state_dict(state_dict, strict=True)


def create_segmentation_model(
    config: SegModelConfig, num_classes: int, init: str = "scratch"
) -> tuple[SegmentationModel, str]:
    """Build the model and initialise its backbone from ``init``; returns ``(model, arch)``."""
    arch, state_dict = resolve_init(init, config.arch or ("resnet50" if init == "scratch" else None))
    model = build_segmentation_model(config, num_classes, arch)
    if state_dict is not None:
        load_backbone_weights(model, state_dict, init)
    return model, arch
