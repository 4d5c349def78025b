"""The label-space format both halves read: datasets' classes concatenated as ``<dataset>/<class>`` names, with an
optional unification map that merges some of them (``training.data.LabelSpace`` builds it, exports store its
``to_dict()`` in ``config.json``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def unified_ids(concat_names: Sequence[str], unify_map: Mapping[str, str] | None = None) -> list[int]:
    """Concatenated class id -> global class id.

    A class merged into another (``unify_map[source] = target``) takes its target's id; global ids number the
    classes that remain, in concatenation order. Without a map this is the identity. Unknown names and chained
    merges raise ``ValueError``.
    """
    unify_map = dict(unify_map or {})
    index = {name: i for i, name in enumerate(concat_names)}
    target_of = list(range(len(concat_names)))
    for source, target in unify_map.items():
        for label in (source, target):
            if label not in index:
                datasets = ", ".join(dict.fromkeys(name.split("/", 1)[0] for name in concat_names))
                raise ValueError(
                    f"unification map: unknown class {label!r}; expected '<dataset>/<class>' with a dataset "
                    f"of this label space ({datasets})"
                )
        if target in unify_map:
            raise ValueError(f"unification map: {source!r} -> {target!r}, but {target!r} is itself merged away")
        target_of[index[source]] = index[target]
    rank = {concat_id: i for i, concat_id in enumerate(sorted(set(target_of)))}
    return [rank[target] for target in target_of]


def dataset_class_ids(label_space: Mapping[str, Any], dataset: str) -> list[int]:
    """Global id of each local class of ``dataset`` in a ``LabelSpace.to_dict()`` dict, unification included."""
    datasets = label_space["datasets"]
    concat = [f"{entry['name']}/{name}" for entry in datasets for name in entry["class_names"]]
    global_ids = unified_ids(concat, label_space.get("unify_map"))
    offset = 0
    for entry in datasets:
        if entry["name"] == dataset:
            return global_ids[offset : offset + len(entry["class_names"])]
        offset += len(entry["class_names"])
    raise KeyError(f"dataset {dataset!r} is not in the label space ({', '.join(d['name'] for d in datasets)})")
