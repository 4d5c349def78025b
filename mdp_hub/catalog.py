"""The MDP pretraining recipes, their weight tags and Hub repositories.

One tag per pretraining recipe of the paper (arXiv 2106.04121). The downstream mIoU values in
``PAPER_MIOU`` are **the paper's numbers** for a ResNet-50 (from the authors' rebuttal, see
docs/HUB.md), quoted so users can compare; they are not results of this project's weights.
Results measured on weights exported by this project travel with the export (model-index in
the model card), never through this table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .errors import WeightsNotAvailableError

ORG_ENV_VAR = "MDP_HUB_ORG"
DEFAULT_ORG = "mdp-hub"

# timm architecture behind each registered mdp_* name: a plain timm ResNet with the standard
# 7x7 stem, exactly the network the trainer optimises (so exports say "architecture": <arch>).
ARCHITECTURES = {
    "mdp_resnet18": "resnet18",
    "mdp_resnet50": "resnet50",
    "mdp_resnet101": "resnet101",
}

PAPER_ID = "arXiv:2106.04121"
PAPER_NAME = "Multi-dataset Pretraining: A Unified Model for Semantic Segmentation"
PAPER_URL = "https://arxiv.org/abs/2106.04121"
LICENSE = "apache-2.0"

# The trainer normalises with ImageNet statistics and pretrains on 512x512 crops.
IMAGENET_MEAN = IMAGENET_DEFAULT_MEAN  # (0.485, 0.456, 0.406), timm's normalisation of ImageNet models
IMAGENET_STD = IMAGENET_DEFAULT_STD
INPUT_SIZE = (3, 512, 512)

CITATION = (
    "@article{shi2021mdp,\n"
    "  title   = {Multi-dataset Pretraining: A Unified Model for Semantic Segmentation},\n"
    "  author  = {Shi, Bowen and Zhang, Xiaopeng and Xu, Haohang and Dai, Wenrui and Zou, Junni and Xiong, Hongkai "
    "and Tian, Qi},\n"
    "  journal = {arXiv preprint arXiv:2106.04121},\n"
    "  year    = {2021}\n"
    "}"
)


@dataclass(frozen=True)
class Dataset:
    """A pretraining or evaluation dataset; ``hub_id`` is its Hugging Face dataset id when one exists and
    ``formats`` are the trainer's dataset formats (``training.data`` spec names) that hold it."""

    key: str
    name: str
    hub_id: str | None = None
    formats: tuple[str, ...] = ()


DATASETS = {
    d.key: d
    for d in (
        Dataset("voc", "PASCAL VOC 2012 (aug)", formats=("voc_aug", "voc")),
        Dataset("ade20k", "ADE20K", "scene_parse_150", formats=("ade20k",)),
        Dataset("coco_stuff", "COCO-Stuff 164k", formats=("coco_stuff164k",)),
        Dataset("coco_unlabeled", "COCO (images only, pseudo-labelled by nearest prototype)"),
        Dataset("imagenet", "ImageNet-1k (supervised init)", "imagenet-1k"),
        Dataset("cityscapes", "Cityscapes", None, formats=("cityscapes",)),
    )
}
UNLABELED_DATASET = "coco_unlabeled"  # the paper's unlabeled images; a run's data.unlabeled folders stand for it


@dataclass(frozen=True)
class Recipe:
    """One pretraining recipe of the paper; its ``tag`` names the weights (``mdp_resnet50.<tag>``).

    ``paper_miou`` maps an evaluation dataset key to the downstream mIoU (%) the paper reports for a
    ResNet-50 pretrained with this recipe and fine-tuned on that dataset (empty when not reported).
    """

    tag: str
    datasets: tuple[str, ...]
    epochs: int
    init: str = "random"
    paper_miou: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def dataset_names(self) -> str:
        return " + ".join(DATASETS[key].name for key in self.datasets)

    @property
    def description(self) -> str:
        start = "ImageNet-1k supervised init, then " if self.init == "imagenet" else "from random init, "
        return f"MDP pretraining {start}{self.epochs} epochs on {self.dataset_names}"


# Order matters: the first recipe is every architecture's default tag (timm convention).
RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "voc_ade20k_coco_200ep",
        ("voc", "ade20k", "coco_stuff"),
        200,
        paper_miou={"voc": 77.79, "ade20k": 42.69, "cityscapes": 80.64, "coco_stuff": 38.37},
        note="the paper's headline model; COCO-Stuff is fine-tuned for 80k iterations",
    ),
    Recipe("voc_ade20k_200ep", ("voc", "ade20k"), 200, paper_miou={"voc": 74.30, "ade20k": 40.83}),
    Recipe(
        "voc_ade20k_100ep",
        ("voc", "ade20k"),
        100,
        paper_miou={"voc": 73.32, "ade20k": 40.17, "cityscapes": 77.75},
        note="ADE20K is quoted as 40.17 and 40.15 in two rebuttal drafts",
    ),
    Recipe(
        "in1k_voc_ade20k_200ep", ("voc", "ade20k"), 200, init="imagenet", paper_miou={"voc": 76.24, "ade20k": 41.93}
    ),
    Recipe(
        "in1k_voc_ade20k_100ep", ("voc", "ade20k"), 100, init="imagenet", paper_miou={"voc": 75.70, "ade20k": 41.57}
    ),
    Recipe("coco_100ep", ("coco_stuff",), 100, paper_miou={"voc": 76.85}),
    Recipe("in1k_coco_100ep", ("coco_stuff",), 100, init="imagenet", paper_miou={"voc": 77.56}),
    Recipe("voc_ade20k_cocounl_100ep", ("voc", "ade20k", "coco_unlabeled"), 100, paper_miou={"voc": 74.74}),
    Recipe("voc_100ep", ("voc",), 100, paper_miou={"voc": 70.92}),
    Recipe(
        "voc_200ep",
        ("voc",),
        200,
        paper_miou={"voc": 70.56},
        note="paper number measured with the pixel-to-prototype loss only (no mixing, no sparse coding)",
    ),
    Recipe(
        "voc_400ep",
        ("voc",),
        400,
        paper_miou={"voc": 72.26},
        note="paper number measured with the pixel-to-prototype loss only (no mixing, no sparse coding)",
    ),
)
RECIPES_BY_TAG = {recipe.tag: recipe for recipe in RECIPES}

# Hub repositories that hold released weights, e.g. "mdp-hub/mdp_resnet50.voc_ade20k_coco_200ep". A release adds
# its repository here; only then (or once the weights are in the local cache) does timm list the tag as pretrained.
PUBLISHED_REPOS: frozenset[str] = frozenset()
DEFAULT_TAG = RECIPES[0].tag

# The paper's reference point: supervised ImageNet ResNet-50 under the same fine-tuning protocol.
PAPER_IMAGENET_BASELINE_MIOU = {"voc": 75.63, "ade20k": 39.36, "coco_stuff": 35.25}
# The paper only trains ResNet-50; other depths have no published numbers.
PAPER_ARCH = "mdp_resnet50"


def hub_org() -> str:
    """The Hugging Face organisation that hosts the weights (env ``MDP_HUB_ORG``, default ``mdp-hub``)."""
    org = os.environ.get(ORG_ENV_VAR, "").strip() or DEFAULT_ORG
    if "/" in org:
        raise ValueError(f"{ORG_ENV_VAR}={org!r} must be a bare organisation or user name without '/'")
    return org


def repo_id(model_name: str, tag: str, org: str | None = None) -> str:
    """Hub repository of one weight tag, e.g. ``mdp-hub/mdp_resnet50.voc_ade20k_coco_200ep``."""
    return f"{org or hub_org()}/{model_name}.{tag}"


def unpublished_reason(repo_id: str, *, offline: bool) -> str | None:
    """Why the Hub cannot have ``repo_id`` (``ORG/mdp_resnetXX.tag``), known without the network; None if it may.

    ``offline``: the Hub client's ``HF_HUB_OFFLINE``."""
    if offline:
        return "HF_HUB_OFFLINE is set"
    org, _, name = repo_id.partition("/")
    model_name, _, tag = name.partition(".")
    # a tag of the default organisation missing from PUBLISHED_REPOS fails at once instead of after the Hub
    # client's network retries; another organisation (MDP_HUB_ORG) is always asked
    if org == DEFAULT_ORG and model_name in ARCHITECTURES and tag in RECIPES_BY_TAG and repo_id not in PUBLISHED_REPOS:
        return f"no weights are published for {name} yet"
    return None


def weights_not_available(repo_id: str, reason: str) -> WeightsNotAvailableError:
    """The error for weights neither in the local cache nor fetchable (``reason``), saying how to get them."""
    name = repo_id.partition("/")[2]
    tag = name.partition(".")[2]
    produce = (
        f"produce them with `python -m training.pretrain --recipe {tag}` then `mdp-hub export <run>/last.pth "
        f"<out_dir> --tag {tag}` and `mdp-hub push {repo_id} <out_dir>`, or set "
        f"{ORG_ENV_VAR} to the organisation hosting them"
        if tag in RECIPES_BY_TAG
        else "check the repo id, or fill the cache with `mdp-hub prefetch` / `mdp-hub install-cache`"
    )
    return WeightsNotAvailableError(
        f"Pretrained weights '{name}' are not available: the Hugging Face Hub repo "
        f"'{repo_id}' is not in the local cache and {reason}; {produce}."
    )


def get_recipe(tag: str) -> Recipe:
    """The recipe of ``tag``; a clear error listing the known tags otherwise."""
    try:
        return RECIPES_BY_TAG[tag]
    except KeyError:
        raise KeyError(f"unknown MDP weight tag {tag!r}; known tags: {', '.join(RECIPES_BY_TAG)}") from None


def split_name(name: str) -> tuple[str, str]:
    """``'mdp_resnet50.voc_200ep'`` -> ``('mdp_resnet50', 'voc_200ep')``; a bare name gets the default tag."""
    model_name, _, tag = name.partition(".")
    if model_name not in ARCHITECTURES:
        raise KeyError(f"unknown MDP model {model_name!r}; known models: {', '.join(ARCHITECTURES)}")
    tag = tag or DEFAULT_TAG
    get_recipe(tag)
    return model_name, tag


def paper_miou(model_name: str, tag: str) -> dict[str, float]:
    """The paper's downstream mIoU for this model and tag (only ResNet-50 was trained in the paper)."""
    return dict(get_recipe(tag).paper_miou) if model_name == PAPER_ARCH else {}
