"""Safe reading of weights: ``.safetensors``, ``.pth`` (``weights_only=True`` only) and training checkpoints.

Used by the exporter, the timm loading path and the training side (init weights). Every failure
names the file and what is wrong; nothing is loaded partially.

    >>> backbone = read_backbone_state_dict("runs/demo/last.pth")   # {timm key: tensor}
    >>> load_into(timm.create_model("resnet50", num_classes=0), "model.safetensors")
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as _load_safetensors

from .errors import CheckpointError

TRAIN_CHECKPOINT_FORMAT = "mdp-hub/train-checkpoint"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pth.tar")
SAFETENSORS_SUFFIX = ".safetensors"

# Added by nn.DataParallel / DistributedDataParallel and torch.compile around any module.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Where a backbone sits in the state dicts this project (and common trainers) write, most specific first.
BACKBONE_PREFIXES = ("encoder.backbone.", "backbone.", "encoder.")
# Container keys holding the state dict in checkpoints of timm, MMEngine, Lightning-style trainers.
STATE_DICT_KEYS = ("state_dict", "model")

_MAX_LISTED = 6
# torch.save writes a zip archive; files of torch < 1.6 are a pickle (protocol 2+ starts with 0x80)
TORCH_MAGICS = (b"PK\x03\x04", b"\x80")


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.safetensors`` or PyTorch file safely; returns its top-level dict.

    ``.pth``-like files are read with ``torch.load(weights_only=True)``: a pickle that would run code
    or build arbitrary objects is refused with a ``CheckpointError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    name = path.name.lower()
    if name.endswith(SAFETENSORS_SUFFIX):
        try:
            return _load_safetensors(str(path), device="cpu")
        except SafetensorError as err:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from None
    if not name.endswith(TORCH_SUFFIXES):
        raise CheckpointError(
            f"{path}: unsupported weights file type; expected {SAFETENSORS_SUFFIX} or one of "
            f"{', '.join(TORCH_SUFFIXES)}"
        )
    problem = not_a_torch_file(path)
    if problem:
        raise CheckpointError(f"{path}: {problem}; give a .pth/.pt checkpoint or a .safetensors file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([^\s]+)", str(err))
        what = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused to unpickle: the file contains Python objects or code beyond tensors and plain "
            f"containers{what}; only torch.load(weights_only=True) is allowed, re-save it as a plain tensor dict "
            f"or .safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {err}") from None
    if not isinstance(content, dict):
        raise CheckpointError(
            f"{path}: expected a dict of tensors or a checkpoint dict, found {type(content).__name__}"
        )
    return content


def not_a_torch_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a ``torch.save`` file (its first bytes), or None; saves the misleading errors
    ``torch.load`` gives for, say, a text file ("refused to unpickle", "pop from empty list")."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(TORCH_MAGICS):
        return None
    return f"not a PyTorch weights file (it starts with {head!r}, neither a zip archive nor a pickle)"


def is_training_checkpoint(content: Mapping[str, Any]) -> bool:
    """Whether ``content`` is a checkpoint written by this project's trainer (docs/ARCHITECTURE.md)."""
    return content.get("format") == TRAIN_CHECKPOINT_FORMAT


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` / ``_orig_mod.`` wrappers (DDP, torch.compile) leading a key, and ``_orig_mod.``
    anywhere (a compiled submodule, e.g. ``encoder.backbone._orig_mod.conv1.weight``)."""
    cleaned = {}
    for key, value in state_dict.items():
        name = key.replace("._orig_mod.", ".")
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if name in cleaned:
            raise CheckpointError(f"two entries map to {name!r} after removing wrapper prefixes (one is {key!r})")
        cleaned[name] = value
    return cleaned


def split_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Entries under ``prefix`` with the prefix removed, and the names of all other entries."""
    inside = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    outside = [key for key in state_dict if not key.startswith(prefix)]
    return inside, outside


def unwrap_state_dict(
    content: Mapping[str, Any], *, source: str | os.PathLike
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The flat tensor dict inside a file's content and the backbone prefix the file declares.

    Training checkpoints declare ``backbone_prefix``; other checkpoints may nest the state dict under
    ``state_dict`` or ``model``. Every value must be a tensor.
    """
    declared_prefix = None
    state_dict: Any = content
    if is_training_checkpoint(content):
        missing = [key for key in ("model", "backbone_prefix") if key not in content]
        if missing:
            raise CheckpointError(f"{source}: training checkpoint without {', '.join(missing)}")
        state_dict, declared_prefix = content["model"], content["backbone_prefix"]
    else:
        for key in STATE_DICT_KEYS:
            if isinstance(content.get(key), Mapping):
                state_dict = content[key]
                break
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError(f"{source}: contains no state dict (empty or not a dict)")
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{source}: expected only tensors in the state dict, found other values at {_listing(not_tensors)}"
        )
    return strip_wrapper_prefixes(state_dict), declared_prefix


def select_backbone(
    state_dict: Mapping[str, torch.Tensor], *, prefix: str | None = None, source: str | os.PathLike = "state dict"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The backbone part of ``state_dict`` (prefix stripped) and the names of the entries left out.

    With ``prefix=None`` the first known prefix (``encoder.backbone.``, ``backbone.``, ``encoder.``) that
    leads any key is used; a dict with none of them is taken whole.
    """
    if prefix is None:
        prefix = next((p for p in BACKBONE_PREFIXES if any(key.startswith(p) for key in state_dict)), "")
    if not prefix:
        return dict(state_dict), []
    backbone, rest = split_prefix(state_dict, prefix)
    if not backbone:
        raise CheckpointError(f"{source}: no tensors under the backbone prefix {prefix!r}")
    return backbone, rest


def read_backbone_state_dict(path: str | os.PathLike, *, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The backbone tensors (timm keys) stored in a training checkpoint or a state dict file."""
    content = load_file(path)
    state_dict, declared = unwrap_state_dict(content, source=path)
    backbone, _ = select_backbone(state_dict, prefix=prefix if prefix is not None else declared, source=path)
    return backbone


def state_dict_mismatch(
    state_dict: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    *,
    allow_missing: Iterable[str] = (),
    ignore_shape: Iterable[str] = (),
) -> str:
    """Human-readable differences between two state dicts' names and shapes; empty when they match."""
    allowed, shape_free = set(allow_missing), set(ignore_shape)
    missing = [key for key in reference if key not in state_dict and key not in allowed]
    unexpected = [key for key in state_dict if key not in reference]
    wrong_shape = [
        f"{key} {list(state_dict[key].shape)} vs {list(reference[key].shape)}"
        for key in reference
        if key in state_dict and key not in shape_free and state_dict[key].shape != reference[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatch(es) (file vs model): {_listing(wrong_shape)}")
    return "; ".join(problems)


def verify_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: torch.nn.Module,
    *,
    source: str | os.PathLike,
    allow_missing: Iterable[str] = (),
) -> None:
    """Raise ``CheckpointError`` naming ``source`` unless ``state_dict`` fits ``model`` exactly."""
    problems = state_dict_mismatch(state_dict, model.state_dict(), allow_missing=allow_missing)
    if problems:
        raise CheckpointError(f"{source}: weights do not fit {type(model).__name__}: {problems}")


def match_architecture(
    state_dict: Mapping[str, torch.Tensor], candidates: Iterable[str], *, source: str | os.PathLike
) -> str:
    """The one timm architecture among ``candidates`` (headless) whose tensors ``state_dict`` matches exactly."""
    mismatches = {}
    for candidate in candidates:
        with torch.device("meta"):  # shapes only, no memory or init cost
            reference = timm.create_model(candidate, num_classes=0).state_dict()
        mismatches[candidate] = state_dict_mismatch(state_dict, reference)
        if not mismatches[candidate]:
            return candidate
    closest = min(mismatches, key=lambda name: len(mismatches[name]))
    raise CheckpointError(
        f"{source}: the tensors match none of the supported architectures ({', '.join(mismatches)}); "
        f"closest is {closest}: {mismatches[closest]}"
    )


def load_into(model: torch.nn.Module, path: str | os.PathLike, *, prefix: str | None = None) -> torch.nn.Module:
    """Load the backbone weights of ``path`` into ``model`` strictly (every tensor, right shapes)."""
    state_dict = read_backbone_state_dict(path, prefix=prefix)
    verify_state_dict(state_dict, model, source=path)
    model.load_state_dict(state_dict, strict=True)
    return model


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")
