"""Section 2 (the rest): the prototype store against pixel queues as classes grow, and one training step of every
paper recipe at its crop (benchmarks/paper_memory.py measures)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from benchmarks import paper_memory
from benchmarks.report import Settings, load_average
from training.mdp.memory import ClassPrototypeMemory, KeyQueue, RegionMemoryBank

PROTOTYPE_SCALING_CLASSES = (21, 171, 342, 1000, 3000)


PIXELS_PER_CLASS = (500, 5000)  # per-class pixel queues (ContrastiveSeg keeps 5000 per class)


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
