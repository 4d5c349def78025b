"""What a study compares and on what: the pretraining methods, the budget (schedule lengths), the datasets and the
fine-tuning targets."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from training.data.readers import open_reader
from training.data.specs import DatasetSpec, parse_spec
from training.data.synthetic import ensure_synthetic, unify_map

SYNTHETIC = "synthetic"


# The synthetic study's targets, which are also the two fine-tuning datasets whose paper numbers the table quotes.
TARGETS = ("voc_aug", "cityscapes")


# The colour jitter the demo recipe lightens for the colour-coded synthetic classes; photos get the paper's.
PHOTOMETRIC_KEYS = ("brightness", "contrast", "saturation", "hue", "grayscale_p", "blur_p")


@dataclass(frozen=True)
class Method:
    """One row of the tables: a pretraining method as ``--set`` overrides of the demo recipe (None = scratch)."""

    key: str
    label: str
    pretrain: tuple[str, ...] | None
    paper: dict = field(default_factory=dict)  # the paper's numbers for this row (docs/METHOD.md)
    paper_note: str = ""


# The demo recipe runs the full method (mixing + CSC2); every row states all of its options explicitly.
_MDP = ("method.name=mdp", "method.head_output_norm=whiten")


_SHIPPED = "tau: 0.07, window: {window}, prototype_anchors: false, within_image_weight: 1.0"


_P2PROTO = "method.options={" + _SHIPPED + ", mixing: false, sparse_coding: null}"


METHODS: tuple[Method, ...] = (
    Method(
        "scratch",
        "scratch (no pretraining)",
        None,
        paper_note="no VOC/Cityscapes number; COCO-Stuff 25.02 vs MDP 38.37 (R10)",
    ),
    Method(
        "supervised_ce",
        "supervised CE, concatenated labels",
        ("method.name=supervised_ce", "method.options={}"),
        {"voc_aug": 68.48},
        "COCO-only from scratch, 80k iterations (R3)",
    ),
    Method(
        "multi_head",
        "multi-head supervised",
        ("method.name=multi_head", "method.options={}"),
        {"voc_aug": 71.19},
        "VOC+ADE20K 100 ep (R4)",
    ),
    Method(
        "pixel_to_pixel",
        "pixel-to-pixel contrast",
        ("method.name=pixel_to_pixel", "method.options={tau: 0.07}"),
        {"voc_aug": 71.19, "cityscapes": 77.17},
        "VOC+ADE20K 100 ep (R2)",
    ),
    Method(
        "region_bank",
        "pixel-to-region bank",
        ("method.name=region_bank", "method.options={tau: 0.07, bank_size: 1024}"),
        {},
        "VOC-only 200 ep: region 70.11 < class 70.56 (R5)",
    ),
    Method(
        "mdp_no_mixing",
        "MDP prototypes, no mixing",
        (*_MDP, _P2PROTO),
        {"voc_aug": 71.98, "cityscapes": 75.37},
        "VOC+ADE20K 100 ep, no CSC (R7, R8)",
    ),
    Method(
        "mdp_unified",
        "MDP prototypes, unified labels",
        (*_MDP, _P2PROTO, "data.unify_map={unify_map}"),
        {"voc_aug": 71.91},
        "vs 71.93 with concatenated labels (R9)",
    ),
    Method(
        "mdp",
        "MDP prototypes + mixing",
        (*_MDP, "method.options={" + _SHIPPED + ", mixing: true, sparse_coding: null}"),
        {},
        "no number without CSC",
    ),
    Method(
        "mdp_csc",
        "MDP prototypes + mixing + CSC2 (full)",
        (*_MDP, "method.options={" + _SHIPPED + ", mixing: true, sparse_coding: csc2}"),
        {"voc_aug": 73.32, "cityscapes": 77.75},
        "VOC+ADE20K 100 ep (R2)",
    ),
    Method(
        "mdp_csc_centred",
        "full MDP, dataset-centred prototypes",
        (*_MDP, "method.options={" + _SHIPPED + ", mixing: true, sparse_coding: csc2, dataset_centring: true}"),
        {},
        "beyond the paper: each dataset's mean embedding taken out (docs/METHOD.md)",
    ),
    Method(
        "mdp_csc_no_within_image",
        "full MDP, whitened head without the within-image term",
        (
            *_MDP,
            "method.options={tau: 0.07, window: {window}, prototype_anchors: false, within_image_weight: 0.0, "
            "mixing: true, sparse_coding: csc2}",
        ),
        {},
        "the shipped head's whitening alone (docs/LEARNING.md)",
    ),
    Method(
        "mdp_csc_anchored",
        "full MDP, shipped head with anchored prototypes",
        (
            *_MDP,
            "method.options={tau: 0.07, window: {window}, prototype_anchors: true, within_image_weight: 1.0, "
            "mixing: true, sparse_coding: csc2}",
        ),
        {},
        "prototypes start from fading random anchors (docs/LEARNING.md)",
    ),
    Method(
        "mdp_csc_previous",
        "full MDP, previous head (plain, anchored prototypes)",
        (
            "method.name=mdp",
            "method.head_output_norm=none",
            "method.options={tau: 0.07, window: {window}, prototype_anchors: true, within_image_weight: 0.0, "
            "mixing: true, sparse_coding: csc2}",
        ),
        {},
        "the head before whitening and the within-image term (docs/LEARNING.md)",
    ),
)


METHOD_KEYS = tuple(method.key for method in METHODS)


@dataclass
class Budget:
    """How much compute each run gets; the same for every method."""

    pretrain_epochs: int = 2
    finetune_iterations: int = 120
    synthetic_root: str = ""  # "" = the data layer's cache folder
    synthetic_sizes: dict = field(default_factory=dict)  # images per split (tests), {} = the benchmark's defaults
    pretrain_batch: int = 8
    finetune_batch: int = 8
    crop: int = 96
    arch: str = "resnet18"
    base_size: int = 0  # short side before the random rescale and at evaluation; 0 = the recipes' defaults
    pretrain_max_steps: int = 0  # >0 caps each pretraining (smoke runs)
    window: int = 4096  # the MDP rows' prototype window (the paper's 4096)


FULL = Budget()


# Command-line options that change the budget: (option, Budget field).
BUDGET_OPTIONS = (
    ("--arch", "arch"),
    ("--crop", "crop"),
    ("--base-size", "base_size"),
    ("--pretrain-epochs", "pretrain_epochs"),
    ("--pretrain-steps", "pretrain_max_steps"),
    ("--finetune-iterations", "finetune_iterations"),
    ("--window", "window"),
)


DEFAULT_SEEDS = [0, 1, 2]


QUICK = Budget(
    pretrain_epochs=1,
    finetune_iterations=4,
    pretrain_batch=4,
    finetune_batch=4,
    crop=64,
    synthetic_sizes={
        "voc_train": 4,
        "voc_aug": 8,
        "voc_val": 4,
        "ade20k_train": 8,
        "ade20k_val": 2,
        "coco_stuff164k_train": 8,
        "coco_stuff164k_val": 2,
        "cityscapes_train": 8,
        "cityscapes_val": 4,
    },
)


@dataclass(frozen=True)
class Target:
    """A fine-tuning target: trained on its format's training split, scored on ``eval_spec`` (split ``split``)."""

    key: str  # the dataset's label-space name: job folder, table column, JSON key
    train_spec: str
    eval_spec: str
    split: str
    seen: bool  # one of the pretraining datasets

    @property
    def role(self) -> str:
        return "seen" if self.seen else "held out"


@dataclass
class StudyData:
    """What a study pretrains on (spec strings and label-space names, in label-space order) and fine-tunes on."""

    pretrain: list[str]
    names: list[str]
    targets: list[Target]
    synthetic: bool
    unify_map: dict | None = None


def same_dataset(a: DatasetSpec, b: DatasetSpec) -> bool:
    return a.name == b.name and Path(a.path).expanduser().resolve() == Path(b.path).expanduser().resolve()


def resolve_target(text: str, pretrain: list[str]) -> Target:
    """Open a target's training and evaluation splits, so layout errors surface before any job runs."""
    spec = parse_spec(text)
    train_spec = DatasetSpec(spec.name, spec.path)
    train_reader, eval_reader = open_reader(train_spec, train=True), open_reader(spec, train=False)
    if [s.image for s in train_reader.samples] == [s.image for s in eval_reader.samples]:
        print(f"warning: target {text} is fine-tuned and scored on the same {len(eval_reader)} images", file=sys.stderr)
    seen = any(same_dataset(spec, parse_spec(other)) for other in pretrain)
    return Target(train_reader.dataset_name, str(train_spec), str(spec), eval_reader.split, seen)


def resolve_study_data(pretrain: list[str], targets: list[str], unify_file: Path | None, budget: Budget) -> StudyData:
    """The datasets of a study; ``pretrain == ["synthetic"]`` is the synthetic benchmark with its two targets."""
    synthetic = pretrain == [SYNTHETIC]
    if synthetic:
        specs = ensure_synthetic(budget.synthetic_root or None, sizes=budget.synthetic_sizes or None)
        pretrain = specs["pretrain"]
        targets = targets or [specs["pretrain_val"][0], specs["downstream_val"]]
    elif SYNTHETIC in pretrain:
        raise ValueError("--pretrain synthetic stands for the whole synthetic benchmark; do not mix it with specs")
    elif not targets:
        raise ValueError(
            "--targets: name the datasets to fine-tune on (NAME:PATH[:split]) when pretraining on dataset specs"
        )
    names = [open_reader(spec, train=True).dataset_name for spec in pretrain]
    resolved = [resolve_target(text, pretrain) for text in targets]
    keys = [target.key for target in resolved]
    if len(set(keys)) != len(keys):
        raise ValueError(f"--targets: each dataset may be a target once (got {', '.join(keys)})")
    mapping = json.loads(unify_file.read_text()) if unify_file else unify_map() if synthetic else None
    return StudyData(list(pretrain), names, resolved, synthetic, mapping)


def study_budget(args: argparse.Namespace) -> Budget:
    """The preset (``--quick`` or the full budget) with the command line's overrides."""
    budget = Budget(**asdict(QUICK if args.quick else FULL))
    for option, name in BUDGET_OPTIONS:
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None:
            setattr(budget, name, value)
    if args.synthetic_root:
        budget.synthetic_root = str(Path(args.synthetic_root).resolve())
    elif args.quick:
        budget.synthetic_root = str((args.output / "synthetic").resolve())
    return budget


def study_methods(requested: list[str] | None, has_unify_map: bool) -> list[Method]:
    """The rows to run (default: all); the unified-labels row needs a unification map."""
    keys = requested or [key for key in METHOD_KEYS if key != "mdp_unified" or has_unify_map]
    if "mdp_unified" in keys and not has_unify_map:
        raise ValueError(
            "--methods mdp_unified needs --unify-map FILE (a class-name unification map) for these datasets"
        )
    return [method for method in METHODS if method.key in keys]


def study_setup(budget: Budget, data: StudyData) -> str:
    scale = f", short side {budget.base_size} px" if budget.base_size else ""
    steps = f" (at most {budget.pretrain_max_steps} steps)" if budget.pretrain_max_steps else ""
    jitter = "" if data.synthetic else ", MoCo-v2 colour jitter"
    return (
        f"{budget.arch}, {budget.crop} px crops{scale}, batch {budget.pretrain_batch}, {budget.pretrain_epochs} "
        f"pretraining epochs{steps} over {' + '.join(data.names)} (demo recipe: OS16, SGD, cosine{jitter}; MDP "
        f"prototype window {budget.window} regions); "
        f"then DeepLabV3 at OS16, {budget.finetune_iterations} iterations at batch {budget.finetune_batch} "
        f"(MMSeg schedule: SGD 0.02, poly), whole-image evaluation{scale}"
    )
