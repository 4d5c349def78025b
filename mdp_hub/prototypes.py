"""The MDP class prototypes and dense projection head that an export may carry next to the backbone.

``mdp_prototypes.safetensors`` holds ``prototypes`` ``[C, D]`` (one L2-normalised embedding per class of
the pretraining label space) and the projection head as ``head.<name>``; the global class names and the
label space live in ``config.json`` under ``"mdp"``. ``model.safetensors`` is never affected.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

from .checkpoint_io import load_file, split_prefix
from .errors import CheckpointError, PrototypesNotFoundError
from .integrity import CONFIG_FILENAME, verify_checksum, verify_config
from .label_space import dataset_class_ids

PROTOTYPES_FILENAME = "mdp_prototypes.safetensors"
PROTOTYPES_KEY = "memory.prototypes"
DATASET_MEANS_KEY, CLASS_DATASET_KEY = "dataset_means", "class_dataset"  # MDP's dataset_centring buffers
CLASS_OFFSETS = "class_offsets"  # [C, D] in the prototypes file: each class's dataset mean embedding
COUNTS_KEY = "memory.counts"
ANCHOR_SHARE_KEY = "memory.anchor_share"
HEAD_PREFIX = "encoder.head."


def centred_prototype_logits(
    embeddings: torch.Tensor, prototypes: torch.Tensor, class_offsets: torch.Tensor, tau: float
) -> torch.Tensor:
    """Prototype logits with each class's dataset mean taken out of the pixel first: [P, D] x [C, D] -> [P, C].

    logit_pc = cos(e_p - m_c, mu_c) / tau, with e_p the unit embedding, mu_c the unit prototype and m_c =
    ``class_offsets[c]`` the running mean embedding of class c's dataset. Written as
    (e.mu - m.mu) / |e - m| with |e - m|^2 = 1 - 2 e.m + |m|^2: two [P, C] products, no [P, C, D] tensor.
    With zero offsets it is ``prototype_logits``. Float32, autocast off.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        e, mu, m = embeddings.float(), prototypes.float(), class_offsets.float()
        numerator = e @ mu.t() - (m * mu).sum(1)[None, :]
        squared_norm = 1.0 - 2.0 * (e @ m.t()) + m.square().sum(1)[None, :]
        return numerator / squared_norm.clamp(min=1e-12).sqrt() / tau


def extract_prototypes(
    state_dict: Mapping[str, torch.Tensor], label_space: Mapping[str, Any] | None, *, source: str | os.PathLike
) -> dict[str, torch.Tensor] | None:
    """Tensors for ``mdp_prototypes.safetensors`` from a pretraining state dict, or None if it has none.

    Returns ``{"prototypes": [C, D], "head.<name>": ...}``; ``C`` must equal the label space's class count.
    Classes that never received a region (``memory.counts`` 0) are written as zero rows, so a starting anchor
    is never shipped as if it were a class prototype.
    """
    head, _ = split_prefix(state_dict, HEAD_PREFIX)
    if PROTOTYPES_KEY not in state_dict or not head:
        return None
    prototypes = state_dict[PROTOTYPES_KEY]
    if prototypes.ndim != 2:
        raise CheckpointError(f"{source}: {PROTOTYPES_KEY} must be [C, D], found shape {list(prototypes.shape)}")
    class_names = class_names_of(label_space, source=source)
    if len(class_names) != prototypes.shape[0]:
        raise CheckpointError(
            f"{source}: {PROTOTYPES_KEY} has {prototypes.shape[0]} rows but the label space has "
            f"{len(class_names)} classes"
        )
    if COUNTS_KEY in state_dict:
        prototypes = prototypes * (state_dict[COUNTS_KEY] > 0).to(prototypes.dtype)[:, None]
    tensors = {"prototypes": prototypes}
    if CLASS_DATASET_KEY in state_dict and DATASET_MEANS_KEY in state_dict:  # MDP's dataset_centring
        tensors[CLASS_OFFSETS] = state_dict[DATASET_MEANS_KEY][state_dict[CLASS_DATASET_KEY]]
    tensors.update({f"head.{name}": value for name, value in head.items()})
    return tensors


def prototype_regime(
    state_dict: Mapping[str, torch.Tensor], label_space: Mapping[str, Any] | None, most: int = 5
) -> dict[str, Any] | None:
    """How far the prototypes moved from their random starting anchors towards pure class means.

    ``memory.anchor_share`` [C] is the weight left to each prototype's anchor (1 = untouched anchor, 0 = pure
    class mean). Returns ``{"median_anchor_share": {dataset: share}, "max_anchor_share": {dataset: share},
    "most_anchored": [[global class name, share], ...]}`` over the classes that received regions, largest
    share first; None for a state dict without a class memory or label space.
    """
    if ANCHOR_SHARE_KEY not in state_dict or COUNTS_KEY not in state_dict or not isinstance(label_space, Mapping):
        return None
    share, seen = state_dict[ANCHOR_SHARE_KEY].float().cpu(), state_dict[COUNTS_KEY].cpu() > 0
    names = class_names_of(label_space, source="label space")
    median, maximum = {}, {}
    for entry in label_space.get("datasets", []):
        ids = torch.as_tensor(dataset_class_ids(label_space, entry["name"]), dtype=torch.long)
        ids = ids[seen[ids]]
        if ids.numel():
            median[entry["name"]] = round(float(share[ids].median()), 4)
            maximum[entry["name"]] = round(float(share[ids].max()), 4)
    seen_ids = torch.nonzero(seen).flatten()
    order = seen_ids[torch.argsort(share[seen_ids], descending=True, stable=True)][:most]
    return {
        "median_anchor_share": median,
        "max_anchor_share": maximum,
        "most_anchored": [[names[i], round(float(share[i]), 4)] for i in order.tolist()],
    }


def class_names_of(label_space: Mapping[str, Any] | None, *, source: str | os.PathLike) -> list[str]:
    """Global class names (``"<dataset>/<class>"``) of a ``LabelSpace.to_dict()`` dict."""
    if not isinstance(label_space, Mapping) or not isinstance(label_space.get("class_names"), list):
        raise CheckpointError(f"{source}: has prototypes but no label space with 'class_names' to name their rows")
    return list(label_space["class_names"])


def _prototype_files(
    folder_or_repo: str | os.PathLike, revision: str | None, cache_dir: str | os.PathLike | None
) -> tuple[Path, Path]:
    """(config.json, mdp_prototypes.safetensors) of an export folder or Hub repo (downloaded into the cache)."""
    folder = Path(folder_or_repo)
    if folder.is_dir():
        config_path, weights_path = folder / CONFIG_FILENAME, folder / PROTOTYPES_FILENAME
        where = str(folder)
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder}: not an mdp-hub export (no {CONFIG_FILENAME})")
        weights_path = weights_path if weights_path.is_file() else None
    else:
        where = f"Hugging Face Hub repo {folder_or_repo}"
        repo = str(folder_or_repo)
        config_path = hf_hub_download(repo, CONFIG_FILENAME, revision=revision, cache_dir=cache_dir)
        try:
            weights_path = hf_hub_download(repo, PROTOTYPES_FILENAME, revision=revision, cache_dir=cache_dir)
        except EntryNotFoundError:
            weights_path = None
    if weights_path is None:
        raise PrototypesNotFoundError(
            f"{where}: backbone-only export without {PROTOTYPES_FILENAME} (its checkpoint had no "
            f"{PROTOTYPES_KEY} / {HEAD_PREFIX}* entries when exported)"
        )
    return Path(config_path), Path(weights_path)


def load_prototypes(
    folder_or_repo: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    with_offsets: bool = False,
) -> tuple:
    """Read the prototypes of an export folder or Hub repo (``ORG/NAME``, cached or downloaded).

    Returns ``(head_state_dict, prototypes [C, D], class_names [C], label_space dict)``, and with
    ``with_offsets=True`` a fifth item: the class offsets ``[C, D]`` of a run trained with dataset centring
    (compare pixels with ``centred_prototype_logits``), or None. Centred prototypes without
    ``with_offsets=True`` raise ``CheckpointError``: plain cosines to them would be wrong. An export made
    from a checkpoint without prototypes raises ``PrototypesNotFoundError``.
    """
    config_path, weights_path = _prototype_files(folder_or_repo, revision, cache_dir)
    mdp = json.loads(Path(config_path).read_text()).get("mdp") or {}
    label_space = mdp.get("label_space")
    class_names = class_names_of(label_space, source=config_path)
    verify_checksum(weights_path)  # against config.json's record (same folder or Hub snapshot)
    verify_config(weights_path, config_path)  # and what config.json says against the file's record
    tensors = load_file(weights_path)
    if "prototypes" not in tensors:
        raise CheckpointError(f"{weights_path}: no 'prototypes' tensor")
    prototypes = tensors.pop("prototypes")
    if prototypes.shape[0] != len(class_names):
        raise CheckpointError(
            f"{weights_path}: {prototypes.shape[0]} prototypes but {len(class_names)} class names in {config_path}"
        )
    class_offsets = tensors.pop(CLASS_OFFSETS, None)
    if class_offsets is not None and not with_offsets:
        raise CheckpointError(
            f"{weights_path}: its prototypes are dataset-centred (trained with dataset_centring): read them with "
            "load_prototypes(..., with_offsets=True) and score pixels with centred_prototype_logits, or use "
            "PrototypeSegmenter"
        )
    head, others = split_prefix(tensors, "head.")
    if others:
        raise CheckpointError(f"{weights_path}: unexpected tensors {others}")
    if with_offsets:
        return head, prototypes, class_names, dict(label_space), class_offsets
    return head, prototypes, class_names, dict(label_space)
