"""Figures written to the run folder: loss curves and the class-prototype cosine-similarity heat map."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from training.engine.logger import read_metrics  # noqa: E402

NON_LOSS_KEYS = ("step", "lr", "img_per_s", "data_time_s", "compute_time_s", "data_fraction")


DYNAMICS_KEYS = (  # learning-dynamics columns drawn on the second panel when a run logged them
    "prototype_accuracy",
    "val_prototype_accuracy",
    "val_backbone_probe",
    "val_backbone_ncc",
    "prototype_cos_mean",
    "val_embed_image_share",
)


REGIME_PREFIXES = ("anchor_share_median_", "prototype_cos_within_")  # per-dataset columns of the regime panel


def _plot_columns(axis, records: list[dict], names: list[str]) -> None:
    for name in names:
        points = [(r["step"], float(r[name])) for r in records if name in r]
        axis.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            label=name,
            linewidth=1.5 if name == "loss" else 1.0,
            marker="." if len(points) < 30 else None,
        )
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)


def plot_loss_curves(metrics_path: Path, out_path: Path) -> Path:
    """Every ``loss*`` column of metrics.jsonl against the step, the learning-dynamics columns (accuracies,
    probe scores, prototype cosine) and the prototype regime (per-dataset median anchor share and prototype
    cosine) when present, and the learning rate."""
    records = read_metrics(metrics_path)
    if not records:
        raise ValueError(f"{metrics_path} holds no metrics to plot")
    losses = sorted({k for r in records for k in r if k.startswith("loss")})
    panels = [(losses, "loss", 3)]
    dynamics = [k for k in DYNAMICS_KEYS if any(k in r for r in records)]
    if dynamics:
        panels.append((dynamics, "dynamics", 2))
    regime = sorted({k for r in records for k in r if k.startswith(REGIME_PREFIXES)})
    if regime:
        panels.append((regime, "prototype regime", 2))
    heights = [height for _, _, height in panels] + [1]
    fig, axes = plt.subplots(len(heights), 1, figsize=(7, 2.2 * len(heights) + 1), sharex=True, height_ratios=heights)
    for axis, (names, label, _) in zip(axes, panels):
        _plot_columns(axis, records, names)
        axis.set_ylabel(label)
    lr = [(r["step"], r["lr"]) for r in records if "lr" in r]
    axes[-1].plot([p[0] for p in lr], [p[1] for p in lr], color="gray")
    axes[-1].set_ylabel("lr")
    axes[-1].set_xlabel("step")
    axes[-1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def plot_prototype_similarity(
    prototypes: torch.Tensor,
    counts: torch.Tensor,
    class_names: Sequence[str],
    out_path: Path,
    max_classes: int = 40,
) -> Path:
    """Cosine similarity of the ``max_classes`` most-seen initialised prototypes, labelled with class names.

    prototypes: ``[C, D]``; counts: ``[C]`` (regions seen per class, 0 = never initialised).
    """
    if prototypes.shape[0] != len(class_names) or counts.shape[0] != len(class_names):
        raise ValueError(
            f"{prototypes.shape[0]} prototypes, {counts.shape[0]} counts and {len(class_names)} class names differ"
        )
    seen = torch.nonzero(counts > 0).flatten()
    if seen.numel() == 0:
        raise ValueError("no prototype has been initialised yet; nothing to plot")
    order = seen[torch.argsort(counts[seen].float(), descending=True)][:max_classes]
    order = order.sort().values  # keep dataset blocks together
    unit = F.normalize(prototypes[order].float(), dim=1)
    similarity = (unit @ unit.T).numpy()
    names = [class_names[i] for i in order.tolist()]
    size = 3 + 0.22 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(similarity, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(f"prototype cosine similarity ({len(names)} most-seen of {int(seen.numel())} classes)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
