"""What a training checkpoint says ran, and whether that earns a paper recipe's weight tag.

An export may only call its weights ``mdp_resnet50.voc_200ep`` when the checkpoint shows a completed run of that
recipe: the recipe's name, method, datasets, init and number of epochs, every step of its schedule done. A run of
the recipe that stopped early (``train.max_steps``, a kill) is tagged ``<tag>-partial``; anything else (another
recipe, other data, a plain state dict without any record) is refused with the differences named.

    >>> run = RunRecord.from_checkpoint(torch.load("runs/voc_200ep/last.pth", weights_only=True))
    >>> resolve_tag("voc_200ep", run)   # 'voc_200ep', 'voc_200ep-partial', or RecipeClaimError
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from . import catalog
from .checkpoint_io import is_training_checkpoint

PARTIAL_SUFFIX = "-partial"
SYNTHETIC_DATA = "synthetic"  # the trainer's generated benchmark (data.datasets: [synthetic])


class RecipeClaimError(ValueError):
    """A paper recipe tag was asked for weights whose checkpoint does not show a run of that recipe."""


@dataclass(frozen=True)
class RunRecord:
    """One training run as its checkpoint records it. ``schedule_steps`` is None for checkpoints written before
    the trainer recorded its progress: their completeness is unknown and never assumed."""

    kind: str
    recipe: str | None  # the config's name (the recipe file the run started from)
    method: str | None
    datasets: tuple[str, ...]  # label-space dataset names, i.e. data formats such as voc_aug
    data_specs: tuple[str, ...]  # data.datasets as configured (paths, or "synthetic")
    unlabeled_folders: int
    init: str  # "random" or the initial weights (timm name or file)
    steps_done: int
    epochs_completed: int | None
    schedule_steps: int | None
    schedule_epochs: int | None
    max_steps: int

    @classmethod
    def from_checkpoint(cls, content: Mapping[str, Any]) -> RunRecord | None:
        """The record of a trainer checkpoint; None for a plain state dict (it records no run)."""
        if not is_training_checkpoint(content):
            return None
        config = content.get("config") or {}
        train, data, method, init = (_section(config, name) for name in ("train", "data", "method", "init"))
        label_space = content.get("label_space") or {}
        progress = content.get("progress") or {}
        configured_epochs = sum(int(stage.get("epochs", 0)) for stage in train.get("stages") or []) or train.get(
            "epochs"
        )
        return cls(
            kind=str(content.get("kind", "unknown")),
            recipe=config.get("name"),
            method=method.get("name"),
            datasets=tuple(
                str(d["name"]) for d in label_space.get("datasets", []) if isinstance(d, Mapping) and d.get("name")
            ),
            data_specs=tuple(data.get("datasets") or ()),
            unlabeled_folders=len(data.get("unlabeled") or ()),
            init=init.get("pretrained") or "random",
            steps_done=int(progress.get("steps_done", content.get("step", 0))),
            epochs_completed=progress.get("epochs_completed"),
            schedule_steps=progress.get("schedule_steps"),
            schedule_epochs=progress.get("schedule_epochs", configured_epochs),
            max_steps=int(train.get("max_steps") or 0),
        )

    @property
    def completed(self) -> bool:
        """Every step of the configured schedule ran."""
        return self.schedule_steps is not None and self.steps_done >= self.schedule_steps

    @property
    def dataset_keys(self) -> tuple[str, ...]:
        """The catalogue datasets (``catalog.DATASETS`` keys) the run trained on; unknown formats are left out."""
        keys = [key for name in self.datasets for key, d in catalog.DATASETS.items() if name in d.formats]
        if self.unlabeled_folders:
            keys.append(catalog.UNLABELED_DATASET)
        return tuple(dict.fromkeys(keys))

    def summary(self) -> str:
        """One sentence on what ran, e.g. for the model card."""
        epochs = (
            f"{self.epochs_completed} of {self.schedule_epochs} epochs"
            if self.epochs_completed is not None
            else f"{self.schedule_epochs} epochs scheduled"
        )
        steps = (
            f"{self.steps_done} of {self.schedule_steps} steps"
            if self.schedule_steps is not None
            else f"{self.steps_done} steps (schedule not recorded)"
        )
        state = "completed" if self.completed else "not completed"
        if not self.completed and self.max_steps and self.steps_done >= self.max_steps:
            state += f": capped by train.max_steps={self.max_steps}"
        data = ", ".join(self.datasets) or "no labelled dataset"
        if self.unlabeled_folders:
            data += f" + {self.unlabeled_folders} unlabeled folder(s)"
        if SYNTHETIC_DATA in self.data_specs:
            data += " (the synthetic benchmark)"
        return (
            f"{self.kind} run of recipe '{self.recipe}' (method {self.method}) on {data}, init {self.init}: "
            f"{steps}, {epochs}, {state}."
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "completed": self.completed, "dataset_keys": list(self.dataset_keys)}


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = config.get(name)
    return value if isinstance(value, Mapping) else {}


def recipe_differences(recipe: catalog.Recipe, run: RunRecord | None) -> list[str]:
    """How ``run`` differs from ``recipe`` in anything but its length (empty when it is a run of the recipe)."""
    if run is None:
        return ["the weights come from a plain state dict, which records no training run"]
    wanted_init = "imagenet" if recipe.init == "imagenet" else "random"
    checks = [
        (run.kind == "pretrain", f"it is a {run.kind} checkpoint, not pretraining"),
        (run.recipe == recipe.tag, f"the run's recipe is '{run.recipe}'"),
        (run.method == "mdp", f"the run's method is '{run.method}'"),
        (SYNTHETIC_DATA not in run.data_specs, "it trained on the synthetic benchmark"),
        (
            set(run.dataset_keys) == set(recipe.datasets),
            f"it trained on {', '.join(run.datasets) or 'nothing'}, not {recipe.dataset_names}",
        ),
        ((run.init == "random") == (wanted_init == "random"), f"its init is {run.init}, not {wanted_init}"),
        (
            run.schedule_epochs == recipe.epochs,
            f"it was scheduled for {run.schedule_epochs} epochs, not {recipe.epochs}",
        ),
    ]
    return [problem for ok, problem in checks if not ok]


def resolve_tag(tag: str | None, run: RunRecord | None, *, source: object = "checkpoint") -> str | None:
    """The tag the export may carry: a paper recipe tag only for a completed run of that recipe, ``<tag>-partial``
    for an incomplete one; other tags are returned as given (they claim no recipe).

    Raises ``RecipeClaimError`` naming every difference when ``tag`` (or ``<tag>-partial``) names a paper recipe
    that the run is not.
    """
    base = tag.removesuffix(PARTIAL_SUFFIX) if tag else None
    recipe = catalog.RECIPES_BY_TAG.get(base) if base else None
    if recipe is None:
        return tag
    problems = recipe_differences(recipe, run)
    if problems:
        suggestion = run.recipe if run and run.recipe and run.recipe not in catalog.RECIPES_BY_TAG else "custom"
        raise RecipeClaimError(
            f"{source}: tag '{tag}' names the paper recipe '{recipe.description}', but {'; '.join(problems)}; "
            f"export without --tag or with a tag of your own (e.g. --tag {suggestion})"
        )
    return base if run.completed and tag == base else base + PARTIAL_SUFFIX
