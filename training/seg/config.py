"""Fine-tuning configuration: strict dataclasses, loaded from ``training/recipes/finetune_*.yaml`` + ``--set``.

The defaults are MMSegmentation's R-50-D8 schedule (SGD lr 0.01, momentum 0.9, weight decay 5e-4, poly 0.9 down
to 1e-4, iteration-based, global batch 16, crop 512x512) with the MDP paper's two changes: a standard ResNet-50
(timm's ``resnet50``, 7x7 stem) and no auxiliary head. Recipes inherit with ``base:`` and are type-checked by
``training.config`` (unknown keys and wrong types are errors naming the file or the ``--set`` argument).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdp_hub.catalog import IMAGENET_MEAN, IMAGENET_STD
from training.config import ConfigError, from_dict, load_recipe_dict, merge_recipes, parse_override, resolve_recipe_path
from training.seg.inference import MODES
from training.seg.models import SegModelConfig

DEFAULT_RECIPE = "finetune_synthetic"


@dataclass
class FinetuneDataConfig:
    """Dataset specs (``NAME:PATH[:split]``, see ``training.data.specs``) and the training crop.

    The spec ``synthetic`` means the project's synthetic downstream benchmark, generated on first use."""

    train: str = "synthetic"
    val: str = "synthetic"
    crop_size: list[int] = field(default_factory=lambda: [512, 512])
    base_size: int = 512  # short side before the random ratio (MMSeg scale (2048, 512)); 0 = image's own size
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    num_workers: int = 4
    skip_bad_samples: bool = False  # data.train only: drop missing files, replace undecodable samples (docs/DATA.md)
    index_cache: str = ""  # cached file listings: empty = ~/.cache/mdp-hub/dataset-index, off = none (docs/DATA.md)
    # Where MMSeg's colour jitter runs: "device" = batched on the training device, workers send uint8 crops and
    # uint8 masks (training.data.device_augment); "worker" = PIL in the data workers; "auto" = device on CUDA.
    photometric_on: str = "auto"


@dataclass
class FinetuneOptimConfig:
    """SGD with MMSeg's ``PolyLR``: lr(t) = (lr - min_lr) * (1 - t / T) ** power + min_lr, per iteration."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    power: float = 0.9
    min_lr: float = 1e-4
    avg_non_ignore: bool = False  # MMSeg's CE default: mean over all pixels, ignored ones counting 0


@dataclass
class FinetuneTrainConfig:
    iterations: int = 40000
    batch_size: int = 16  # global batch per iteration (MMSeg's "4xb4"), split evenly over the processes
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # none | bf16 | fp16
    sync_bn: bool = True  # SyncBatchNorm when distributed on CUDA (MMSeg's SyncBN)
    log_every: int = 50
    checkpoint_every: int = 4000  # rewrite last.pth
    eval_every: int = 4000  # validate (0 = only at the end); MMSeg validates every 10% of the run
    keep_snapshots: int = 1  # snapshots checkpoint_<step>.pth kept at each evaluation
    threads: int = 0  # >0 sets torch.set_num_threads (CPU runs)


@dataclass
class EvalConfig:
    """Test-time protocol. ``test_scale`` = (long, short) bound of MMSeg's keep-ratio ``Resize`` before
    inference, e.g. [2048, 512]; empty = native size. Scores are always taken at the label's own resolution."""

    mode: str = "whole"  # whole | slide
    crop_size: list[int] = field(default_factory=lambda: [512, 512])  # slide window
    stride: list[int] = field(default_factory=lambda: [341, 341])
    flip: bool = False
    test_scale: list[int] = field(default_factory=lambda: [2048, 512])
    overlays: int = 4  # prediction overlays (PNG) written by ``training.evaluate``


@dataclass
class FinetuneConfig:
    name: str = "finetune"
    description: str = ""
    init: str = "scratch"  # scratch | timm name | hf-hub:... | local-dir:... | export folder | checkpoint file
    model: SegModelConfig = field(default_factory=SegModelConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.eval.mode not in MODES:
            raise ConfigError(f"eval.mode: {self.eval.mode!r} is not one of {MODES}")
        for name, pair in (
            ("data.crop_size", self.data.crop_size),
            ("eval.crop_size", self.eval.crop_size),
            ("eval.stride", self.eval.stride),
        ):
            if len(pair) != 2 or min(pair) <= 0:
                raise ConfigError(f"{name}: expected [height, width] > 0, got {pair}")
        if self.eval.test_scale and (len(self.eval.test_scale) != 2 or min(self.eval.test_scale) <= 0):
            raise ConfigError(f"eval.test_scale: expected [] or [long, short] > 0, got {self.eval.test_scale}")
        if self.data.photometric_on not in ("auto", "device", "worker"):
            raise ConfigError(
                f"data.photometric_on {self.data.photometric_on!r}: expected 'auto', 'device' or 'worker'"
            )
        if self.train.iterations <= 0 or self.train.batch_size <= 0:
            raise ConfigError(
                f"train.iterations={self.train.iterations} and train.batch_size="
                f"{self.train.batch_size} must both be positive"
            )


def overrides_to_dict(overrides: list[str]) -> dict:
    """``["optim.lr=0.02", "model.head=fcn"]`` -> nested dict; keys are checked when the config is built."""
    values: dict = {}
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return values


def load_finetune_config(recipe: str = DEFAULT_RECIPE, overrides: list[str] | None = None) -> FinetuneConfig:
    """A recipe (name under training/recipes or a YAML file), its ``base`` chain, then ``--set`` overrides."""
    path = resolve_recipe_path(recipe, finetune=True)
    values = load_recipe_dict(path)
    values.setdefault("name", path.stem)
    try:
        from_dict(values, FinetuneConfig)
    except (ConfigError, TypeError) as error:
        raise ConfigError(f"{path}: {error}") from None
    try:
        return from_dict(merge_recipes(values, overrides_to_dict(overrides or [])), FinetuneConfig)
    except ConfigError as error:
        raise ConfigError(f"--set: {error}") from None


SYNTHETIC = "synthetic"


def resolve_data_spec(spec: str, *, train: bool) -> str:
    """A dataset spec, with ``synthetic`` standing for the synthetic downstream benchmark (generated once)."""
    if spec != SYNTHETIC:
        return spec
    from training.data.synthetic import ensure_synthetic  # generating data is only needed for the demo

    return ensure_synthetic()["downstream_train" if train else "downstream_val"]
