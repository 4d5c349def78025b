"""What every section of the benchmark report shares: the presets (sizes of a run), the machine line, verdicts
against targets, and blocks between markers that one section can refresh."""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
from pathlib import Path

import huggingface_hub
import timm
import torch
import torchvision


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run; ``PRESETS`` holds the named ones."""

    arch: str
    crop: int
    batch: int
    warmup: int
    repeats: int
    extra_repeats: int
    data_images: int
    data_repeats: int
    hub_repeats: int
    output_stride: int = 8
    embed_dim: int = 128
    variants: tuple[str, ...] | None = None  # None = every variant of benchmarks/train_step.py
    projection_arch: str = "resnet50"
    projection_crops: tuple[int, int] = (64, 128)
    paper_memory_crop: int = 512  # the recipes' crop; the memory table of every paper recipe's step
    paper_memory_rows: int | None = None  # None = every (arch, method, OS) of the paper recipes
    index_scale: float = 1.0  # fraction of the paper's 149,079 samples in the data-index section
    index_ranks: int = 8
    index_workers: int = 8
    index_trace: bool = True  # count each rank's dataset calls under strace
    compile_crop: int = 96
    compile_batch: int = 8
    compile_steps: int = 8
    compile_backend: str = "inductor"


_FULL = Settings(
    "resnet18",
    crop=128,
    batch=8,
    warmup=2,
    repeats=7,
    extra_repeats=30,
    data_images=40,
    data_repeats=9,
    hub_repeats=21,
)
_QUICK = dataclasses.replace(
    _FULL, crop=64, batch=4, warmup=1, repeats=3, extra_repeats=10, data_images=12, data_repeats=2, hub_repeats=3
)
# Seconds-long run that only checks the command end to end (tests); its numbers mean nothing.
_SMOKE = dataclasses.replace(
    _FULL,
    crop=32,
    batch=2,
    warmup=0,
    repeats=1,
    extra_repeats=1,
    data_images=2,
    data_repeats=1,
    hub_repeats=1,
    variants=("lower bound", "MDP full (mixup + CSC2)", "MoCo v2 (queue 65536)", "region bank"),
    projection_arch="resnet18",
    projection_crops=(16, 32),
    paper_memory_crop=32,
    paper_memory_rows=1,
    index_scale=0.002,
    index_ranks=1,
    index_workers=2,
    index_trace=False,
    compile_crop=32,
    compile_batch=2,
    compile_steps=1,
    compile_backend="aot_eager",  # capture and autograd without Inductor's minutes of code generation
)
PRESETS = {"full": _FULL, "quick": _QUICK, "smoke": _SMOKE}


def load_average() -> float:
    return os.getloadavg()[0]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: torch.device) -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, device {device.type}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"timm {timm.__version__}, huggingface_hub {huggingface_hub.__version__}"
    )


def verdict(measured: float, target: float) -> str:
    if measured <= target:
        return f"**met** ({measured:.3f}x <= {target:.2f}x)"
    return f"**missed** by {measured / target - 1:.1%} ({measured:.3f}x > {target:.2f}x)"


def replace_block(page: Path, block: list[str]) -> None:
    """Put ``block`` (its first and last lines are its markers) in place of the same block of ``page``."""
    text = page.read_text() if page.exists() else ""
    if block[0] in text and block[-1] in text:
        head, rest = text.split(block[0], 1)
        text = head + "\n".join(block) + rest.split(block[-1], 1)[1]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(block) + "\n"
    page.write_text(text)


def step_args(settings: Settings) -> argparse.Namespace:
    """The options benchmarks/train_step.py's builders take, from a preset (fp32, contiguous memory)."""
    return argparse.Namespace(**dataclasses.asdict(settings), amp="none", channels_last=False)
