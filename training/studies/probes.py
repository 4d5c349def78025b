"""Controlled probes of the demo's learning dynamics: the demo recipe with one change per row, run side by side,
each summarised from its metrics log into one table of the learning page."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from training.engine.logger import read_metrics

SECTION_BEGIN = "<!-- probes:begin (written by python -m training.probes) -->"


SECTION_END = "<!-- probes:end -->"


_NO_EXTRAS = "method.options={mixing: false, sparse_coding: null}"


@dataclass(frozen=True)
class Probe:
    key: str
    label: str
    overrides: tuple[str, ...] = ()


# The head and prototypes before the whitened head (docs/LEARNING.md), for the rows that vary them; their
# windows are literal (not scaled with the batch), as these rows were defined.
_PREVIOUS = (
    "method.head_output_norm=none",
    "method.options.within_image_weight=0.0",
    "method.options.prototype_anchors=true",
    "method.window_reference_batch=0",
)


PROBES: tuple[Probe, ...] = (
    Probe("demo", "demo as shipped (whitened head, within-image term, class means from the first step)"),
    Probe("previous", "previous head: plain output, anchored prototypes, window 4096", _PREVIOUS),
    Probe(
        "before",
        "the first demo: plain head, window 16, prototypes from first regions",
        (*_PREVIOUS, "method.options.window=16", "method.options.prototype_anchors=false"),
    ),
    Probe(
        "no_anchors",
        "plain head, prototypes from first regions",
        (*_PREVIOUS, "method.options.prototype_anchors=false"),
    ),
    Probe(
        "no_anchors_m0999",
        "... and a slow key encoder (momentum 0.999)",
        (*_PREVIOUS, "method.options.prototype_anchors=false", "method.momentum=0.999", "method.momentum_final=0.999"),
    ),
    Probe("window_16", "plain head, anchors, window 16", (*_PREVIOUS, "method.options.window=16")),
    Probe("window_256", "plain head, anchors, window 256", (*_PREVIOUS, "method.options.window=256")),
    Probe("tau_0.2", "tau 0.2", ("method.options.tau=0.2",)),
    Probe("lr_0.1x", "learning rate x0.1", ("optim.lr=0.1",)),
    Probe("no_extras", "no mixing, no CSC", (_NO_EXTRAS,)),
    Probe(
        "adamw",
        "AdamW (lr 1e-3 at batch 8, wd 0.05)",
        ("optim.name=adamw", "optim.lr=0.032", "optim.weight_decay=0.05"),
    ),
    Probe("embed_128", "embedding 128, head hidden 512", ("method.embed_dim=128", "method.head_hidden_dim=512")),
    Probe("supervised_ce", "reference: supervised CE, same steps", ("method.name=supervised_ce", "method.options={}")),
)


def run_probe(probe: Probe, output: Path) -> Path:
    """Run one row (skipped when its metrics already reach the last step); returns its run folder."""
    run_dir = output / probe.key
    if (run_dir / "probe_done.json").is_file():
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = ("export.enabled=false", "train.plots=false", "train.threads=1", *probe.overrides)
    command = [sys.executable, "-m", "training.pretrain", "--output", str(run_dir)]
    for override in overrides:
        command += ["--set", override]
    with open(run_dir / "probe.log", "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"{probe.key}: python -m training.pretrain exited with {code}; see {run_dir / 'probe.log'}")
    (run_dir / "probe_done.json").write_text(json.dumps({"command": command[1:]}))
    return run_dir


def _mean(records: list[dict], key: str) -> float:
    values = [float(r[key]) for r in records if key in r]
    return statistics.fmean(values) if values else float("nan")


def _last(records: list[dict], key: str) -> float:
    values = [float(r[key]) for r in records if key in r]
    return values[-1] if values else float("nan")


def summarise(metrics_path: Path) -> dict[str, float]:
    """The learning criteria of one run: loss and accuracy early vs late, prototype spread, probe scores."""
    records = read_metrics(metrics_path)
    total = max(r["step"] for r in records)
    loss_key = "loss_proto" if any("loss_proto" in r for r in records) else "loss"
    early = [r for r in records if 0 < r["step"] <= 0.1 * total]
    late = [r for r in records if r["step"] > 0.8 * total]
    first = next((r for r in records if "prototype_accuracy" in r), {})
    return {
        "steps": total,
        "loss_early": _mean(early, loss_key),
        "loss_late": _mean(late, loss_key),
        "loss_ratio": _mean(late, loss_key) / _mean(early, loss_key),
        "accuracy_first": float(first.get("prototype_accuracy", float("nan"))),
        "accuracy_late": _mean(late, "prototype_accuracy"),
        "prototype_cos_end": _last(records, "prototype_cos_mean"),
        "val_prototype_accuracy": _last(records, "val_prototype_accuracy"),
        "val_backbone_probe_init": float(records[0].get("val_backbone_probe", float("nan"))),
        "val_backbone_probe": _last(records, "val_backbone_probe"),
        "val_backbone_ncc": _last(records, "val_backbone_ncc"),
        "val_embed_image_share": _last(records, "val_embed_image_share"),
        "grad_norm_backbone_first": _mean(early, "grad_norm_backbone"),
    }


def table(rows: list[tuple[Probe, dict]]) -> str:
    header = (
        "| probe | loss first 10% -> last 20% (ratio) | prototype accuracy first -> last 20% | prototype cos "
        "at end | held-out prototype accuracy | backbone linear probe (random init) | backbone NCC | "
        "image share of embeddings | backbone grad norm, first 10% |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for probe, s in rows:
        lines.append(
            f"| {probe.label} | {s['loss_early']:.2f} -> {s['loss_late']:.2f} ({s['loss_ratio']:.2f}) | "
            f"{s['accuracy_first']:.2f} -> {s['accuracy_late']:.2f} | {s['prototype_cos_end']:.2f} | "
            f"{s['val_prototype_accuracy']:.2f} | {s['val_backbone_probe']:.3f} ({s['val_backbone_probe_init']:.3f})"
            f" | {s['val_backbone_ncc']:.3f} | {s['val_embed_image_share']:.2f} | "
            f"{s['grad_norm_backbone_first']:.1f} |"
        )
    return "\n".join(lines).replace("nan", "-")


def write_section(doc: Path, text: str) -> None:
    """Replace the generated section of ``doc`` (or append one)."""
    current = doc.read_text() if doc.exists() else ""
    block = f"{SECTION_BEGIN}\n{text}\n{SECTION_END}"
    if SECTION_BEGIN in current and SECTION_END in current:
        head, rest = current.split(SECTION_BEGIN, 1)
        current = head + block + rest.split(SECTION_END, 1)[1]
    else:
        current = current.rstrip() + ("\n\n" if current else "") + block + "\n"
    doc.write_text(current)
