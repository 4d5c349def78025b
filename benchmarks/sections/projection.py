"""Section 5: FLOPs per training image of the paper's recipe, counted, and its GPU hours at stated utilisations."""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.report import Settings, load_average, machine_line, step_args
from benchmarks.sections.training_step import MDP_FULL, MOCO
from benchmarks.train_step import (
    H100_BF16_DENSE_TFLOPS,
    PAPER_EPOCHS,
    PAPER_IMAGES,
    paper_label_space,
    projection_flops_per_image,
)

UTILISATIONS = (0.25, 0.40)  # assumed sustained fraction of the H100 bf16 peak; 0.40 is the headline


DATA_PARALLEL_EFFICIENCY = 0.9  # 8 GPUs on one node


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
    images_per_s = h100_images_per_s(gflops_512)
    for utilisation, rate in images_per_s.items():
        sustained = H100_BF16_DENSE_TFLOPS * 1e12 * utilisation
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


def h100_images_per_s(gflops_512: float) -> dict[float, float]:
    """Training images per second of one H100 at each assumed utilisation, for a step of ``gflops_512``."""
    return {u: H100_BF16_DENSE_TFLOPS * 1e12 * u / (gflops_512 * 1e9) for u in UTILISATIONS}


def projected_h100_images_per_s(settings: Settings) -> dict[float, float]:
    """:func:`h100_images_per_s` of the paper's step at 512 px, counted afresh (a few seconds)."""
    gflops_512, _ = projection_flops_per_image(
        step_args(settings), paper_label_space(), settings.projection_arch, settings.projection_crops
    )
    return h100_images_per_s(gflops_512)
