"""Offline use: check, fill and pre-populate the Hugging Face cache that timm's ``pretrained=True`` reads.

Three offline routes, all plain timm: a filled Hub cache (+ ``HF_HUB_OFFLINE=1``), ``local-dir:<export
folder>``, or ``pretrained_cfg_overlay=dict(file=<model.safetensors>)``. This module serves the first:
``prefetch`` on a connected machine, ``install_export`` on an air-gapped one (copies an export folder into
the cache layout ``models--ORG--NAME/{refs,snapshots}``). Both make timm list the tag as pretrained.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from huggingface_hub import constants, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError

from . import catalog
from .errors import WeightsNotAvailableError
from .export import EXPORT_FILES
from .integrity import CARD_FILENAME, CONFIG_FILENAME, WEIGHTS_FILENAME, recorded_checksums, verify_export_files
from .models.mdp_resnet import list_as_pretrained

_DOWNLOADED = [CONFIG_FILENAME, WEIGHTS_FILENAME, CARD_FILENAME]


def resolve_repo_id(name: str) -> str:
    """``'mdp_resnet50[.tag]'`` -> its Hub repo; an ``ORG/NAME`` repo id is returned unchanged."""
    if "/" in name:
        return name
    model_name, tag = catalog.split_name(name)
    return catalog.repo_id(model_name, tag)


def is_cached(name: str, *, cache_dir: str | os.PathLike | None = None, revision: str | None = None) -> bool:
    """Whether the weights of ``name`` (model name with tag, or repo id) are in the local Hub cache."""
    found = try_to_load_from_cache(resolve_repo_id(name), WEIGHTS_FILENAME, cache_dir=cache_dir, revision=revision)
    return isinstance(found, str)


def require_fetchable(repo_id: str, *, cache_dir: str | os.PathLike | None = None, revision: str | None = None) -> None:
    """Raise at once, without touching the network, when ``repo_id`` is not cached and the Hub cannot have it
    (``HF_HUB_OFFLINE``, or a tag that is not published): the Hub client would retry for ~50 s first."""
    if is_cached(repo_id, cache_dir=cache_dir, revision=revision):
        return
    reason = catalog.unpublished_reason(repo_id, offline=constants.HF_HUB_OFFLINE)
    if reason:
        raise catalog.weights_not_available(repo_id, reason)


def prefetch(name: str, *, cache_dir: str | os.PathLike | None = None, revision: str | None = None) -> Path:
    """Download config, weights and card of ``name`` into the Hub cache (e.g. before going offline)."""
    repo_id = resolve_repo_id(name)
    require_fetchable(repo_id, cache_dir=cache_dir, revision=revision)
    try:
        snapshot = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=_DOWNLOADED + ["mdp_prototypes.safetensors"],
            )
        )
    except (OSError, EntryNotFoundError) as err:  # OSError covers HTTP, offline and connection errors
        raise WeightsNotAvailableError(
            f"Hugging Face Hub repo '{repo_id}' could not be downloaded ({type(err).__name__}: {err})"
        ) from None
    list_as_pretrained(repo_id)
    return snapshot


def install_export(
    folder: str | os.PathLike, repo_id: str, *, cache_dir: str | os.PathLike | None = None, revision: str = "main"
) -> Path:
    """Copy an export folder into the Hub cache as snapshot of ``repo_id`` at ``revision``; returns the snapshot.

    The snapshot id is derived from the file contents, so installing the same export twice is a no-op.
    """
    folder = Path(folder)
    files = [folder / name for name in EXPORT_FILES if (folder / name).is_file()]
    if not (folder / WEIGHTS_FILENAME).is_file() or not (folder / CONFIG_FILENAME).is_file():
        raise FileNotFoundError(f"{folder}: not an export folder (needs {WEIGHTS_FILENAME} and {CONFIG_FILENAME})")
    if recorded_checksums(folder):
        verify_export_files(folder)  # a tampered file must not become a "cached download"
    digest = hashlib.sha1()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    commit = digest.hexdigest()
    repo_folder = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, snapshot / path.name)
    (repo_folder / "refs").mkdir(exist_ok=True)
    (repo_folder / "refs" / revision).write_text(commit)
    list_as_pretrained(repo_id)
    return snapshot
