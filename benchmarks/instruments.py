"""Cost of the learning-dynamics instruments against the MDP training step they observe.

Each instrument is timed alone (process CPU time on a CPU, wall clock on a GPU), interleaved with the training
step it is compared with, on the benchmark's synthetic batch:

* gradient norms of backbone and head (on the step before each log, ``train.log_every``),
* the probe of ``train.probe_images`` fixed crops (every ``train.probe_every`` steps),
* the prototype statistics alone (part of the probe).

The amortised cost is the instrument's time divided by its interval, as a share of one training step.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.train_step import Trainer, synchronize
from training.config import TrainConfig
from training.engine.numerics import group_gradient_norms
from training.mdp import build_method
from training.mdp.probe import LearningProbe
from training.pretraining.model import gradient_groups

PROBE_IMAGES = TrainConfig.probe_images
PROBE_EVERY = TrainConfig.probe_every
LOG_EVERY = TrainConfig.log_every


def _clock(device: torch.device) -> float:
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def _timed(function, device: torch.device) -> float:
    synchronize(device)
    start = _clock(device)
    function()
    synchronize(device)
    return _clock(device) - start


def instrument_costs(args, label_space, batch: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of the MDP step and of each instrument, ``repeats`` interleaved rounds."""
    torch.manual_seed(0)
    method = build_method(
        "mdp", label_space=label_space, arch=args.arch, output_stride=args.output_stride, embed_dim=args.embed_dim
    )
    trainer = Trainer(method, args, device)
    images = batch["image"].repeat(PROBE_IMAGES // batch["image"].shape[0] + 1, 1, 1, 1)[:PROBE_IMAGES]
    labels = batch["mask"].repeat(PROBE_IMAGES // batch["mask"].shape[0] + 1, 1, 1)[:PROBE_IMAGES]
    probe = LearningProbe(method, images.cpu(), labels.cpu(), chunk=batch["image"].shape[0])
    groups = gradient_groups(method)
    trainer.step(batch)  # warm-up; leaves gradients and seen prototypes to measure
    timings: dict[str, list[float]] = {
        "training step": [],
        "gradient norms": [],
        "probe": [],
        "prototype statistics": [],
    }
    memory = method.memory
    pixels = torch.nn.functional.normalize(torch.randn(4096, memory.prototypes.shape[1], device=device), dim=1)
    pixel_labels = torch.randint(0, memory.num_classes, (4096,), device=device)
    for step in range(repeats):
        timings["training step"].append(_timed(lambda: trainer.step(batch), device))
        timings["gradient norms"].append(_timed(lambda: group_gradient_norms(groups), device))
        timings["probe"].append(_timed(lambda: probe(step), device))
        timings["prototype statistics"].append(
            _timed(lambda: probe._prototype_metrics(memory, pixels, pixel_labels), device)
        )
    return {name: statistics.median(values) for name, values in timings.items()}


def instruments_lines(costs: dict[str, float], settings_line: str) -> list[str]:
    step = costs["training step"]
    intervals = {"gradient norms": LOG_EVERY, "probe": PROBE_EVERY, "prototype statistics": PROBE_EVERY}
    lines = [
        "## Learning-dynamics instruments",
        "",
        f"{settings_line} Each instrument is timed alone, interleaved with the MDP full training step; the "
        f"probe scores {PROBE_IMAGES} crops (the default `train.probe_images`). Amortised = its time over its "
        "default interval, as a share of one training step.",
        "",
        "| instrument | runs every | ms | amortised share of a step |",
        "|---|---|---:|---:|",
        f"| MDP full training step | step | {step * 1e3:.1f} | - |",
    ]
    for name, every in intervals.items():
        lines.append(f"| {name} | {every} steps | {costs[name] * 1e3:.1f} | {costs[name] / every / step:.2%} |")
    return lines
