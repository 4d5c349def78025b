"""The concatenated label space of several datasets: global id = dataset offset + local id.

Local label files keep 255 as "ignore"; every label tensor the data layer hands to a trainer uses
``IGNORE_INDEX = -1`` instead, because the paper's union (21 + 150 + 171 = 342 classes) passes 255.

An optional unification map (the paper's ablation) merges classes by name, e.g.
``{"ade20k/person": "voc_aug/person"}``: the merged class disappears and its pixels get the target's id.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from mdp_hub.label_space import unified_ids

IGNORE_INDEX = -1
LOCAL_IGNORE = 255
LABEL_SPACE_FORMAT = "mdp-hub/label-space"
LABEL_SPACE_VERSION = 1


@dataclass(frozen=True)
class DatasetLabels:
    """One dataset's classes inside the concatenated space."""

    name: str
    class_names: tuple[str, ...]
    offset: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class LabelSpace:
    """Registry mapping (dataset, local id) to global ids, with names ``"<dataset>/<class>"``."""

    def __init__(self, datasets: Sequence[tuple[str, Sequence[str]]], unify_map: Mapping[str, str] | None = None):
        if not datasets:
            raise ValueError("LabelSpace needs at least one dataset")
        entries, offset = [], 0
        for name, class_names in datasets:
            if any(entry.name == name for entry in entries):
                raise ValueError(f"dataset name {name!r} appears twice in the label space; names must be unique")
            if "/" in name:
                raise ValueError(f"dataset name {name!r} must not contain '/'")
            if not class_names:
                raise ValueError(f"dataset {name!r} has no classes")
            if len(class_names) > LOCAL_IGNORE:
                raise ValueError(f"dataset {name!r} has {len(class_names)} classes; local ids must stay below 255")
            entries.append(DatasetLabels(name, tuple(str(c) for c in class_names), offset))
            offset += len(class_names)
        self.datasets: tuple[DatasetLabels, ...] = tuple(entries)
        self.concat_class_names: tuple[str, ...] = tuple(
            f"{entry.name}/{cls}" for entry in entries for cls in entry.class_names
        )
        self.unify_map: dict[str, str] = dict(unify_map or {})
        self._concat_to_global = self._build_unification(self.unify_map)
        self.num_classes = int(self._concat_to_global.max()) + 1
        names = [""] * self.num_classes
        for concat_id, global_id in enumerate(self._concat_to_global.tolist()):
            names[global_id] = names[global_id] or self.concat_class_names[concat_id]
        self.class_names: tuple[str, ...] = tuple(names)

    def _build_unification(self, unify_map: Mapping[str, str]) -> torch.Tensor:
        """Concatenated id -> global id (identity without a map), int64 ``[sum of K_d]``."""
        return torch.tensor(unified_ids(self.concat_class_names, unify_map), dtype=torch.int64)

    # ---- lookups -------------------------------------------------------------------------------------------
    @property
    def dataset_names(self) -> tuple[str, ...]:
        return tuple(entry.name for entry in self.datasets)

    @property
    def is_unified(self) -> bool:
        return bool(self.unify_map)

    def dataset_index(self, name_or_id: str | int) -> int:
        if isinstance(name_or_id, int):
            if not 0 <= name_or_id < len(self.datasets):
                raise IndexError(f"dataset id {name_or_id} out of range 0..{len(self.datasets) - 1}")
            return name_or_id
        for i, entry in enumerate(self.datasets):
            if entry.name == name_or_id:
                return i
        raise KeyError(f"no dataset {name_or_id!r} in the label space ({', '.join(self.dataset_names)})")

    def dataset_slice(self, name_or_id: str | int) -> slice:
        """Global ids of one dataset as a slice (concatenated space only: merged classes break contiguity)."""
        if self.is_unified:
            raise ValueError("dataset_slice is undefined with a unification map; use dataset_class_ids()")
        entry = self.datasets[self.dataset_index(name_or_id)]
        return slice(entry.offset, entry.offset + entry.num_classes)

    def dataset_class_ids(self, name_or_id: str | int) -> torch.Tensor:
        """Global id of each local class of one dataset, int64 ``[K_d]`` (works with and without unification)."""
        entry = self.datasets[self.dataset_index(name_or_id)]
        return self._concat_to_global[entry.offset : entry.offset + entry.num_classes].clone()

    def to_global(self, dataset_id: int | torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """Local ids (255 or -1 = ignore) -> global ids (-1 = ignore).

        ``local``: integer tensor of any shape ``[...]``; ``dataset_id``: int, or int64 tensor broadcastable to
        ``local`` (e.g. ``[B, 1, 1]`` for a batch of masks). Returns int64 with the shape of ``local``.
        """
        offsets = torch.tensor([entry.offset for entry in self.datasets], dtype=torch.int64, device=local.device)
        lut = self._concat_to_global.to(local.device)
        local = local.long()
        ignore = (local == LOCAL_IGNORE) | (local == IGNORE_INDEX)
        concat = offsets[torch.as_tensor(dataset_id, device=local.device)] + local.clamp(min=0)
        concat = torch.where(ignore, torch.zeros_like(concat), concat)
        return torch.where(ignore, torch.full_like(concat, IGNORE_INDEX), lut[concat])

    def global_lookup_table(self, name_or_id: str | int) -> torch.Tensor:
        """Local uint8 value -> global id with ``255 -> -1``, int64 ``[256]`` (index it with a uint8 mask)."""
        table = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
        class_ids = self.dataset_class_ids(name_or_id)
        table[: class_ids.numel()] = class_ids
        return table

    # ---- (de)serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe description, stored in every checkpoint and export."""
        return {
            "format": LABEL_SPACE_FORMAT,
            "format_version": LABEL_SPACE_VERSION,
            "ignore_index": IGNORE_INDEX,
            "num_classes": self.num_classes,
            "datasets": [
                {"name": e.name, "offset": e.offset, "class_names": list(e.class_names)} for e in self.datasets
            ],
            "unify_map": dict(self.unify_map),
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "LabelSpace":
        if data.get("format") != LABEL_SPACE_FORMAT:
            raise ValueError(f"not a label space: format is {data.get('format')!r}, expected {LABEL_SPACE_FORMAT!r}")
        if data.get("format_version") != LABEL_SPACE_VERSION:
            raise ValueError(f"unsupported label space format_version {data.get('format_version')!r}")
        space = cls([(d["name"], d["class_names"]) for d in data["datasets"]], unify_map=data.get("unify_map"))
        offsets = [d["offset"] for d in data["datasets"]]
        if offsets != [e.offset for e in space.datasets] or data.get("num_classes") != space.num_classes:
            raise ValueError("label space dict is inconsistent: offsets or num_classes do not match the class lists")
        return space

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LabelSpace":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: cannot read label space JSON ({error})") from error
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSpace) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        parts = ", ".join(f"{e.name}[{e.offset}:{e.offset + e.num_classes}]" for e in self.datasets)
        return f"LabelSpace({parts}, num_classes={self.num_classes})"


def lookup_per_sample(tables: torch.Tensor, dataset_id: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Map a batch of uint8 masks through each sample's own table, in one gather on the masks' device.

    ``tables``: int64 ``[D, 256]`` (e.g. ``global_lookup_table`` of every dataset, ``255 -> -1``); ``dataset_id``:
    int64 ``[B]``; ``masks``: uint8 ``[B, H, W]`` local ids. Returns int64 ``[B, H, W]``.
    """
    index = dataset_id.view(-1, 1, 1) * tables.shape[1] + masks.long()
    return tables.reshape(-1)[index]


def load_unify_map(path: str | os.PathLike) -> dict[str, str]:
    """Read a unification file: a JSON object ``{"<dataset>/<class>": "<dataset>/<class>", ...}``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read unification map ({error})") from error
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"{path}: a unification map must be a JSON object of class name -> class name strings")
    return data
