"""Figures written to the run folder: loss curves and the class-prototype cosine-similarity heat map."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from .logger import read_metrics  # noqa: E402

NON_LOSS_KEYS = ("step", "lr", "img_per_s", "data_time_s", "compute_time_s", "data_fraction")


def plot_loss_curves(metrics_path: Path, out_path: Path) -> Path:
    """Every ``loss*`` column of metrics.jsonl against the step, plus the learning rate on a second panel."""
    records = read_metrics(metrics_path)
    if not records:
        raise ValueError(f"{metrics_path} holds no metrics to plot")
    steps = [r["step"] for r in records]
    names = sorted({k for r in records for k in r if k.startswith("loss")})
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(3, 1))
    for name in names:
        values = [float(r[name]) if name in r else float("nan") for r in records]
        ax_loss.plot(steps, values, label=name, linewidth=1.5 if name == "loss" else 1.0)
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(steps, [r.get("lr", float("nan")) for r in records], color="gray")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
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
