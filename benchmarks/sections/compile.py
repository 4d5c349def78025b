"""Section 7: torch.compile of the MDP step against eager (benchmarks/compile_step.py measures)."""

from __future__ import annotations

import time

import torch

from benchmarks import compile_step
from benchmarks.report import Settings, load_average, machine_line


def compile_section(settings: Settings) -> list[str]:
    """torch.compile of the MDP step against eager (benchmarks/compile_step.py), between markers (``--only``)."""
    load, clock = load_average(), time.perf_counter()
    report = compile_step.run(
        settings.compile_crop, settings.compile_batch, settings.compile_steps, settings.compile_backend
    )
    lines = compile_step.section_lines(report, time.perf_counter() - clock, (load, load_average()))
    return [
        "<!-- compile:begin -->",
        "## 7. torch.compile of the MDP step",
        "",
        f"Machine: {machine_line(torch.device('cpu'))}; `python -m benchmarks --only compile` refreshes this "
        "section alone.",
        "",
        *lines,
        "<!-- compile:end -->",
    ]
