"""Section 6: the data layer at the paper's 149k samples (benchmarks/data_index.py measures)."""

from __future__ import annotations

import time

import torch

from benchmarks import data_index
from benchmarks.report import Settings, load_average, machine_line


def data_index_section(settings: Settings) -> list[str]:
    """The data layer at the paper's 149k samples (benchmarks/data_index.py), between markers (``--only``)."""
    load, clock = load_average(), time.perf_counter()
    report = data_index.run(settings.index_scale, settings.index_ranks, settings.index_workers, settings.index_trace)
    lines = data_index.section_lines(report, settings.index_ranks, settings.index_workers, time.perf_counter() - clock)
    return [
        "<!-- data_index:begin -->",
        "## 6. The data layer at the paper's size",
        "",
        f"Machine: {machine_line(torch.device('cpu'))}; `python -m benchmarks --only data_index` refreshes this "
        f"section alone (load average {load:.2f} at its start).",
        "",
        *lines,
        "<!-- data_index:end -->",
    ]
