"""The cost of the learning-dynamics instruments per step (benchmarks/instruments.py measures)."""

from __future__ import annotations

import datetime

import torch

from benchmarks.instruments import instrument_costs, instruments_lines
from benchmarks.report import Settings, load_average, machine_line, step_args
from benchmarks.train_step import (
    paper_label_space,
    synthetic_batch,
)

INSTRUMENTS_BEGIN = "<!-- instruments:begin -->"


INSTRUMENTS_END = "<!-- instruments:end -->"


def instruments_section(settings: Settings, device: torch.device) -> list[str]:
    """Cost of the learning-dynamics instruments, between markers so ``--only instruments`` can refresh it."""
    args = step_args(settings)
    label_space = paper_label_space()
    batch = synthetic_batch(label_space, settings.batch, settings.crop, device)
    load_before = load_average()
    costs = instrument_costs(args, label_space, batch, device, max(3, settings.repeats))
    when = datetime.datetime.now(datetime.timezone.utc)
    settings_line = (
        f"Measured {when:%Y-%m-%d %H:%M} UTC (`python -m benchmarks --only instruments` refreshes this "
        f"section alone). Machine: {machine_line(device)}; backbone {settings.arch} OS{settings.output_stride}, crop "
        f"{settings.crop}, batch {settings.batch}, 342 classes; load average {load_before:.2f} -> "
        f"{load_average():.2f}."
    )
    return [INSTRUMENTS_BEGIN, *instruments_lines(costs, settings_line), INSTRUMENTS_END]
