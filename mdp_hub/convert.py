"""Backbone weights in the formats of other frameworks: torchvision, MMSegmentation, detectron2.

* ``torchvision``: ``.pth`` with a plain tensor dict, timm = torchvision key names (no ``fc``), for
  ``torchvision.models.resnet50().load_state_dict(sd, strict=False)`` (only ``fc.*`` missing) or
  ``deeplabv3_resnet50(...).backbone.load_state_dict(sd)``.
* ``mmseg``: ``.pth`` with a plain tensor dict in MMSegmentation's plain ``ResNet`` names (same as
  torchvision's; *not* ``ResNetV1c``, whose deep stem has different tensors), for
  ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
* ``detectron2``: ``.pkl`` ``{"model": {name: ndarray}, "__author__", "matching_heuristics": True}`` with
  detectron2's ResNet names (``stem.conv1``, ``res2..res5``, ``convK.norm``, ``shortcut``).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from . import catalog
from .checkpoint_io import match_architecture, read_backbone_state_dict
from .integrity import WEIGHTS_FILENAME, verify_checksum

FORMATS = ("torchvision", "mmseg", "detectron2")
_LAYER = re.compile(r"^layer(\d)\.(\d+)\.(.+)$")


def to_detectron2_name(name: str) -> str:
    """timm/torchvision ResNet tensor name -> detectron2's (``layer1.0.bn2.weight`` -> ``res2.0.conv2.norm.weight``)."""
    match = _LAYER.match(name)
    if match is None:
        return "stem." + re.sub(r"^bn1\.", "conv1.norm.", name)
    stage, block, rest = match.groups()
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
    rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
    return f"res{int(stage) + 1}.{block}.{rest}"


def to_detectron2(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """detectron2 names and numpy arrays; BN step counters are dropped (detectron2 has no such buffer)."""
    return {to_detectron2_name(k): v.numpy() for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


def convert(src: str | os.PathLike, to: str, out: str | os.PathLike) -> Path:
    """Write the backbone of ``src`` (export folder, weights file or training checkpoint) in format ``to``."""
    if to not in FORMATS:
        raise ValueError(f"unknown format {to!r}; choose one of {', '.join(FORMATS)}")
    src, out = Path(src), Path(out)
    if src.is_dir():
        src = src / WEIGHTS_FILENAME
    verify_checksum(src)
    state_dict = {k: v for k, v in read_backbone_state_dict(src).items() if not k.startswith("fc.")}
    # refuses anything that is not exactly a supported ResNet, before writing a file someone may load non-strictly
    match_architecture(state_dict, catalog.ARCHITECTURES.values(), source=src)
    out.parent.mkdir(parents=True, exist_ok=True)
    if to == "detectron2":
        payload = {"model": to_detectron2(state_dict), "__author__": "mdp-hub", "matching_heuristics": True}
        with out.open("wb") as handle:
            pickle.dump(payload, handle, protocol=4)
    else:
        torch.save({k: v.contiguous() for k, v in state_dict.items()}, out)
    return out
