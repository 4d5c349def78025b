"""Sections 1 and 2 (step part): the training step of every method variant, timed interleaved, its FLOPs, MDP's
own work isolated, and each variant's peak memory (benchmarks/train_step.py measures)."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from benchmarks.report import Settings, load_average, machine_line, step_args, verdict
from benchmarks.train_step import (
    Trainer,
    count_step_flops,
    isolated_mdp_extra,
    isolated_moco_difference,
    make_variants,
    memory_report,
    paper_label_space,
    synthetic_batch,
    time_interleaved,
)
from training.data.label_space import IGNORE_INDEX
from training.mdp.mixing import resize_labels

MDP_FULL = "MDP full (mixup + CSC2)"


MOCO = "MoCo v2 (queue 65536)"


TARGET_VS_LOWER_BOUND = 1.10


TARGET_VS_MOCO = 1.05


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
    args = step_args(settings)
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
