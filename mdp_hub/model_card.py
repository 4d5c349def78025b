"""The Hub model card (README.md) of an export: ``ModelCardData`` YAML + the template in ``model_cards/``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from . import catalog
from .provenance import PARTIAL_SUFFIX

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "model_cards" / "mdp_resnet.md"
METRIC_KEYS = {"dataset", "mIoU", "split", "source_name", "source_url"}


@dataclass(frozen=True)
class DownstreamResult:
    """One downstream evaluation of exported weights, e.g. ``{"dataset": "ADE20K", "mIoU": 42.1}``."""

    dataset: str
    miou: float
    split: str = "validation"
    source_name: str | None = None
    source_url: str | None = None

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> "DownstreamResult":
        unknown = set(entry) - METRIC_KEYS
        missing = {"dataset", "mIoU"} - set(entry)
        if unknown or missing:
            raise ValueError(
                f"metrics entry {dict(entry)!r}: "
                + "; ".join(
                    filter(
                        None,
                        [
                            f"unknown keys {sorted(unknown)}" if unknown else "",
                            f"missing keys {sorted(missing)}" if missing else "",
                        ],
                    )
                )
                + f" (allowed: {sorted(METRIC_KEYS)})"
            )
        miou = entry["mIoU"]
        if isinstance(miou, bool) or not isinstance(miou, (int, float)) or not 0.0 <= miou <= 100.0:
            raise ValueError(f"metrics entry {dict(entry)!r}: mIoU must be a number in [0, 100] (percent)")
        return cls(
            str(entry["dataset"]),
            float(miou),
            str(entry.get("split", "validation")),
            entry.get("source_name"),
            entry.get("source_url"),
        )

    def to_dict(self) -> dict[str, Any]:
        out = {"dataset": self.dataset, "mIoU": self.miou, "split": self.split}
        out.update({k: v for k, v in (("source_name", self.source_name), ("source_url", self.source_url)) if v})
        return out

    def eval_result(self) -> EvalResult:
        known = _dataset_by_name(self.dataset)
        dataset_type = known.hub_id if known and known.hub_id else re.sub(r"[^a-z0-9]+", "_", self.dataset.lower())
        return EvalResult(
            task_type="image-segmentation",
            dataset_type=dataset_type,
            dataset_name=self.dataset,
            dataset_split=self.split,
            metric_type="mean_iou",
            metric_name="mIoU",
            metric_value=self.miou,
            source_name=self.source_name,
            source_url=self.source_url,
        )


def parse_metrics(metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[DownstreamResult]:
    """Accept one ``{"dataset", "mIoU"}`` dict or a list of them; None means no known results."""
    if metrics is None:
        return []
    entries = [metrics] if isinstance(metrics, Mapping) else list(metrics)
    return [DownstreamResult.from_dict(entry) for entry in entries]


@dataclass
class CardInfo:
    """Everything the card says about one export."""

    model_name: str
    arch: str
    tag: str | None
    repo_id: str
    sha256: str
    params_m: float
    input_size: Sequence[int]
    mean: Sequence[float]
    std: Sequence[float]
    training_text: str
    results: list[DownstreamResult] = field(default_factory=list)
    num_prototype_classes: int | None = None
    dataset_keys: Sequence[str] = ()  # catalogue datasets the weights were trained on (what ran, not the recipe)

    @property
    def model_id(self) -> str:
        return f"{self.model_name}.{self.tag}" if self.tag else self.model_name

    @property
    def recipe(self) -> catalog.Recipe | None:
        """The paper recipe these weights completed (the export keeps a recipe tag only for a completed run)."""
        return catalog.RECIPES_BY_TAG.get(self.tag) if self.tag else None

    @property
    def partial_recipe(self) -> catalog.Recipe | None:
        """The paper recipe of which these weights ran only a part (tag ``<recipe>-partial``)."""
        base = self.tag.removesuffix(PARTIAL_SUFFIX) if self.tag and self.tag.endswith(PARTIAL_SUFFIX) else None
        return catalog.RECIPES_BY_TAG.get(base) if base else None

    @property
    def recipe_text(self) -> str:
        if self.recipe:
            return self.recipe.description
        if self.partial_recipe:
            return (
                f"a partial run of the `{self.partial_recipe.tag}` recipe ({self.partial_recipe.description}); "
                "not the recipe's weights, see Training"
            )
        return "custom run (no paper recipe tag); see Training"


def render_card(info: CardInfo) -> str:
    """README.md text: YAML metadata (with ``model-index`` when results are known) and the template body."""
    hub_datasets = [catalog.DATASETS[key].hub_id for key in info.dataset_keys]
    card_data = ModelCardData(
        model_name=info.model_id,
        library_name="timm",
        license=catalog.LICENSE,
        pipeline_tag="image-feature-extraction",
        tags=["image-feature-extraction", "timm", "backbone", "semantic-segmentation", "mdp"],
        datasets=[hub_id for hub_id in hub_datasets if hub_id] or None,
        metrics=["mean_iou"] if info.results else None,
        eval_results=[result.eval_result() for result in info.results] or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_id=info.model_id,
        model_name=info.model_name,
        tag=info.tag,
        arch=info.arch,
        repo_id=info.repo_id,
        summary=_summary(info),
        params_m=f"{info.params_m:.1f}",
        recipe_text=info.recipe_text,
        input_size="x".join(str(v) for v in info.input_size[1:]),
        mean=list(info.mean),
        std=list(info.std),
        paper_name=catalog.PAPER_NAME,
        paper_url=catalog.PAPER_URL,
        paper_id=catalog.PAPER_ID,
        license=catalog.LICENSE,
        sha256=info.sha256,
        has_prototypes=info.num_prototype_classes is not None,
        num_classes=info.num_prototype_classes,
        training_text=info.training_text,
        evaluation_text=_evaluation_text(info),
        citation=catalog.CITATION,
    )
    return str(card)


def _summary(info: CardInfo) -> str:
    if info.recipe:
        what = f"{info.recipe.description}."
    elif info.partial_recipe:
        what = f"Weights from {info.recipe_text.split(';')[0]}, not the finished recipe."
    else:
        what = "Weights from a custom MDP run."
    return (
        f"A {info.arch} backbone pretrained with Multi-Dataset Pretraining (MDP, {catalog.PAPER_ID}) for "
        f"semantic segmentation. {what}"
    )


def _evaluation_text(info: CardInfo) -> str:
    lines = []
    if info.results:
        lines += [
            "Downstream results of **these weights** (also in the `model-index` metadata):",
            "",
            "| dataset | split | mIoU (%) |",
            "|---|---|---|",
        ]
        lines += [f"| {r.dataset} | {r.split} | {r.miou:.2f} |" for r in info.results]
    else:
        lines.append("No downstream evaluation of these weights has been recorded yet.")
    paper = catalog.paper_miou(info.model_name, info.tag) if info.recipe else {}
    if paper:
        lines += [
            "",
            "For reference, **the paper's numbers** for a ResNet-50 pretrained with this recipe (DeepLab-style "
            "fine-tuning in MMSegmentation, single scale; not measured on these weights):",
            "",
            "| dataset | paper mIoU (%) | paper's supervised ImageNet baseline |",
            "|---|---|---|",
        ]
        for key, value in paper.items():
            baseline = catalog.PAPER_IMAGENET_BASELINE_MIOU.get(key)
            lines.append(f"| {catalog.DATASETS[key].name} | {value:.2f} | {f'{baseline:.2f}' if baseline else 'n/a'} |")
    return "\n".join(lines)


def _dataset_by_name(name: str) -> catalog.Dataset | None:
    lowered = name.lower()
    return next(
        (d for d in catalog.DATASETS.values() if lowered in (d.key, d.name.lower(), d.name.split(" ")[0].lower())), None
    )
