"""A study's figures: fine-tuned mIoU per method and target, and the pretraining curves."""

from __future__ import annotations

import math
from pathlib import Path

from training.studies.design import Method


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plot(table: dict, methods: list[Method], path: Path, targets: list[dict], title: str) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4.4), squeeze=False)
    for axis, target in zip(axes[0], targets):
        key = target["key"]
        means = [table[m.key][key]["mean"] for m in methods]
        stds = [
            table[m.key][key]["std"] if table[m.key][key]["std"] == table[m.key][key]["std"] else 0 for m in methods
        ]
        colors = [
            "#999999" if m.pretrain is None else "#4477aa" if not m.key.startswith("mdp") else "#ee6677"
            for m in methods
        ]
        axis.barh(range(len(methods)), means, xerr=stds, color=colors, capsize=3)
        for i, method in enumerate(methods):
            values = table[method.key][key]["values"]
            axis.plot(values, [i] * len(values), "k.", markersize=4)
        axis.set_yticks(range(len(methods)), [m.key for m in methods])
        axis.invert_yaxis()
        finite = [v for v in means if v == v]
        if finite:
            axis.set_xlim(max(0.0, min(finite) - 8), max(finite) + 5)
        axis.set_xlabel(f"mIoU (%), {key} {target['split']} split")
        role = "seen in pretraining" if target["seen"] else "held out"
        axis.set_title(f"fine-tune on {key} ({role})", fontsize=10)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_curves(dynamics: dict, methods: list[Method], path: Path, title: str) -> None:
    """One panel per pretrained row: the logged loss against the step, one line per seed."""
    plt = _pyplot()
    rows = [m for m in methods if m.key in dynamics]
    columns = min(3, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(max(4 * columns, 7), 2.8 * lines + 0.4), squeeze=False)
    for axis, method in zip(axes.flat, rows):
        for curve in dynamics[method.key]["curves"]:
            axis.plot([step for step, _ in curve], [loss for _, loss in curve], linewidth=1)
        axis.set_title(method.key, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(rows) :]:
        axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
