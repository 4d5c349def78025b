"""Strict dataclass configs, YAML recipes with inheritance and `--set key=value` overrides.

A recipe is a YAML file under ``training/recipes/`` (or any path). It may name a parent with ``base: <recipe>``;
the parent is loaded first and the child's keys are merged over it, section by section. Every key must be a
field of the dataclasses below: an unknown key or a value of the wrong type is an error naming the file (or the
``--set`` argument), the dotted key and what was expected. Nothing is silently dropped or coerced beyond
int -> float.

The resolved config (after inheritance and overrides) is written to the run folder as ``config.yaml`` and stored
as a plain dict in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from mdp_hub.catalog import IMAGENET_MEAN, IMAGENET_STD
from mdp_hub.errors import UserError
from training.data.transforms import PhotometricConfig

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


class ConfigError(UserError, ValueError):
    """A recipe or override that does not fit the config schema."""


@dataclass
class DataConfig:
    """What to read and how to crop it.

    ``datasets`` are spec strings ``NAME:PATH[:split]`` (training.data.parse_spec), in label-space order, or the
    single word ``synthetic`` for the generated benchmark (VOC-aug + ADE20K + COCO-Stuff layouts).
    """

    datasets: list[str] = field(default_factory=lambda: ["synthetic"])
    synthetic_root: str = ""  # where the synthetic benchmark lives; empty = the data layer's cache folder
    synthetic_sizes: dict[str, int] = field(default_factory=dict)  # images per split (tests), empty = defaults
    crop_size: int = 512
    base_size: int = 0  # short-side base of the random rescale; 0 = the data layer's default
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)  # MoCo-v2 jitter per view
    # where that jitter runs: device = batched on the training device (workers send one uint8 crop), worker = PIL
    # in the data workers, auto = device on CUDA, worker on CPU (where the workers run in parallel with the step)
    photometric_on: str = "auto"
    unlabeled: list[str] = field(default_factory=list)  # folders of unlabeled images (pseudo-labelled, MDP only)
    unify_map: str = ""  # JSON class-name unification map (ablation); empty = plain concatenation (the paper)
    sampling: str = "proportional"  # proportional (the paper) | balanced
    skip_bad_samples: bool = False
    # where each split's checked file listing is cached (rank 0 reads it; restarts skip the listing); empty = the
    # default folder ~/.cache/mdp-hub/dataset-index, off = list the folders at every start-up
    index_cache: str = ""
    num_workers: int = 8

    def __post_init__(self):
        if self.photometric_on not in ("auto", "device", "worker"):
            raise ValueError(f"photometric_on {self.photometric_on!r}: expected 'auto', 'device' or 'worker'")


@dataclass
class MethodConfig:
    """The pretraining method (``training.mdp.build_method``) and the momentum schedule the trainer applies.

    ``options`` are the method's own keywords (``training.mdp.method_options(name)``), checked against it.
    """

    name: str = "mdp"  # mdp | pixel_to_pixel | region_bank | supervised_ce | multi_head | moco_v2
    arch: str = "resnet50"
    output_stride: int = 8
    embed_dim: int = 128
    head_hidden_dim: int = 0  # 0 = the method's default
    head_output_norm: str = "none"  # dense head output over the batch's pixels: none | batchnorm | whiten
    momentum: float = 0.999  # EMA coefficient at step 0
    momentum_final: float = 0.999  # EMA coefficient at the last step (cosine in between)
    # >0: options.window is for this global batch and is scaled with the real one, so the prototypes average over
    # the same number of steps (a window counts regions, and a smaller batch brings fewer per step)
    window_reference_batch: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (linear warm-up, then cosine to ``min_lr_ratio * lr``)."""

    name: str = "sgd"  # sgd | adamw
    lr: float = 0.03  # at a global batch of ``lr_reference_batch``; scaled linearly with the real global batch
    lr_reference_batch: int = 256
    weight_decay: float = 1e-4
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 5.0
    min_lr_ratio: float = 0.0
    clip_grad_norm: float = 0.0  # 0 disables clipping


@dataclass
class StageConfig:
    """One stage of sequential pretraining: these datasets (names as in the label space) for this many epochs."""

    datasets: list[str] = field(default_factory=list)
    epochs: int = 1


@dataclass
class TrainConfig:
    """How the run is executed; none of these change the method's maths."""

    epochs: int = 200
    max_steps: int = 0  # >0 caps the run (smoke runs); the LR schedule then spans max_steps
    batch_size: int = 8  # per process
    stages: list[StageConfig] = field(default_factory=list)  # empty = one stage over data.datasets
    seed: int = 0
    deterministic: bool = False
    amp: str = "bf16"  # none | bf16 | fp16 (fp16 uses a GradScaler)
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = True
    log_every: int = 20
    checkpoint_every: int = 500  # steps between rewrites of last.pth
    snapshot_every: int = 0  # steps between kept snapshots checkpoint_<step>.pth; 0 = one per epoch
    keep_snapshots: int = 3
    plots: bool = True
    probe_every: int = 500  # steps between learning-dynamics probes on a fixed batch (0 = off); also at step 0
    probe_images: int = 32  # crops of the probe batch (half fit centroids and the linear probe, half score them)
    threads: int = 0  # >0 sets torch.set_num_threads (CPU runs)
    device: str = "auto"  # auto | cuda | cpu

    def __post_init__(self):
        for name in ("epochs", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class InitConfig:
    """Backbone initialisation. Empty = random init (the paper's main setting)."""

    pretrained: str = ""  # a timm name with tag (e.g. "resnet50.tv_in1k") or a weights file


@dataclass
class ExportConfig:
    """Export of the trained backbone as a timm-loadable folder at the end of the run."""

    enabled: bool = True
    tag: str = ""  # tag of the exported variant; empty = the recipe name


@dataclass
class PretrainConfig:
    name: str = "mdp"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    init: InitConfig = field(default_factory=InitConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


# ---------------------------------------------------------------- type checking


class _YamlLoader(yaml.SafeLoader):
    """YAML as people write numbers: ``1e-4`` and ``5E3`` are floats (YAML 1.1 reads them as strings)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with exponent-only floats (``1e-4``) read as floats."""
    return yaml.load(text, Loader=_YamlLoader)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` checked against the annotation ``tp`` (int is accepted for float, lists for lists)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {_type_name(tp)}")
    if tp is Any:
        return value
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_coerce(k, key_tp, f"{where} key"): _coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        item_types = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise ConfigError(f"{where}: expected a list of {len(item_types)} values, got {value!r}")
        return tuple(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(item, item_tp, f"{where}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return _build(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an int, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")


def _build(cls: type, values: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        section = where or cls.__name__
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys of {section} are: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:  # a dataclass's own validation (__post_init__)
        raise ConfigError(f"{where or cls.__name__}: {error}") from None


def from_dict(values: dict, cls: type = PretrainConfig) -> Any:
    """Build ``cls`` from a (nested) plain dict, rejecting unknown keys and wrong types."""
    return _build(cls, values, "")


def to_dict(config: Any) -> dict:
    """The config as plain Python types (safe for YAML, JSON and ``torch.load(weights_only=True)``)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists, so YAML stays plain


# ---------------------------------------------------------------- recipes and overrides


FINETUNE_PREFIX = "finetune_"  # fine-tuning recipes share the folder; they have their own schema


def list_recipes(finetune: bool = False) -> list[str]:
    """Names of the pretraining (``finetune=True``: fine-tuning) recipes shipped in training/recipes/."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if p.stem.startswith(FINETUNE_PREFIX) == finetune)


def resolve_recipe_path(recipe: str, finetune: bool | None = None) -> Path:
    """A recipe name (``voc_ade20k``) or a path to a YAML file; ``finetune`` (if not None) is the kind of recipe the
    caller runs: a shipped name of the other kind, or an unknown name, raises listing the names of that kind."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        return path
    path = RECIPE_DIR / f"{recipe}.yaml"
    if path.is_file() and (finetune is None or recipe.startswith(FINETUNE_PREFIX) == finetune):
        return path
    kind = "recipe" if finetune is None else "fine-tuning recipe" if finetune else "pretraining recipe"
    names = list_recipes(bool(finetune)) + ([] if finetune is not None else list_recipes(True))
    if path.is_file():
        tool = "training.pretrain" if finetune else "training.finetune"
        problem = f"recipe {recipe!r} is for python -m {tool}"
    else:
        problem = f"unknown recipe {recipe!r}"
    raise ConfigError(f"{problem}; the {kind}s are: {', '.join(names)}")


def merge_recipes(base: dict, child: dict) -> dict:
    """``child`` over ``base``, nested dicts merged key by key (how ``base:`` recipes and ``--set`` combine)."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_recipes(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_recipe_dict(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The values of a recipe file with its ``base:`` chain merged in (cycles are a ``ConfigError``)."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"recipe inheritance cycle: {chain}")
    try:
        values = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping, got {type(values).__name__}")
    parent = values.pop("base", None)
    if parent is None:
        return values
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'base' must be a recipe name or file, got {parent!r}")
    parent_path = path.parent / parent if parent.endswith((".yaml", ".yml")) else resolve_recipe_path(parent)
    inherited = load_recipe_dict(parent_path, (*seen, path))
    child_method = values.get("method") or {}
    parent_method = inherited.get("method") or {}
    if "name" in child_method and child_method["name"] != parent_method.get("name"):
        # Options belong to one method; a recipe that switches methods starts from that method's defaults.
        # The window reference belongs to the parent's prototype window, so it goes with the options.
        inherited["method"] = {k: v for k, v in parent_method.items() if k not in ("options", "window_reference_batch")}
    return merge_recipes(inherited, values)


def _plain_list(raw: str) -> list[str] | None:
    """``[a, b?k=v, c]`` as the strings a person means, where YAML refuses an item (``?`` inside a flow list, as
    in dataset specs with options); None when ``raw`` is not such a flat list."""
    inner = raw.strip()
    if not (inner.startswith("[") and inner.endswith("]")) or any(c in inner[1:-1] for c in "[]{}\"'"):
        return None
    return [item.strip() for item in inner[1:-1].split(",") if item.strip()]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.1"`` -> (["optim", "lr"], 0.1). The value is parsed as YAML (so lists and bools work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set optim.lr=0.01")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        value = _plain_list(raw)
        if value is None:
            raise ConfigError(f"--set {text!r}: value is not valid YAML: {error}") from error
    return key.strip().split("."), value


# Mapping fields whose keys are not config fields (checked by their consumer: the method, the data layer).
FREE_MAPPINGS = {("method", "options"), ("data", "synthetic_sizes")}


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` strings to a plain config dict; keys are checked later by :func:`from_dict`."""
    values = merge_recipes({}, values)
    defaults = to_dict(PretrainConfig())
    for text in overrides:
        keys, value = parse_override(text)
        node, schema = values, defaults
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(schema, dict) or key not in schema or not isinstance(schema[key], dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(keys[: depth + 1])} is not a config section")
            node = node.setdefault(key, {})
            schema = schema[key]
        if keys[-1] not in schema and tuple(keys[:-1]) not in FREE_MAPPINGS:
            valid = ", ".join(sorted(schema))
            raise ConfigError(f"--set {text!r}: unknown key {'.'.join(keys)}; valid keys here: {valid}")
        node[keys[-1]] = value
    return values


def load_config(recipe: str = "demo", overrides: list[str] | None = None) -> PretrainConfig:
    """Load a recipe (name or file) with its ``base`` chain, apply ``--set`` overrides, type-check the result."""
    path = resolve_recipe_path(recipe, finetune=False)
    values = load_recipe_dict(path)
    leaf = load_yaml(path.read_text()) or {}
    if "name" not in leaf:  # an inherited name would mislabel the child recipe's runs and exports
        values["name"] = path.stem
    try:
        from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return from_dict(apply_overrides(values, overrides or []))


def save_config(config: PretrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
