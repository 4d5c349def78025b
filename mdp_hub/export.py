"""Training checkpoint or state dict -> Hub-ready folder that vanilla timm loads.

    from mdp_hub.export import export
    export("runs/demo/last.pth", "exports/mdp_resnet50.voc_ade20k_coco_200ep", tag="voc_ade20k_coco_200ep",
           metrics={"dataset": "ADE20K", "mIoU": 42.1})

The folder holds ``model.safetensors`` (headless, fp32), timm's ``config.json`` with
``"architecture": "<timm resnet>"`` plus an ``"mdp"`` section (what ran, recipe, label space, sha256), ``README.md``
(model card) and, for pretraining checkpoints with prototypes, ``mdp_prototypes.safetensors``. The same
input always gives the same bytes, and the folder is reloaded through timm and compared tensor by tensor
before ``export`` returns.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save as safetensors_bytes
from timm.models._hub import save_config_for_hf  # public in timm.models._hub only

from . import catalog
from .checkpoint_io import (
    is_training_checkpoint,
    load_file,
    match_architecture,
    select_backbone,
    state_dict_mismatch,
    unwrap_state_dict,
)
from .errors import CheckpointError, write_error
from .integrity import (
    CARD_FILENAME,
    CONFIG_DIGEST_KEY,
    FILES_KEY,
    WEIGHTS_FILENAME,
    config_sha256,
    sha256_file,
)
from .model_card import CardInfo, parse_metrics, render_card
from .prototypes import CONFIG_FILENAME, PROTOTYPES_FILENAME, extract_prototypes, prototype_regime
from .provenance import PARTIAL_SUFFIX, RunRecord, resolve_tag

EXPORT_FILES = (WEIGHTS_FILENAME, CONFIG_FILENAME, CARD_FILENAME, PROTOTYPES_FILENAME)
EXPORT_FORMAT_VERSION = 1
STAGING_PREFIX = ".export-staging-"
_TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_MODEL_NAMES = {arch: name for name, arch in catalog.ARCHITECTURES.items()}


def export(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tag: str | None = None,
    metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    arch: str | None = None,
    org: str | None = None,
) -> Path:
    """Write the Hub folder for ``src`` into ``out_dir`` and return ``out_dir``.

    Args:
        src: training checkpoint (``"format": "mdp-hub/train-checkpoint"``) or a state dict file
            (``.safetensors`` / ``.pth``, read with ``weights_only=True``).
        out_dir: created if needed; may only contain files of an earlier export.
        tag: weight tag. A paper recipe tag (``mdp_hub.catalog.RECIPES``) is kept only when the checkpoint shows
            a completed run of that recipe and becomes ``<tag>-partial`` for a run of it that stopped early;
            otherwise ``RecipeClaimError`` names the differences (``mdp_hub.provenance``). Any other tag is
            kept and claims no recipe. The tag written is in ``config.json`` (``mdp.tag``).
        metrics: downstream results of these weights, ``{"dataset": ..., "mIoU": ...}`` or a list of them.
        arch: timm architecture of a plain state dict (inferred from its tensors when omitted).
        org: Hub organisation used in the card's snippets (default: ``MDP_HUB_ORG``).
    """
    src, out_dir = Path(src), Path(out_dir)
    if tag is not None and not _TAG_PATTERN.match(tag):
        raise ValueError(f"tag {tag!r} must be letters, digits, '_' or '-' (it becomes part of the Hub repo name)")
    plan = _plan_export(src, tag, parse_metrics(metrics), arch)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_out_dir(out_dir)
    # Everything is written and verified in a hidden staging folder first and only then renamed into place, so a
    # full disk or a crash never leaves a half-written model.safetensors next to a config.json that vouches for it.
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    except OSError as err:
        raise write_error(out_dir, err, f"{out_dir} is unchanged") from err
    publishing = False
    try:
        checksums = {WEIGHTS_FILENAME: _write_weights(plan, staging)}
        _write_config(plan, staging, checksums)
        if plan.prototypes is not None:
            checksums[PROTOTYPES_FILENAME] = _write_prototypes(plan, staging)
            _record_checksums(staging, checksums)
        _write_card(plan, staging, org or catalog.hub_org(), checksums[WEIGHTS_FILENAME])
        verify_export(staging, plan.tensors, plan.prototypes)
        publishing = True
        _publish_staged(staging, out_dir)
    except OSError as err:
        if publishing:
            raise write_error(
                out_dir, err, "export again: until then the checksums make mdp_hub refuse the half-updated folder"
            ) from err
        staged_name = Path(err.filename).name if err.filename else ""
        raise write_error(out_dir / staged_name, err, f"{out_dir} is unchanged") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


@dataclass
class _ExportPlan:
    """What an export writes, read and checked from the source before anything touches the output folder."""

    source: Path
    content: Mapping[str, Any]
    training: bool
    run: RunRecord | None
    tag: str | None
    arch: str
    model_name: str
    model: torch.nn.Module  # on the meta device: names, shapes and timm's pretrained_cfg
    tensors: dict[str, torch.Tensor]
    label_space: Mapping[str, Any] | None
    prototypes: dict[str, torch.Tensor] | None
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    results: list
    prototype_regime: dict[str, Any] | None = None  # anchor shares of the class memory (mdp_hub.prototypes)


def _plan_export(src: Path, tag: str | None, results: list, arch: str | None) -> _ExportPlan:
    """Read ``src``, resolve tag and architecture, and fit the headless backbone to timm's model."""
    content = load_file(src)
    state_dict, declared_prefix = unwrap_state_dict(content, source=src)
    training = is_training_checkpoint(content)
    run = RunRecord.from_checkpoint(content)
    tag = resolve_tag(tag, run, source=src)  # a paper recipe's tag only for a completed run of that recipe
    backbone, _ = select_backbone(state_dict, prefix=declared_prefix, source=src)
    # Hub weights are headless: a classifier trained for some label set is not part of the backbone.
    backbone = {key: value for key, value in backbone.items() if not key.startswith("fc.")}
    arch = _resolve_arch(content.get("arch") if training else arch, backbone, source=src)
    model_name = _MODEL_NAMES[arch]

    data_config = content.get("data_config") or {} if training else {}
    mean = tuple(float(v) for v in data_config.get("mean", catalog.IMAGENET_MEAN))
    std = tuple(float(v) for v in data_config.get("std", catalog.IMAGENET_STD))
    crop = data_config.get("crop_size")
    input_size = (3, int(crop[0]), int(crop[1])) if crop else catalog.INPUT_SIZE
    with torch.device("meta"):  # names, shapes and config only; the real load happens in verify_export
        model = timm.create_model(
            arch,
            num_classes=0,
            pretrained=False,
            pretrained_cfg=_pretrained_cfg(arch, model_name, tag, run, input_size, mean, std),
        )
    problems = state_dict_mismatch(backbone, model.state_dict())
    if problems:
        raise CheckpointError(f"{src}: backbone does not fit timm {arch}: {problems}")
    # fp32 contiguous tensors in the model's own key order: exact for fp16/bf16 sources, deterministic bytes.
    tensors = {key: _as_stored(backbone[key]) for key in model.state_dict()}

    label_space = content.get("label_space") if training else None
    prototypes = extract_prototypes(state_dict, label_space, source=src) if training else None
    return _ExportPlan(
        src,
        content,
        training,
        run,
        tag,
        arch,
        model_name,
        model,
        tensors,
        label_space,
        prototypes,
        input_size,
        mean,
        std,
        results,
        prototype_regime(state_dict, label_space) if training else None,
    )


def _write_weights(plan: _ExportPlan, staging: Path) -> str:
    """Write ``model.safetensors``; returns its sha256."""
    weights_path = staging / WEIGHTS_FILENAME
    _write_tensors(weights_path, plan.tensors, {"format": "pt"})
    return sha256_file(weights_path)


def _write_prototypes(plan: _ExportPlan, staging: Path) -> str:
    """Write ``mdp_prototypes.safetensors``, vouching for the ``config.json`` already in ``staging``; returns its
    sha256."""
    config = json.loads((staging / CONFIG_FILENAME).read_text(encoding="utf-8"))
    path = staging / PROTOTYPES_FILENAME
    # one metadata entry only: safetensors writes several in a random order, and exports are byte-stable
    _write_tensors(
        path, {k: _as_stored(v) for k, v in plan.prototypes.items()}, {CONFIG_DIGEST_KEY: config_sha256(config)}
    )
    return sha256_file(path)


def _record_checksums(staging: Path, checksums: dict[str, str]) -> None:
    """Record ``checksums`` in ``config.json``'s ``mdp.files`` (outside what the prototypes' digest covers)."""
    path = staging / CONFIG_FILENAME
    config = json.loads(path.read_text(encoding="utf-8"))
    config["mdp"][FILES_KEY] = dict(checksums)
    _write_text(path, json.dumps(config, indent=2))


def _write_config(plan: _ExportPlan, staging: Path, checksums: dict[str, str]) -> None:
    """timm's ``config.json`` plus the ``"mdp"`` section: what ran, recipe, label space and checksums."""
    sha256 = checksums[WEIGHTS_FILENAME]
    model = plan.model
    model.pretrained_cfg["notes"] = (*model.pretrained_cfg["notes"], f"sha256 of {WEIGHTS_FILENAME}: {sha256}")
    mdp_section = {
        "format_version": EXPORT_FORMAT_VERSION,
        "model_name": plan.model_name,
        "tag": plan.tag,
        "recipe": _recipe_dict(plan.tag),
        "recipe_completed": plan.tag in catalog.RECIPES_BY_TAG,
        "run": plan.run.to_dict() if plan.run else None,
        "weights_sha256": sha256,
        FILES_KEY: checksums,
        "source": _source_dict(plan.content, plan.training),
        "metrics": [result.to_dict() for result in plan.results],
        "label_space": plan.label_space,
        "prototypes_file": PROTOTYPES_FILENAME if plan.prototypes is not None else None,
        "prototype_regime": plan.prototype_regime,
        "training_config": plan.content.get("config") if plan.training else None,
    }
    _save_hf_config(
        model,
        staging / CONFIG_FILENAME,
        mdp_section,
        data_config={
            "input_size": plan.input_size,
            "mean": plan.mean,
            "std": plan.std,
            "crop_pct": 1.0,
            "interpolation": "bilinear",
        },
    )


def _write_card(plan: _ExportPlan, staging: Path, org: str, sha256: str) -> None:
    """The model card ``README.md``."""
    model_name, tag, run = plan.model_name, plan.tag, plan.run
    card = CardInfo(
        model_name=model_name,
        arch=plan.arch,
        tag=tag,
        repo_id=f"{org}/{model_name}.{tag}" if tag else f"{org}/{model_name}",
        sha256=sha256,
        params_m=sum(t.numel() for t in plan.tensors.values() if t.is_floating_point()) / 1e6,
        input_size=plan.input_size,
        mean=plan.mean,
        std=plan.std,
        training_text=_training_text(run, plan.label_space),
        dataset_keys=run.dataset_keys if run else (),
        results=plan.results,
        num_prototype_classes=None if plan.prototypes is None else int(plan.prototypes["prototypes"].shape[0]),
    )
    _write_text(staging / CARD_FILENAME, render_card(card))


def _write_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file written by Python, so it gets the umask's permissions like every other file (the
    safetensors writer makes them 0600) and a full disk raises the OSError itself."""
    with _naming_failures(path):
        path.write_bytes(safetensors_bytes(dict(tensors), metadata=metadata))


def _write_text(path: Path, text: str) -> None:
    with _naming_failures(path):
        path.write_text(text, encoding="utf-8")


@contextmanager
def _naming_failures(path: Path) -> Iterator[None]:
    """A failed write (a full disk reports ENOSPC without a file name) names the file it was writing."""
    try:
        yield
    except OSError as err:
        if not err.filename:
            err.filename = str(path)
        raise


def verify_export(
    out_dir: Path, tensors: Mapping[str, torch.Tensor], prototypes: Mapping[str, torch.Tensor] | None
) -> None:
    """Reload ``out_dir`` the way users do (timm ``local-dir:``) and compare every tensor bit for bit."""
    reloaded = timm.create_model(f"local-dir:{out_dir.resolve()}", pretrained=True).state_dict()
    problems = state_dict_mismatch(reloaded, tensors)
    differing = [key for key in tensors if key in reloaded and not torch.equal(reloaded[key], tensors[key])]
    if prototypes is not None:
        stored = load_safetensors(str(out_dir / PROTOTYPES_FILENAME))
        problems = "; ".join(filter(None, [problems, state_dict_mismatch(stored, prototypes)]))
        differing += [
            key for key in prototypes if key in stored and not torch.equal(stored[key], _as_stored(prototypes[key]))
        ]
    if problems or differing:
        raise CheckpointError(f"{out_dir}: export verification failed: {problems or ''} differing tensors {differing}")


def _save_hf_config(model: torch.nn.Module, path: Path, mdp_section: dict, data_config: dict) -> None:
    """timm's ``config.json`` plus the ``mdp`` section, loadable by timm and by transformers' ``TimmWrapper``.

    timm records ``num_classes`` both at the root and in ``model_args``; transformers passes ``num_classes`` and
    ``**model_args`` to ``timm.create_model`` together and fails on the duplicate, so ``model_args`` keeps only
    the other arguments (timm reads ``num_classes`` from the root, as in timm's own Hub repositories).
    """
    with _naming_failures(path):
        save_config_for_hf(model, str(path), model_config={"mdp": mdp_section}, data_config=data_config)
    config = json.loads(path.read_text(encoding="utf-8"))
    config.get("model_args", {}).pop("num_classes", None)
    _write_text(path, json.dumps(config, indent=2))


def _resolve_arch(arch: str | None, backbone: Mapping[str, torch.Tensor], *, source: Path) -> str:
    """The timm architecture of ``backbone``: the declared one (timm or mdp_* name), else inferred."""
    if arch is None:
        return match_architecture(backbone, list(_MODEL_NAMES), source=source)
    arch = catalog.ARCHITECTURES.get(arch, arch)
    if arch not in _MODEL_NAMES:
        raise CheckpointError(
            f"{source}: architecture {arch!r} is not exportable; supported: {', '.join(_MODEL_NAMES)}"
        )
    return arch


def _pretrained_cfg(
    arch: str,
    model_name: str,
    tag: str | None,
    run: RunRecord | None,
    input_size: tuple[int, int, int],
    mean: tuple,
    std: tuple,
) -> dict[str, Any]:
    registered_tag = tag if tag in catalog.RECIPES_BY_TAG else catalog.DEFAULT_TAG
    cfg = timm.models.get_pretrained_cfg(f"{model_name}.{registered_tag}").to_dict()
    cfg.update(
        architecture=arch,
        tag=tag,
        input_size=input_size,
        pool_size=(input_size[1] // 32, input_size[2] // 32),
        mean=mean,
        std=std,
        hf_hub_id=None,
    )
    if tag not in catalog.RECIPES_BY_TAG:  # the recipe's description is only claimed by a completed run of it
        cfg["description"] = "MDP backbone from a custom run" + (f": {run.summary()}" if run else "")
    return cfg


def _recipe_dict(tag: str | None) -> dict[str, Any] | None:
    """The paper recipe a run completed (``tag``) or ran part of (``tag-partial``)."""
    recipe = catalog.RECIPES_BY_TAG.get(tag.removesuffix(PARTIAL_SUFFIX)) if tag else None
    if recipe is None:
        return None
    return {
        "tag": recipe.tag,
        "datasets": list(recipe.datasets),
        "epochs": recipe.epochs,
        "init": recipe.init,
        "description": recipe.description,
    }


def _source_dict(content: Mapping[str, Any], training: bool) -> dict[str, Any]:
    if not training:
        return {"kind": "state-dict"}
    return {
        "kind": f"train-checkpoint/{content.get('kind', 'unknown')}",
        "step": content.get("step"),
        "epoch": content.get("epoch"),
        "backbone_prefix": content.get("backbone_prefix"),
    }


def _training_text(run: RunRecord | None, label_space: Mapping[str, Any] | None) -> str:
    if run is None:
        return "Exported from a plain state dict: no training metadata was available."
    text = (
        f"Exported from a checkpoint of mdp-hub's trainer: {run.summary()} The resolved training configuration "
        "is stored in `config.json` under `mdp.training_config`, what ran under `mdp.run`."
    )
    if isinstance(label_space, Mapping) and isinstance(label_space.get("datasets"), list):
        parts = [f"{d.get('name')} ({len(d.get('class_names', []))} classes)" for d in label_space["datasets"]]
        text += (
            f" Pretraining label space: {label_space.get('num_classes')} global classes from "
            f"{', '.join(parts)}, concatenated as in the paper."
        )
    return text


def _as_stored(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    return tensor.contiguous()


def _publish_staged(staging: Path, out_dir: Path) -> None:
    """Move the verified files of ``staging`` into ``out_dir``. The weights go first and ``config.json`` (which
    records their sha256) last: an interruption in between leaves new weights under the old checksum, which every
    mdp_hub load refuses, and a first export without a config.json is no loadable export at all."""
    stale_prototypes = out_dir / PROTOTYPES_FILENAME
    if stale_prototypes.exists() and not (staging / PROTOTYPES_FILENAME).exists():
        stale_prototypes.unlink()  # left by an earlier export of another checkpoint into this folder
    for name in (WEIGHTS_FILENAME, PROTOTYPES_FILENAME, CARD_FILENAME, CONFIG_FILENAME):
        if (staging / name).exists():
            _fsync_file(staging / name)
            os.replace(staging / name, out_dir / name)
    _fsync_file(out_dir)


def _fsync_file(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _check_out_dir(out_dir: Path) -> None:
    foreign = sorted(
        p.name for p in out_dir.iterdir() if p.name not in EXPORT_FILES and not p.name.startswith(STAGING_PREFIX)
    )
    if foreign:
        raise FileExistsError(
            f"{out_dir}: not empty and not an earlier export (found {', '.join(foreign[:5])}); "
            "choose a new output folder"
        )
