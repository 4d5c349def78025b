"""Publish an export folder to the Hugging Face Hub: ``create_repo`` + ``upload_folder`` (+ ``create_tag``).

The token comes only from huggingface_hub's usual places (``HF_TOKEN``, ``hf auth login``); this module
never reads, prints or writes it. A dry run lists exactly the files that would be uploaded.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi

from .export import EXPORT_FILES
from .integrity import CARD_FILENAME, CONFIG_FILENAME, WEIGHTS_FILENAME, recorded_checksums, verify_export_files

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class UploadPlan:
    """What a push sends: the repo, the files (name, bytes) and the Git tag to create."""

    repo_id: str
    folder: Path
    files: tuple[tuple[str, int], ...]
    revision: str | None
    tag: str | None
    private: bool

    def describe(self) -> str:
        lines = [
            f"repo {self.repo_id} ({'private' if self.private else 'public'}), "
            f"branch {self.revision or 'main'}" + (f", tag {self.tag}" if self.tag else "")
        ]
        lines += [f"  {name}  {size} bytes" for name, size in self.files]
        return "\n".join(lines)


def plan_upload(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    tag: str | None = None,
    private: bool = False,
) -> UploadPlan:
    """Check ``folder`` is a complete export and list what a push would upload (no network)."""
    folder = Path(folder)
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"repo id {repo_id!r} must look like ORG/NAME")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such export folder")
    for required in (WEIGHTS_FILENAME, CONFIG_FILENAME, CARD_FILENAME):
        if not (folder / required).is_file():
            raise FileNotFoundError(f"{folder}: incomplete export, {required} is missing (run `mdp-hub export` first)")
    config = json.loads((folder / CONFIG_FILENAME).read_text())
    if "architecture" not in config or "pretrained_cfg" not in config:
        raise ValueError(f"{folder / 'config.json'}: not a timm config (needs 'architecture' and 'pretrained_cfg')")
    if recorded_checksums(folder):
        verify_export_files(folder)  # never publish a file the export did not write (also in a dry run)
    files = tuple((name, (folder / name).stat().st_size) for name in EXPORT_FILES if (folder / name).is_file())
    return UploadPlan(repo_id, folder, files, revision, tag, private)


def push(plan: UploadPlan, *, api: HfApi | None = None) -> str:
    """Create the repo if needed, upload exactly the planned files, tag the commit; returns the commit URL."""
    api = api or HfApi(library_name="mdp-hub")
    api.create_repo(plan.repo_id, private=plan.private, exist_ok=True)
    if plan.revision:
        api.create_branch(plan.repo_id, branch=plan.revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=plan.repo_id,
        folder_path=str(plan.folder),
        revision=plan.revision,
        allow_patterns=[name for name, _ in plan.files],
        delete_patterns=["*.bin", "*.pth"],  # never leave pickled weights next to the safetensors
        commit_message=f"Upload {plan.repo_id.split('/', 1)[1]} with mdp-hub",
    )
    if plan.tag:
        api.create_tag(plan.repo_id, tag=plan.tag, revision=commit.oid, tag_message=f"mdp-hub release {plan.tag}")
    return str(commit.commit_url)
