"""Checksums of the files an export ships, recorded at export and checked wherever mdp_hub reads them.

``config.json`` (the export's manifest) records, under ``"mdp"``, the sha256 of ``model.safetensors``
(``weights_sha256``, and ``files``) and of ``mdp_prototypes.safetensors`` (``files``). In turn
``mdp_prototypes.safetensors`` records in its metadata the sha256 of everything else ``config.json`` says (label
space with every dataset's class names, recipe, metrics, normalisation, run), so the two files vouch for each
other. A change to any single file (one weight, one prototype row, one class name of one dataset) is therefore
refused on load. ``README.md`` (the model card) is documentation and carries no checksum. Exports made before the
whole description was covered record the sha256 of the global class names only, and are checked for those.

Not covered: a consistent rewrite of ``config.json`` together with the files it vouches for (that is a different
export; only a signature could tell), and loaders that do not read ``config.json`` (plain timm ``local-dir:`` /
``pretrained_cfg_overlay=dict(file=...)`` with the ``resnet*`` architecture, see docs/HUB.md).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError, safe_open

from .errors import CheckpointError

CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAME = "model.safetensors"
CARD_FILENAME = "README.md"
FILES_KEY = "files"  # config.json "mdp" section: {file name: sha256}
CONFIG_DIGEST_KEY = "config_sha256"  # metadata of mdp_prototypes.safetensors
CLASS_NAMES_KEY = "class_names_sha256"  # the same, in exports older than CONFIG_DIGEST_KEY


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def class_names_sha256(class_names: Sequence[str]) -> str:
    """sha256 of the class names in order (their JSON list, UTF-8)."""
    return hashlib.sha256(json.dumps(list(class_names), ensure_ascii=False).encode("utf-8")).hexdigest()


def described_config(config: dict) -> dict:
    """``config.json`` without the records of file checksums (``mdp.files``, ``mdp.weights_sha256`` and the
    sha256 note of ``pretrained_cfg``): everything that describes the export to its users."""
    config = copy.deepcopy(config)
    mdp = config.get("mdp") if isinstance(config.get("mdp"), dict) else {}
    mdp.pop(FILES_KEY, None)
    mdp.pop("weights_sha256", None)
    pretrained_cfg = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
    if isinstance(pretrained_cfg.get("notes"), list):
        pretrained_cfg["notes"] = [note for note in pretrained_cfg["notes"] if not str(note).startswith("sha256 of ")]
    return config


def config_sha256(config: dict) -> str:
    """sha256 of :func:`described_config` as canonical JSON (sorted keys, UTF-8)."""
    canonical = json.dumps(described_config(config), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def recorded_checksums(folder: str | os.PathLike) -> dict[str, str]:
    """``{file name: sha256}`` recorded in ``folder/config.json``; empty without a config or an ``"mdp"`` section
    (not an mdp-hub export). Exports made before ``files`` existed record ``weights_sha256`` only."""
    mdp = _mdp_section(folder)
    recorded = dict(mdp.get(FILES_KEY) or {})
    if mdp.get("weights_sha256"):
        recorded.setdefault(WEIGHTS_FILENAME, mdp["weights_sha256"])
    return recorded


def _mdp_section(folder: str | os.PathLike) -> dict:
    config_path = Path(folder) / CONFIG_FILENAME
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from None
    mdp = config.get("mdp") if isinstance(config, dict) else None
    return mdp if isinstance(mdp, dict) else {}


def verify_checksum(path: str | os.PathLike) -> None:
    """Refuse ``path`` when its sha256 differs from the one its folder's ``config.json`` records for it.

    A file without a recorded checksum next to it (a plain weights file, a vanilla timm repo) passes unchecked.
    """
    path = Path(path)
    expected = recorded_checksums(path.parent).get(path.name)
    if expected is None or not path.is_file():
        return
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(
            f"{path}: sha256 {actual} differs from {expected} recorded in {path.parent / CONFIG_FILENAME}: the "
            "file was modified or corrupted after export; refusing to load it. Re-download or re-export the folder"
        )


def verify_config(prototypes_path: str | os.PathLike, config_path: str | os.PathLike) -> None:
    """Refuse a ``config_path`` that does not describe the export ``prototypes_path`` was written for: any edit to
    its label space (a dataset's class names included), recipe, metrics or normalisation after export."""
    config_path = Path(config_path)
    try:
        with safe_open(str(prototypes_path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except SafetensorError as err:
        raise CheckpointError(f"{prototypes_path}: not a readable safetensors file ({err})") from None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from None
    if CONFIG_DIGEST_KEY in metadata:
        what, intact = "", metadata[CONFIG_DIGEST_KEY] == config_sha256(config)
    elif CLASS_NAMES_KEY in metadata:
        names = ((config.get("mdp") or {}).get("label_space") or {}).get("class_names") or []
        what, intact = " (its class names)", metadata[CLASS_NAMES_KEY] == class_names_sha256(names)
    else:
        return
    if not intact:
        raise CheckpointError(
            f"{config_path}: what it says{what} is not what {Path(prototypes_path).name} was exported with (sha256 "
            "recorded in its metadata): the file was modified after export; refusing to label predictions with it. "
            "Re-download or re-export the folder"
        )


def verify_export_files(folder: str | os.PathLike) -> list[str]:
    """Check every file ``folder/config.json`` records a checksum for, and the class names: one report line per
    file. Raises ``CheckpointError`` naming every mismatch or missing file."""
    folder = Path(folder)
    if not (folder / CONFIG_FILENAME).is_file():
        raise FileNotFoundError(f"{folder}: not an export folder (no {CONFIG_FILENAME})")
    recorded = recorded_checksums(folder)
    if not recorded:
        raise CheckpointError(f"{folder / CONFIG_FILENAME}: records no checksums (not an mdp-hub export)")
    lines, problems = [], []
    for name, expected in sorted(recorded.items()):
        if not (folder / name).is_file():
            problems.append(f"{name} is missing")
            continue
        actual = sha256_file(folder / name)
        lines.append(f"{name}: sha256 {'ok' if actual == expected else 'MISMATCH'}")
        if actual != expected:
            problems.append(f"{name}: sha256 {actual} differs from {expected} recorded in {CONFIG_FILENAME}")
    mdp = _mdp_section(folder)
    prototypes = mdp.get("prototypes_file")
    if prototypes and (folder / prototypes).is_file():
        try:
            verify_config(folder / prototypes, folder / CONFIG_FILENAME)
            lines.append(f"{CONFIG_FILENAME}: what it says is what {prototypes} was exported with")
        except CheckpointError:
            problems.append(f"{CONFIG_FILENAME}: what it says is not what {prototypes} was exported with")
    lines += [
        f"{path.name}: not checksummed"
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name not in recorded and path.name != CONFIG_FILENAME
    ]
    if problems:
        raise CheckpointError(
            f"{folder}: " + "; ".join(problems) + ": modified or corrupted after export; re-download or re-export it"
        )
    return lines
