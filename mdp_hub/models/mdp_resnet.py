"""MDP ResNets registered with timm: ``mdp_resnet18``, ``mdp_resnet50``, ``mdp_resnet101``.

Architecturally these are timm's plain ResNets (standard 7x7 stem, v1.5 strides), so everything timm
offers (``features_only``, ``out_indices``, ``output_stride=8/16``, ``num_classes=N``) works. What the
``mdp_`` names add is the pretrained tags, one per recipe of the paper, each backed by a headless
``model.safetensors`` in the Hub repo ``<MDP_HUB_ORG>/mdp_resnet50.<tag>``.

Every tag is registered (``timm.get_pretrained_cfg``, ``timm.list_models("mdp_*", include_tags=True)``), but
like timm's own, only tags whose weights exist count as pretrained (``timm.list_pretrained("mdp_*")``,
``timm.is_model_pretrained``): those published on the Hub (``catalog.PUBLISHED_REPOS``) and those in the local
Hugging Face cache when ``mdp_hub`` is imported or put there later by ``install_export`` / ``prefetch``.
``mdp-hub list`` shows the whole catalogue.

Loading differs from timm's in two ways: every backbone tensor must be present with the right shape
(timm relaxes strictness when the head is replaced), and unavailable weights or bad files raise
errors that name the repository or file.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError
from safetensors import SafetensorError
from timm.models import _registry as timm_registry  # the set behind list_pretrained has no public setter
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from .. import catalog
from ..checkpoint_io import state_dict_mismatch, strip_wrapper_prefixes
from ..errors import CheckpointError, WeightsNotAvailableError
from ..integrity import WEIGHTS_FILENAME, verify_checksum

__all__ = ["default_cfgs", "list_as_pretrained"]  # register_model appends the model names

_BLOCKS = {
    "mdp_resnet18": dict(block=BasicBlock, layers=(2, 2, 2, 2)),
    "mdp_resnet50": dict(block=Bottleneck, layers=(3, 4, 6, 3)),
    "mdp_resnet101": dict(block=Bottleneck, layers=(3, 4, 23, 3)),
}


def _cfg(model_name: str, recipe: catalog.Recipe) -> dict[str, Any]:
    channels, height, width = catalog.INPUT_SIZE
    return {
        "hf_hub_id": catalog.repo_id(model_name, recipe.tag),
        "num_classes": 0,
        "input_size": catalog.INPUT_SIZE,
        "pool_size": (height // 32, width // 32),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": catalog.IMAGENET_MEAN,
        "std": catalog.IMAGENET_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": catalog.LICENSE,
        "paper_ids": catalog.PAPER_ID,
        "paper_name": catalog.PAPER_NAME,
        "description": recipe.description,
        "notes": (f"headless backbone ({catalog.ARCHITECTURES[model_name]} keys, no fc)",),
    }


# The first recipe's tag comes first, so it is every architecture's default tag.
default_cfgs = generate_default_cfgs(
    {f"{name}.{recipe.tag}": _cfg(name, recipe) for name in _BLOCKS for recipe in catalog.RECIPES}
)


def strict_backbone_filter(state_dict: dict, model: ResNet) -> dict:
    """timm ``pretrained_filter_fn``: accept the file only if it covers the model exactly.

    timm drops the classifier and loads non-strictly when ``num_classes`` differs from the weights',
    which would also let missing backbone tensors pass silently; here only the classifier (and the
    stem's shape when ``in_chans`` is adapted) is exempt.
    """
    state_dict = strip_wrapper_prefixes(state_dict)
    cfg = model.pretrained_cfg
    reference = model.state_dict()
    if model.num_classes != cfg.get("num_classes"):
        # timm discards the classifier next and the model keeps a fresh head of its own size
        head = {f"{cfg['classifier']}.weight", f"{cfg['classifier']}.bias"}
        reference = {key: value for key, value in reference.items() if key not in head}
        compared = {key: value for key, value in state_dict.items() if key not in head}
    else:
        compared = state_dict
    # timm adapts the stem to a different in_chans after this filter
    stem_adapted = model.conv1.in_channels != cfg["input_size"][0]
    problems = state_dict_mismatch(
        compared, reference, ignore_shape=[f"{cfg['first_conv']}.weight"] if stem_adapted else []
    )
    if problems:
        raise CheckpointError(f"{_describe_source(cfg)}: weights do not fit {cfg['architecture']}: {problems}")
    return state_dict


def _describe_source(cfg: dict[str, Any]) -> str:
    if cfg.get("state_dict") is not None:
        return "pretrained_cfg state_dict"
    if cfg.get("file"):
        return str(cfg["file"])
    return f"Hugging Face Hub repo {cfg.get('hf_hub_id')}"


def cached_weights_path(cfg: dict[str, Any], cache_dir: str | None = None) -> str | None:
    """The local weights file ``cfg`` points at: its ``file``, or the Hub snapshot's cached weights (None if the
    repo is not cached yet)."""
    if cfg.get("file"):
        return str(cfg["file"])
    if cfg.get("hf_hub_id"):
        repo_id, _, revision = cfg["hf_hub_id"].partition("@")
        cached = try_to_load_from_cache(repo_id, WEIGHTS_FILENAME, cache_dir=cache_dir, revision=revision or None)
        return cached if isinstance(cached, str) else None
    return None


def verify_pretrained_checksum(cfg: dict[str, Any], cache_dir: str | None = None) -> None:
    """Refuse weights whose sha256 differs from the one their export's ``config.json`` records.

    ``cfg["file"]`` is checked against the ``config.json`` next to it; Hub weights against the cached
    ``config.json`` of the same snapshot. Files without a recorded checksum (plain weights) pass.
    """
    path = cached_weights_path(cfg, cache_dir)
    if path is not None:
        verify_checksum(path)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNet:
    build = partial(
        build_model_with_cfg,
        ResNet,
        variant,
        pretrained,
        pretrained_filter_fn=strict_backbone_filter,
        **dict(_BLOCKS[variant], **kwargs),
    )
    if not pretrained:
        return build()
    overrides = {key: kwargs.get(key) for key in ("pretrained_cfg", "pretrained_cfg_overlay")}
    cfg = resolve_pretrained_cfg(variant, **overrides).to_dict()
    cache_dir = kwargs.get("cache_dir")
    _fail_fast_if_unpublished(cfg, cache_dir)
    try:
        with _checksum_verified(cfg, cache_dir):
            return build()
    except (CheckpointError, WeightsNotAvailableError):
        raise
    except (OSError, EntryNotFoundError, SafetensorError, pickle.UnpicklingError) as err:
        raise _named_load_error(cfg, err) from (err if cfg.get("file") else None)
    except RuntimeError as err:
        if not cfg.get("file"):
            raise
        raise _named_load_error(cfg, err) from err


def _fail_fast_if_unpublished(cfg: dict[str, Any], cache_dir: str | None) -> None:
    """Raise at once for uncached Hub weights that are known not to exist, which the Hub client would retry ~50 s."""
    local = cfg.get("file") or cfg.get("state_dict") is not None
    if local or not cfg.get("hf_hub_id") or cached_weights_path(cfg, cache_dir) is not None:
        return
    repo_id, _, revision = cfg["hf_hub_id"].partition("@")
    reason = catalog.unpublished_reason(repo_id, offline=constants.HF_HUB_OFFLINE)
    if reason:
        raise catalog.weights_not_available(repo_id, reason)


@contextmanager
def _checksum_verified(cfg: dict[str, Any], cache_dir: str | None) -> Iterator[None]:
    """Verify the weights' recorded sha256 around the block that loads them; its result stands only if it passes.

    Weights already on disk are hashed on a second thread while timm builds the model (hashlib releases the GIL),
    so the check costs no wall time on a multi-core machine; a first download is hashed after it.
    """
    early = cached_weights_path(cfg, cache_dir)
    if not (early and Path(early).is_file()):
        yield
        verify_pretrained_checksum(cfg, cache_dir)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        check = pool.submit(verify_checksum, early)
        yield
        check.result()


def _named_load_error(cfg: dict[str, Any], err: Exception) -> Exception:
    """timm surfaces a failed load as whatever its reader raised; name the file or Hub repo and the fix instead."""
    if cfg.get("file"):
        if isinstance(err, FileNotFoundError):
            return FileNotFoundError(f"{cfg['file']}: no such weights file (pretrained_cfg file)")
        # timm reports a truncated .pth as a bare RuntimeError or OSError
        return CheckpointError(f"{cfg['file']}: cannot read weights ({type(err).__name__}: {err})")
    if isinstance(err, (SafetensorError, pickle.UnpicklingError)):
        return CheckpointError(f"{_describe_source(cfg)}: cached weights are corrupt ({err})")
    repo_id = cfg["hf_hub_id"].partition("@")[0]  # OSError covers HTTP, offline and connection errors
    return catalog.weights_not_available(repo_id, f"could not be fetched ({type(err).__name__})")


@register_model
def mdp_resnet18(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 (timm ``resnet18`` layout) with MDP weights; the trainer's CPU demo backbone."""
    return _create("mdp_resnet18", pretrained, **kwargs)


@register_model
def mdp_resnet50(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50 (timm ``resnet50`` layout) with MDP weights, the paper's backbone."""
    return _create("mdp_resnet50", pretrained, **kwargs)


@register_model
def mdp_resnet101(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-101 (timm ``resnet101`` layout) with MDP weights."""
    return _create("mdp_resnet101", pretrained, **kwargs)


def list_as_pretrained(repo_id: str) -> list[str]:
    """Add the registered names whose weights live in ``repo_id`` to timm's pretrained listing; returns them.

    The default tag also lists the bare model name, as timm does for its own models.
    """
    names = [
        f"{model_name}.{recipe.tag}"
        for model_name in _BLOCKS
        for recipe in catalog.RECIPES
        if catalog.repo_id(model_name, recipe.tag) == repo_id
    ]
    for name in names:
        timm_registry._model_has_pretrained.add(name)
        if name.endswith(f".{catalog.DEFAULT_TAG}"):
            timm_registry._model_has_pretrained.add(name.split(".")[0])
    return names


def _list_available_weights_only() -> None:
    """timm marks every tag with a Hub repo as pretrained; keep only those whose weights are published or cached."""
    for model_name in _BLOCKS:
        timm_registry._model_has_pretrained.discard(model_name)
        for recipe in catalog.RECIPES:
            timm_registry._model_has_pretrained.discard(f"{model_name}.{recipe.tag}")
            repo_id = catalog.repo_id(model_name, recipe.tag)
            if repo_id in catalog.PUBLISHED_REPOS or isinstance(try_to_load_from_cache(repo_id, WEIGHTS_FILENAME), str):
                list_as_pretrained(repo_id)


_list_available_weights_only()
