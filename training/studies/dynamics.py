"""A study's pretraining curves and probe figures, read back from the runs' metrics logs."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from training.engine.logger import METRICS_NAME, read_metrics
from training.studies.design import Method


def pretraining_logs(output: Path, method: Method, seeds: list[int], key: str = "loss") -> list[list[dict]]:
    """The records holding ``key`` in each seed's pretraining metrics.jsonl (seeds without any are left out)."""
    if method.pretrain is None:
        return []
    logs = []
    for seed in seeds:
        path = output / "pretrain" / method.key / f"seed{seed}" / METRICS_NAME
        records = [r for r in read_metrics(path) if key in r] if path.is_file() else []
        if records:
            logs.append(records)
    return logs


def _mean_of(values: list) -> float | None:
    values = [float(v) for v in values if v is not None]
    return statistics.fmean(values) if values else None


def probe_dynamics(output: Path, method: Method, seeds: list[int]) -> dict:
    """Means over seeds of the learning probe's first and last records (empty for runs without probe records)."""
    probes = pretraining_logs(output, method, seeds, key="val_backbone_probe")
    return {
        "backbone_probe_start": _mean_of([log[0]["val_backbone_probe"] for log in probes]),
        "backbone_probe_end": _mean_of([log[-1]["val_backbone_probe"] for log in probes]),
        "heldout_prototype_accuracy": _mean_of([log[-1].get("val_prototype_accuracy") for log in probes]),
        "prototype_cosine": _mean_of([log[-1].get("prototype_cos_mean") for log in probes]),
    }


def pretraining_dynamics(output: Path, methods: list[Method], seeds: list[int], batch: int) -> dict:
    """``{method: {"steps", "loss_first", "loss_last", "prototype_accuracy", "seconds_per_step", "curves",
    **probe_dynamics}}``, means over the seeds' pretraining logs."""
    dynamics = {}
    for method in methods:
        logs = pretraining_logs(output, method, seeds)
        if not logs:
            continue
        speeds = [r["img_per_s"] for log in logs for r in log if r.get("img_per_s")]
        dynamics[method.key] = {
            "steps": max(log[-1]["step"] for log in logs),
            "loss_first": statistics.fmean(float(log[0]["loss"]) for log in logs),
            "loss_last": statistics.fmean(float(log[-1]["loss"]) for log in logs),
            "prototype_accuracy": _mean_of([log[-1].get("prototype_accuracy") for log in logs]),
            "seconds_per_step": batch / statistics.fmean(speeds) if speeds else math.nan,
            "curves": [[[r["step"], float(r["loss"])] for r in log] for log in logs],
            **probe_dynamics(output, method, seeds),
        }
    return dynamics
