"""One benchmark command: training step, memory, data pipeline, hub loading and the GPU-hour projection.

    python -m benchmarks                  # full run (about 10-20 minutes on 2 CPU cores)
    python -m benchmarks --quick          # a few minutes, fewer repeats and smaller crops
    python -m benchmarks --out docs/BENCHMARKS.md

Run from the repository root. Every number in the report comes from this run: the training-step variants are
timed in this process (benchmarks/train_step.py), the data pipeline in a subprocess with one thread like a
DataLoader worker (benchmarks/data_pipeline.py), hub loading from an offline local cache (benchmarks/hub_load.py).
A PNG of the memory scaling is written next to the report.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import datetime
import errno
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import huggingface_hub
import timm
import torch
import torchvision

from benchmarks import compile_step, data_index, hub_load, paper_memory
from benchmarks.instruments import instrument_costs, instruments_lines
from benchmarks.train_step import (
    H100_BF16_DENSE_TFLOPS,
    PAPER_EPOCHS,
    PAPER_IMAGES,
    Trainer,
    count_step_flops,
    isolated_mdp_extra,
    isolated_moco_difference,
    make_variants,
    memory_report,
    paper_label_space,
    projection_flops_per_image,
    synthetic_batch,
    time_interleaved,
)
from mdp_hub.errors import command
from mdp_hub.help_format import HelpFormatter, plain
from training.data.label_space import IGNORE_INDEX
from training.mdp.memory import ClassPrototypeMemory, KeyQueue, RegionMemoryBank
from training.mdp.mixing import resize_labels

MDP_FULL = "MDP full (mixup + CSC2)"
MOCO = "MoCo v2 (queue 65536)"
TARGET_VS_LOWER_BOUND = 1.10
TARGET_VS_MOCO = 1.05
TARGET_PIPELINE_VS_BARE = 1.3
TARGET_HUB_VS_TIMM = 1.1
UTILISATIONS = (0.25, 0.40)  # assumed sustained fraction of the H100 bf16 peak; 0.40 is the headline
DATA_PARALLEL_EFFICIENCY = 0.9  # 8 GPUs on one node
PROTOTYPE_SCALING_CLASSES = (21, 171, 342, 1000, 3000)
PIXELS_PER_CLASS = (500, 5000)  # per-class pixel queues (ContrastiveSeg keeps 5000 per class)


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


PRESETS = {
    "full": Settings(
        "resnet18",
        crop=128,
        batch=8,
        warmup=2,
        repeats=7,
        extra_repeats=30,
        data_images=40,
        data_repeats=9,
        hub_repeats=21,
    ),
    "quick": Settings(
        "resnet18",
        crop=64,
        batch=4,
        warmup=1,
        repeats=3,
        extra_repeats=10,
        data_images=12,
        data_repeats=2,
        hub_repeats=3,
    ),
    # Seconds-long run that only checks the command end to end (tests); its numbers mean nothing.
    "smoke": Settings(
        "resnet18",
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
    ),
}


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


# ---------------------------------------------------------------- peak memory of one training step


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _release_free_heap() -> None:
    """Give freed heap pages back to the OS so the next step's peak is not hidden by cached ones."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None and hasattr(ctypes.CDLL(libc_name), "malloc_trim"):
        ctypes.CDLL(libc_name).malloc_trim(0)


def step_peak_memory(trainer: Trainer, batch: dict) -> int:
    """Bytes a steady-state training step adds at its peak (activations, gradients, temporaries).

    CUDA: ``torch.cuda.max_memory_allocated`` over the step. CPU: the kernel's resident-set high-water mark
    (VmHWM), reset through /proc/self/clear_refs just before the step, minus the resident set at that moment.
    """
    device = batch["image"].device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        trainer.step(batch)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        raise RuntimeError(f"{clear_refs} is missing: CPU peak memory needs Linux's resident-set high-water mark")
    _release_free_heap()
    clear_refs.write_text("5")  # 5 = reset VmHWM to the current resident set
    before = _proc_status_kib("VmRSS")
    trainer.step(batch)
    return (_proc_status_kib("VmHWM") - before) * 1024


def state_bytes(trainer: Trainer) -> int:
    """Parameters, buffers (momentum encoder, memories) and optimizer state held between steps."""
    tensors = [*trainer.model.parameters(), *trainer.model.buffers()]
    tensors += [
        value
        for state in trainer.optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    ]
    return sum(t.numel() * t.element_size() for t in tensors)


# ---------------------------------------------------------------- where the time of an MDP step goes


def mdp_breakdown(method, batch: dict, repeats: int) -> dict[str, float]:
    """Median process CPU seconds of MDP's own parts on fixed encoder outputs.

    mixing = ``query_view``; losses = ``objective`` + its backward to the query embeddings minus the prototype
    update, which is timed on its own right after with the same keys and labels.
    """
    with torch.no_grad():
        query = method.encoder(batch["image"])
        keys = method.momentum_encoder(batch["image_k"])
    parts = {"cross-dataset mixing": [], "prototype logits + losses, fwd+bwd": [], "prototype update": []}
    for _ in range(repeats):
        start = time.process_time()
        view = method.query_view(batch, keys)
        mixed = time.process_time()
        out = method.objective(query.detach().requires_grad_(), keys, view)
        out["loss"].backward()
        objective_done = time.process_time()
        method.memory.update(keys, resize_labels(view.ground_truth, tuple(keys.shape[-2:])), IGNORE_INDEX)
        update = time.process_time() - objective_done
        parts["cross-dataset mixing"].append(mixed - start)
        parts["prototype logits + losses, fwd+bwd"].append(max(objective_done - mixed - update, 0.0))
        parts["prototype update"].append(update)
    return {name: statistics.median(values) for name, values in parts.items()}


# ---------------------------------------------------------------- sections

INSTRUMENTS_BEGIN = "<!-- instruments:begin -->"
INSTRUMENTS_END = "<!-- instruments:end -->"


def instruments_section(settings: Settings, device: torch.device) -> list[str]:
    """Cost of the learning-dynamics instruments, between markers so ``--only instruments`` can refresh it."""
    args = argparse.Namespace(**dataclasses.asdict(settings), amp="none", channels_last=False)
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


ONLY_SECTIONS = {
    "instruments": lambda settings, device: instruments_section(settings, device),
    "data_index": lambda settings, device: data_index_section(settings),
    "compile": lambda settings, device: compile_section(settings),
}


def replace_block(page: Path, block: list[str]) -> None:
    """Put ``block`` (its first and last lines are its markers) in place of the same block of ``page``."""
    text = page.read_text() if page.exists() else ""
    if block[0] in text and block[-1] in text:
        head, rest = text.split(block[0], 1)
        text = head + "\n".join(block) + rest.split(block[-1], 1)[1]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(block) + "\n"
    page.write_text(text)


@dataclasses.dataclass
class StepMeasurements:
    """Everything section 1 and 2 report, measured in one go so that load and settings are shared."""

    args: argparse.Namespace
    label_space: object
    variants: dict
    trainers: dict[str, Trainer]
    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    peak: dict[str, int]
    flops: dict[str, float]
    extra: dict[str, float]  # MDP's own work per step, isolated
    breakdown: dict[str, float]  # parts of MDP full's own work
    moco_parts: dict[str, float]  # MoCo v2's pooled head + loss against the dense head + trivial loss
    elapsed: float
    load_before: float
    load_after: float
    device: torch.device

    @property
    def median_wall(self) -> dict[str, float]:
        return {name: statistics.median(v) for name, v in self.wall.items()}

    @property
    def median_cpu(self) -> dict[str, float]:
        return {name: statistics.median(v) for name, v in self.cpu.items()}

    @property
    def reference(self) -> dict[str, float]:
        # On a shared CPU the process CPU time is far less disturbed by other processes than the wall clock.
        return self.median_cpu if self.device.type == "cpu" else self.median_wall

    @property
    def reference_name(self) -> str:
        return "process CPU time" if self.device.type == "cpu" else "wall clock"


def measure_train_steps(settings: Settings, device: torch.device) -> StepMeasurements:
    args = argparse.Namespace(**dataclasses.asdict(settings), amp="none", channels_last=False)
    label_space = paper_label_space()
    torch.manual_seed(0)
    variants = make_variants(args, label_space, settings.variants)
    trainers = {name: Trainer(model, args, device) for name, model in variants.items()}
    batch = synthetic_batch(label_space, settings.batch, settings.crop, device)
    load_before, started = load_average(), time.perf_counter()
    wall, cpu = time_interleaved(trainers, batch, settings.warmup, settings.repeats)
    peak = {name: step_peak_memory(trainer, batch) for name, trainer in trainers.items()}
    flops = {name: count_step_flops(trainer, batch) for name, trainer in trainers.items()}
    mdp_methods = {name: model for name, model in variants.items() if name.startswith("MDP")}
    extra = {
        name: statistics.median(v) for name, v in isolated_mdp_extra(mdp_methods, batch, settings.extra_repeats).items()
    }
    breakdown = mdp_breakdown(variants[MDP_FULL], batch, settings.extra_repeats)
    moco_parts = {
        name: statistics.median(v)
        for name, v in isolated_moco_difference(
            variants["lower bound"], variants[MOCO], batch, settings.extra_repeats
        ).items()
    }
    elapsed, load_after = time.perf_counter() - started, load_average()
    return StepMeasurements(
        args,
        label_space,
        variants,
        trainers,
        wall,
        cpu,
        peak,
        flops,
        extra,
        breakdown,
        moco_parts,
        elapsed,
        load_before,
        load_after,
        device,
    )


def step_table_lines(settings: Settings, m: StepMeasurements) -> list[str]:
    median_wall, median_cpu, reference = m.median_wall, m.median_cpu, m.reference
    lower, moco = reference["lower bound"], reference[MOCO]
    lines = [
        "## 1. Training step",
        "",
        f"Machine: {machine_line(m.device)}.",
        f"Settings: backbone **{settings.arch}** OS{settings.output_stride}, crop **{settings.crop}x{settings.crop}**, "
        f"batch **{settings.batch}**, D = {settings.embed_dim}, C = {m.label_space.num_classes} (VOC 21 + ADE20K 150 + "
        f"COCO-Stuff 171), fp32, SGD. {settings.repeats} interleaved rounds (order rotating) after {settings.warmup} "
        f"warm-up rounds, medians; {m.elapsed:.0f} s; load average {m.load_before:.2f} before, "
        f"{m.load_after:.2f} after.",
        f"Ratios use the median **{m.reference_name}** per step.",
        "",
        "| variant | median wall (s) | median CPU (s) | img/s (wall) | vs lower bound | vs MoCo v2 | GFLOP / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in m.trainers:
        lines.append(
            f"| {name} | {median_wall[name]:.3f} | {median_cpu[name]:.3f} | {settings.batch / median_wall[name]:.1f} | "
            f"{reference[name] / lower:.3f}x | {reference[name] / moco:.3f}x | "
            f"{m.flops[name] / settings.batch / 1e9:.3f} |"
        )
    return lines


def step_targets_lines(m: StepMeasurements) -> list[str]:
    reference, flops, moco_parts = m.reference, m.flops, m.moco_parts
    lower, moco, full = reference["lower bound"], reference[MOCO], reference[MDP_FULL]
    implied_full = lower + m.extra[MDP_FULL]
    implied_moco = lower - moco_parts["dense"] + moco_parts["pooled"]
    return [
        "",
        "Lower bound = query forward+backward of the same encoder (backbone + dense head) + momentum-encoder "
        "forward + SGD step + EMA, with a trivial loss: what any momentum method pays.",
        "",
        "### Targets",
        "",
        "| target | from whole steps | from lower bound + isolated work |",
        "|---|---|---|",
        f"| MDP full <= {TARGET_VS_LOWER_BOUND:.2f}x lower bound | {verdict(full / lower, TARGET_VS_LOWER_BOUND)} | "
        f"{verdict(implied_full / lower, TARGET_VS_LOWER_BOUND)} |",
        f"| MDP full <= {TARGET_VS_MOCO:.2f}x MoCo v2 | {verdict(full / moco, TARGET_VS_MOCO)} | "
        f"{verdict(implied_full / implied_moco, TARGET_VS_MOCO)} |",
        "",
        "Whole-step ratios carry the step-to-step noise of a shared CPU (a few percent even when quiet); the "
        "right column adds MDP's own work, timed many times on fixed encoder outputs, to the lower bound's median "
        "and is the sharper estimate. MoCo v2's step there is the lower bound with its own head and loss in place "
        f"of the lower bound's, both timed the same way on fixed backbone features ({1000 * moco_parts['pooled']:.1f} "
        f"ms for the pooled heads, InfoNCE over the queue and the queue update against "
        f"{1000 * moco_parts['dense']:.1f} ms for the dense heads and the trivial loss): "
        f"{1000 * implied_moco:.0f} ms against {1000 * moco:.0f} ms measured as a whole step. FLOPs of MDP full are "
        f"{flops[MDP_FULL] / flops['lower bound']:.3f}x the "
        f"lower bound's and {flops[MDP_FULL] / flops[MOCO]:.3f}x MoCo v2's.",
    ]


def mdp_parts_lines(settings: Settings, m: StepMeasurements) -> list[str]:
    extra, breakdown = m.extra, m.breakdown
    lower, full = m.reference["lower bound"], m.reference[MDP_FULL]
    without_update = extra[MDP_FULL] - breakdown["prototype update"]
    lines = [
        "",
        "### MDP parts switched off, isolated",
        "",
        f"Median process CPU time of MDP's own work per step (mixing, prototype logits, losses and their backward, "
        f"prototype update) on fixed encoder outputs, {settings.extra_repeats} interleaved repeats.",
        "",
        "| variant | MDP's own work (ms) | / lower bound step | implied step / lower bound |",
        "|---|---|---|---|",
        *(
            f"| {name} | {1000 * value:.1f} | {value / lower:.2%} | {1 + value / lower:.3f}x |"
            for name, value in extra.items()
        ),
        f"| MDP full, prototype update off (full minus the timed update) | "
        f"{1000 * without_update:.1f} | "
        f"{without_update / lower:.2%} | "
        f"{1 + without_update / lower:.3f}x |",
        "",
        "### Where the time of an MDP step goes",
        "",
        "| part | CPU ms per step | share of the step |",
        "|---|---|---|",
    ]
    total = lower + sum(breakdown.values())
    for name, value in {"encoders: query fwd+bwd, momentum fwd, SGD, EMA (lower bound)": lower, **breakdown}.items():
        lines.append(f"| {name} | {1000 * value:.1f} | {value / total:.1%} |")
    lines.append(f"| sum | {1000 * total:.1f} | measured whole MDP step: {1000 * full:.1f} ms |")
    return lines


def step_memory_lines(settings: Settings, m: StepMeasurements) -> list[str]:
    peak = m.peak
    return [
        "",
        "## 2. Memory",
        "",
        "### Peak memory per training-step variant",
        "",
        (
            "CPU: increase of the resident set (Linux VmHWM, reset via /proc/self/clear_refs right before one "
            "steady-state step, after malloc_trim) over the resident set at the step's start: activations, gradients "
            "and temporaries. State = parameters + buffers (momentum encoder, memories) + optimizer state, held "
            "between steps."
            if m.device.type == "cpu"
            else "CUDA: torch.cuda.max_memory_allocated over one steady-state step minus the allocation at its start."
        ),
        "Same settings and load as section 1.",
        "",
        "| variant | step peak (MB) | vs lower bound | state between steps (MB) |",
        "|---|---|---|---|",
        *(
            f"| {name} | {peak[name] / 1e6:.1f} | {peak[name] / max(peak['lower bound'], 1):.2f}x | "
            f"{state_bytes(trainer) / 1e6:.1f} |"
            for name, trainer in m.trainers.items()
        ),
        "",
        "### Memory the methods keep, at the paper's label space",
        "",
        *memory_report(m.variants, settings.embed_dim, m.label_space.num_classes),
    ]


def train_step_section(settings: Settings, device: torch.device) -> tuple[list[str], dict]:
    """Sections 1 (training step) and 2 (memory) of the report, and what later sections reuse."""
    m = measure_train_steps(settings, device)
    lines = [
        *step_table_lines(settings, m),
        *step_targets_lines(m),
        *mdp_parts_lines(settings, m),
        *step_memory_lines(settings, m),
    ]
    results = {
        "flops_per_image": {k: v / settings.batch for k, v in m.flops.items()},
        "args": m.args,
        "label_space": m.label_space,
    }
    return lines, results


def memory_scaling_rows(embed_dim: int) -> list[dict]:
    """Bytes of the prototype store and of labelled pixel queues, from the real modules built on the meta device."""
    rows = []
    with torch.device("meta"):
        for classes in PROTOTYPE_SCALING_CLASSES:
            row = {"classes": classes, "prototypes": _buffer_bytes(ClassPrototypeMemory(classes, embed_dim))}
            for per_class in PIXELS_PER_CLASS:
                row[f"pixel queue {per_class}"] = _buffer_bytes(
                    RegionMemoryBank(classes, embed_dim, classes * per_class)
                )
            rows.append(row)
        moco_queue = _buffer_bytes(KeyQueue(embed_dim, 65536))
    for row in rows:
        row["moco queue"] = moco_queue
    return rows


def _buffer_bytes(module: torch.nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in module.buffers())


def memory_scaling_section(embed_dim: int, plot_path: Path, report_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = memory_scaling_rows(embed_dim)
    figure, axes = plt.subplots(figsize=(6, 4))
    classes = [row["classes"] for row in rows]
    axes.plot(
        classes,
        [row["prototypes"] / 1e6 for row in rows],
        "o-",
        label=f"MDP prototypes [C, {embed_dim}] + counts + shares",
    )
    for per_class in PIXELS_PER_CLASS:
        axes.plot(
            classes,
            [row[f"pixel queue {per_class}"] / 1e6 for row in rows],
            "s--",
            label=f"pixel queue, {per_class} pixels per class",
        )
    axes.plot(classes, [row["moco queue"] / 1e6 for row in rows], ":", label="MoCo v2 key queue (65536)")
    axes.set(
        xscale="log",
        yscale="log",
        xlabel="classes C",
        ylabel="MB (fp32)",
        title="Memory of the method vs number of classes",
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(plot_path, dpi=100)
    plt.close(figure)
    header = " | ".join(f"pixel queue {n}/class (MB)" for n in PIXELS_PER_CLASS)
    lines = [
        "### Prototype store vs pixel queue as classes and bank size grow",
        "",
        f"Buffer bytes of the real modules (training/mdp/memory.py) built on the meta device, D = {embed_dim}, fp32: "
        "`ClassPrototypeMemory(C, D)` against a labelled pixel queue `RegionMemoryBank(C, D, size=C x pixels per "
        "class)` and MoCo v2's `KeyQueue(D, 65536)`. The prototype store grows with classes only; a pixel queue "
        "grows with classes x bank size.",
        "",
        f"| classes | MDP prototypes (MB) | {header} | MoCo v2 queue (MB) |",
        "|---|---|" + "---|" * len(PIXELS_PER_CLASS) + "---|",
    ]
    for row in rows:
        queues = " | ".join(f"{row[f'pixel queue {n}'] / 1e6:,.1f}" for n in PIXELS_PER_CLASS)
        lines.append(f"| {row['classes']} | {row['prototypes'] / 1e6:.3f} | {queues} | {row['moco queue'] / 1e6:.1f} |")
    lines += ["", f"![memory scaling]({os.path.relpath(plot_path, report_dir)})"]
    return lines


def paper_section(
    settings: Settings, args: argparse.Namespace, label_space, flops_per_image: dict
) -> tuple[list[str], dict]:
    load_before, started = load_average(), time.perf_counter()
    arch = settings.projection_arch
    small, large = settings.projection_crops
    gflops_512, linearity = projection_flops_per_image(args, label_space, arch, settings.projection_crops)
    elapsed = time.perf_counter() - started
    total_flops = gflops_512 * 1e9 * PAPER_IMAGES * PAPER_EPOCHS
    lines = [
        "## 5. On paper: FLOPs per training image and GPU hours of the paper's recipe",
        "",
        f"Machine: {machine_line(torch.device('cpu'))}. Counted in {elapsed:.0f} s, load average {load_before:.2f}.",
        f"Settings: {arch} OS8, 512x512 crops, D = {settings.embed_dim}, C = 342; "
        f"{PAPER_IMAGES:,} images (VOC aug 10,582 + ADE20K 20,210 + COCO-Stuff-164k 118,287) x {PAPER_EPOCHS} epochs.",
        "",
        f"torch.utils.flop_counter (matmul/conv family, 2 FLOPs per multiply-add) on one full MDP step (query "
        f"fwd+bwd, momentum fwd, prototype logits, CSC2): **{gflops_512:.0f} GFLOP per training image** at 512^2 "
        f"(counted at {large}^2 and x{(512 / large) ** 2:g}; the {large}^2/{small}^2 count ratio is {linearity:.3f}, "
        f"against {(large / small) ** 2:g} if cost is proportional to pixels). Total {total_flops / 1e18:.2f} EFLOP. "
        f"At the section-1 scale MDP full costs "
        f"{flops_per_image[MDP_FULL] / flops_per_image['lower bound']:.3f}x the lower bound's FLOPs and "
        f"{flops_per_image[MDP_FULL] / flops_per_image[MOCO]:.3f}x MoCo v2's, so the recipe's cost is the "
        "encoder's.",
        "",
        "| hardware | assumed sustained bf16 | images/s | GPU hours | wall clock |",
        "|---|---|---|---|---|",
    ]
    images_per_s = {}
    for utilisation in UTILISATIONS:
        sustained = H100_BF16_DENSE_TFLOPS * 1e12 * utilisation
        rate = sustained / (gflops_512 * 1e9)
        images_per_s[utilisation] = rate
        hours = total_flops / sustained / 3600
        lines.append(
            f"| 1x H100 SXM | {utilisation:.0%} of {H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s | {rate:.0f} | "
            f"{hours:.1f} | {hours:.1f} h |"
        )
        scaled = hours / DATA_PARALLEL_EFFICIENCY
        lines.append(
            f"| 8x H100 SXM ({DATA_PARALLEL_EFFICIENCY:.0%} scaling) | {utilisation:.0%} per GPU | "
            f"{8 * rate * DATA_PARALLEL_EFFICIENCY:.0f} | {scaled:.1f} | {scaled / 8:.1f} h |"
        )
    lines += [
        "",
        f"Utilisation is an assumption, stated, not measured: {max(UTILISATIONS):.0%} is the headline, "
        f"{min(UTILISATIONS):.0%} a pessimistic case for dilated (OS8) ResNet-50 in bf16 with channels_last. "
        "Measure it on the target GPU with `python benchmarks/train_step.py --device cuda --amp bf16 "
        "--channels-last --arch resnet50 --crop 512` before quoting a number.",
    ]
    return lines, {"h100_images_per_s": images_per_s}


def run_data_pipeline_script(settings: Settings) -> tuple[dict, str]:
    """Run benchmarks/data_pipeline.py in a subprocess (one torch thread, as a DataLoader worker has);
    returns its JSON report and the timing/load sentence for the section."""
    script = Path(__file__).resolve().parent / "data_pipeline.py"
    load_before, started = load_average(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "data_pipeline.json"
        command = [
            sys.executable,
            str(script),
            "--images",
            str(settings.data_images),
            "--repeats",
            str(settings.data_repeats),
            "--out",
            str(out),
        ]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"{script} failed (exit {completed.returncode}):\n{completed.stderr}")
        report = json.loads(out.read_text())
    elapsed, load_after = time.perf_counter() - started, load_average()
    return report, f"{elapsed:.0f} s; load average {load_before:.2f} before, {load_after:.2f} after"


def data_pipeline_table(report: dict, rates: dict[str, float]) -> list[str]:
    """One row per pipeline: rate per worker, cost against the bare loop, workers needed per GPU rate."""
    lines = [
        "| pipeline | images/s per worker | cost vs bare decode+crop | target <= "
        f"{TARGET_PIPELINE_VS_BARE}x | MB sent per item | "
        + " | ".join(f"workers for {name}" for name in rates)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(rates),
    ]
    for name, value in report["images_per_s"].items():
        cost, (low, high) = report["cost_vs_bare"][name], report["cost_vs_bare_range"][name]
        met = "(reference)" if name == "bare" else verdict(cost, TARGET_PIPELINE_VS_BARE)
        sent = report["bytes_per_item"].get(name)
        sent_text = "-" if sent is None else f"{sent / 1e6:.2f}"
        workers = " | ".join(str(math.ceil(rate / value)) for rate in rates.values())
        lines.append(f"| {name} | {value:.1f} | {cost:.2f}x [{low:.2f}-{high:.2f}] | {met} | {sent_text} | {workers} |")
    return lines


def data_pipeline_section(settings: Settings, h100_images_per_s: dict[float, float]) -> list[str]:
    report, timing = run_data_pipeline_script(settings)
    rates = {f"1x H100 at {u:.0%} ({rate:.0f} img/s)": rate for u, rate in h100_images_per_s.items()}
    rates[f"script default ({report['gpu_images_per_s']:g} img/s, V100 fp32)"] = report["gpu_images_per_s"]
    ms = {name: 1000 / value for name, value in report["images_per_s"].items()}
    device = report["device_views"]["ms_per_image_cpu_1_thread"]
    return [
        "## 3. Data pipeline",
        "",
        f"Machine: {machine_line(torch.device('cpu'))}; the benchmark runs in a subprocess with 1 torch thread, "
        f"as a DataLoader worker does; files decoded with {report['decoder']}.",
        f"Settings: {report['images']} synthetic {report['image_size_wh'][0]}x{report['image_size_wh'][1]} JPEGs "
        f"with ADE20K-layout label PNGs, {report['crop']}x{report['crop']} crops, {report['repeats']} interleaved "
        f"passes (bare, then each pipeline, repeated); rates are medians over passes, costs the median of the "
        f"per-pass ratios to bare (range over passes in brackets); {timing}.",
        "",
        *data_pipeline_table(report, rates),
        "",
        f"The default on a GPU is `data.photometric_on: device` (pretrain, finetune rows): a worker's item costs "
        f"{ms['pretrain']:.1f} ms against {ms['bare']:.1f} ms for the bare decode + crop, and sends one uint8 "
        "image and a uint8 local-id mask. Draws that enlarge the image (here "
        f"{report['share_resized_on_device']:.0%} of the items) send the unresampled source region: the training "
        "device resizes and flips it, makes the views and looks the ids up, batched: on this CPU with one thread "
        f"{device['pretrain_moco_v2_two_views']:.0f} ms per image for the resize and two MoCo-v2 views "
        f"and {device['finetune_mmseg_one_view']:.0f} ms for the resize and one MMSeg view (batch "
        f"{report['device_views']['batch']}, half of it regions to enlarge; not measured on a GPU, where they are a "
        "few elementwise kernels and one roi_align per batch). On a CPU the default is "
        "`worker` (the *_worker_jitter rows): the views are made with PIL in the worker, and the item costs "
        f"{ms['pretrain_worker_jitter']:.1f} ms (pretraining) or {ms['finetune_worker_jitter']:.1f} ms "
        "(fine-tuning)."
        + (
            f" The hf_pretrain row reads the same images as a Hub dataset (one Parquet shard, `hf:` spec with "
            f"ADE20K's reduce_labels), map-style through the datasets library: {ms['hf_pretrain']:.1f} ms per item."
            if "hf_pretrain" in ms
            else " (The hf_pretrain row needs the datasets library, not installed here.)"
        ),
        "",
        "bare = PIL decode of image + mask, a random crop, to tensors. Ours = TorchCodec decode (PIL for other "
        "formats), label check of every mask value, 0.5-2 rescale of the crop region only when it shrinks "
        "(channels-last uint8 resize, antialiased), cat_max_ratio crop with the label map applied to the crop's "
        "pixels only, flip, zero padding. The shrinking rescales and the label checks are real work the bare loop "
        "does not do; the faster decoder pays for most of it. Workers per GPU = step rate / images/s per worker, "
        "rounded up; at H100 rates the loader, not the GPU, sets the pace unless decoding moves to the GPU "
        "(TorchCodec's nvJPEG, DALI) or the host has that many cores per GPU.",
    ]


def paper_memory_section(settings: Settings) -> list[str]:
    """Memory of one step of every paper recipe at its crop (benchmarks/paper_memory.py), projected to GPUs."""
    load_before, started = load_average(), time.perf_counter()
    rows = paper_memory.run(settings.paper_memory_crop, batch=1, limit=settings.paper_memory_rows)
    timing = f"{time.perf_counter() - started:.0f} s; load average {load_before:.2f} before, {load_average():.2f} after"
    gigabytes = lambda value: f"{value / 1e9:.2f}"  # noqa: E731
    lines = [
        f"### One training step of every paper recipe at {settings.paper_memory_crop} px",
        "",
        f"Each distinct (arch, method, output stride) of the paper recipes in a fresh process, as the recipe builds "
        f"it (342 classes), one SGD step on 1 synthetic {settings.paper_memory_crop}x{settings.paper_memory_crop} "
        f"image in fp32 on this CPU; {timing}. Measured = the process's peak resident memory during the step minus "
        "its resident memory before it. Counted = the bytes of every tensor autograd saves for the backward pass "
        "(each storage once), in fp32 and under bf16 autocast (CPU autocast casts as CUDA autocast does). The "
        "projection per GPU image is the bf16 count scaled by measured / counted fp32 (the temporaries the count "
        f"does not see); fixed = weights with the momentum encoder, gradients and SGD momentum (fp32) + "
        f"{paper_memory.CUDA_CONTEXT_GB} GB of CUDA context and workspace; the largest batch keeps "
        f"{paper_memory.GPU_FREE_SHARE:.0%} of the GPU free.",
        "",
        "| arch, method, OS | recipes | measured step, fp32 (GB) | counted fp32 / bf16 (GB) | measured / counted | "
        "bf16 per image (GB) | fixed (GB) | largest batch per GPU: "
        + " / ".join(f"{gb} GB" for gb in paper_memory.GPU_GB)
        + " |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        recipes = ", ".join(row["recipes"][:2]) + (f" (+{len(row['recipes']) - 2})" if len(row["recipes"]) > 2 else "")
        fits = " / ".join(str(row["largest_batch"][gb]) for gb in paper_memory.GPU_GB)
        lines.append(
            f"| {row['arch']}, {row['method']}, OS{row['output_stride']} | {recipes} | "
            f"{gigabytes(row['measured_step_bytes'])} | {gigabytes(row['counted_fp32_bytes'])} / "
            f"{gigabytes(row['counted_bf16_bytes'])} | {row['temporaries_factor']:.2f} | "
            f"{gigabytes(row['bf16_per_image_bytes'])} | {gigabytes(row['fixed_bytes'])} | {fits} |"
        )
    lines += [
        "",
        "The recipes train 8 images per GPU; the check of the projection is the measured / counted column: the "
        "saved-tensor count explains the measured fp32 peak up to that factor. Not measured on a GPU.",
    ]
    return lines


def hub_section(settings: Settings) -> list[str]:
    load_before, started = load_average(), time.perf_counter()
    times = hub_load.run(settings.hub_repeats)
    elapsed, load_after = time.perf_counter() - started, load_average()
    medians = {label: statistics.median(values) for label, values in times.items()}
    # Each run loads every model once, back to back: per-run ratios cancel the drift of a shared machine.
    ratio = {
        label: statistics.median(m / t for m, t in zip(times["mdp_resnet50"], values))
        for label, values in times.items()
    }
    lines = [
        "## 4. Hub loading",
        "",
        f"Machine: {machine_line(torch.device('cpu'))}.",
        f"Settings: `timm.create_model(name, pretrained=True)` offline from one local Hugging Face cache holding an "
        f"mdp-hub export and timm-format ResNet-50 weights (random values, real formats); {settings.hub_repeats} "
        f"interleaved runs after one warm-up, medians; the ratio is the median of the per-run ratios; "
        f"{elapsed:.0f} s; load average {load_before:.2f} before, {load_after:.2f} after.",
        "",
        "| create_model(..., pretrained=True) | median (s) | min (s) | mdp_resnet50 / this |",
        "|---|---|---|---|",
    ]
    for label, values in times.items():
        lines.append(f"| {label} | {medians[label]:.3f} | {min(values):.3f} | {ratio[label]:.3f}x |")
    lines += [
        "",
        f"Target mdp_resnet50 <= {TARGET_HUB_VS_TIMM}x timm resnet50: "
        f"{verdict(ratio['resnet50 (timm, 1000-class head)'], TARGET_HUB_VS_TIMM)}; against the headless "
        f"timm load (same work): {ratio['resnet50 (timm, num_classes=0)']:.3f}x.",
    ]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=plain(__doc__), formatter_class=HelpFormatter
    )
    parser.add_argument("--quick", action="store_const", const="quick", dest="preset", help="same as --preset quick")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="size of the run (default: full)")
    parser.set_defaults(preset="full")  # one default for the two flags that share ``preset``
    parser.add_argument("--device", default="cpu", help="device of the training-step section (cpu or cuda)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md",
        help="Markdown report to write (default docs/BENCHMARKS.md)",
    )
    parser.add_argument("--only", choices=sorted(ONLY_SECTIONS), help="refresh only this section of an existing report")
    return parser.parse_args(argv)


@command("python -m benchmarks")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = PRESETS[args.preset]
    device = torch.device(args.device)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):  # now, not after the whole run
        raise PermissionError(errno.EACCES, "folder not writable", str(out.parent))
    if args.only:
        replace_block(out, ONLY_SECTIONS[args.only](settings, device))
        print(f"refreshed the {args.only} section of {out}", file=sys.stderr)
        return
    plot_path = out.with_name(out.stem + "_memory.png")
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.perf_counter()

    print("[1/5] training step", file=sys.stderr)
    train_lines, train = train_step_section(settings, device)
    memory_lines = memory_scaling_section(settings.embed_dim, plot_path, out.parent)
    memory_lines += ["", *paper_memory_section(settings)]
    print("[2/5] FLOPs and projection", file=sys.stderr)
    paper_lines, paper = paper_section(settings, train["args"], train["label_space"], train["flops_per_image"])
    print("[3/5] data pipeline", file=sys.stderr)
    data_lines = data_pipeline_section(settings, paper["h100_images_per_s"])
    print("[4/5] hub loading", file=sys.stderr)
    hub_lines = hub_section(settings)
    index_lines = data_index_section(settings)
    compile_lines = compile_section(settings)
    instrument_lines = instruments_section(settings, device)

    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m benchmarks{' --preset ' + args.preset if args.preset != 'full' else ''}` on "
        f"{started:%Y-%m-%d %H:%M} UTC in {time.perf_counter() - clock:.0f} s (preset **{args.preset}**). Every "
        "number below comes from that run; re-run the command to refresh the page. Each section states its "
        "machine, versions, settings and the load average around it (the machine may be shared).",
        "",
        *train_lines,
        "",
        *memory_lines,
        "",
        *data_lines,
        "",
        *hub_lines,
        "",
        *paper_lines,
        "",
        *index_lines,
        "",
        *compile_lines,
        "",
        *instrument_lines,
        "",
    ]
    out.write_text("\n".join(lines))
    print(f"[5/5] wrote {out} and {plot_path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
