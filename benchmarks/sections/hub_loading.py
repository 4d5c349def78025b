"""Section 4: timm.create_model(..., pretrained=True) of an mdp-hub export against timm's own ResNet-50, offline
from one local Hugging Face cache (benchmarks/hub_load.py measures)."""

from __future__ import annotations

import time

import torch

from benchmarks import hub_load
from benchmarks.report import Settings, load_average, machine_line, verdict

TARGET_HUB_VS_TIMM = 1.1


def hub_section(settings: Settings) -> list[str]:
    load_before, started = load_average(), time.perf_counter()
    times = hub_load.run(settings.hub_repeats)
    elapsed, load_after = time.perf_counter() - started, load_average()
    ratio = hub_load.per_run_ratios(times)
    lines = [
        "## 4. Hub loading",
        "",
        f"Machine: {machine_line(torch.device('cpu'))}.",
        f"Settings: `timm.create_model(name, pretrained=True)` offline from one local Hugging Face cache holding an "
        f"mdp-hub export and timm-format ResNet-50 weights (random values, real formats); {settings.hub_repeats} "
        f"interleaved runs after one warm-up, medians; the ratio is the median of the per-run ratios; "
        f"{elapsed:.0f} s; load average {load_before:.2f} before, {load_after:.2f} after.",
        "",
        *hub_load.table_lines(times),
        "",
        f"Target mdp_resnet50 <= {TARGET_HUB_VS_TIMM}x timm resnet50: "
        f"{verdict(ratio['resnet50 (timm, 1000-class head)'], TARGET_HUB_VS_TIMM)}; against the headless "
        f"timm load (same work): {ratio['resnet50 (timm, num_classes=0)']:.3f}x.",
    ]
    return lines
