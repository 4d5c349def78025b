"""The table behind ``mdp-hub list``: the whole catalogue of weight tags (published or not), each with its recipe,
the paper's mIoU, whether its weights are published and whether they are in the local cache."""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import catalog
from .cache import is_cached


@dataclass(frozen=True)
class WeightInfo:
    """One ``mdp_*.<tag>`` entry; ``paper_miou`` holds the paper's ResNet-50 numbers, not measured ones."""

    name: str
    repo_id: str
    recipe: catalog.Recipe
    paper_miou: dict[str, float]
    published: bool
    cached: bool


def list_weights(*, cache_dir: str | os.PathLike | None = None) -> list[WeightInfo]:
    """All registered weights (architecture x recipe tag), default tag first per architecture."""
    return [
        WeightInfo(
            name=f"{model_name}.{recipe.tag}",
            repo_id=catalog.repo_id(model_name, recipe.tag),
            recipe=recipe,
            paper_miou=catalog.paper_miou(model_name, recipe.tag),
            published=catalog.repo_id(model_name, recipe.tag) in catalog.PUBLISHED_REPOS,
            cached=is_cached(f"{model_name}.{recipe.tag}", cache_dir=cache_dir),
        )
        for model_name in catalog.ARCHITECTURES
        for recipe in catalog.RECIPES
    ]


def format_table(rows: list[WeightInfo]) -> str:
    """Markdown table of ``rows`` (readable in a terminal, pasteable into docs)."""
    lines = [
        "| weights | pretraining data | epochs | init | paper mIoU (R-50) | published | cached |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        miou = ", ".join(f"{catalog.DATASETS[k].name.split(' ')[0]} {v:.2f}" for k, v in row.paper_miou.items())
        lines.append(
            f"| {row.name} | {row.recipe.dataset_names} | {row.recipe.epochs} | {row.recipe.init} | "
            f"{miou or '-'} | {_yes_no(row.published)} | {_yes_no(row.cached)} |"
        )
    return "\n".join(lines)


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"
