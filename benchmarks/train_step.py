"""Training-step cost of MDP against its lower bound, MoCo v2 and the baselines; prints a markdown section.

    python benchmarks/train_step.py                       # CPU, resnet18, 128^2 crops, batch 8
    python benchmarks/train_step.py --arch resnet50 --crop 512 --batch 8 --device cuda --amp bf16

All variants share backbone, output stride, crop and batch. Steps are interleaved (one step of each variant
per round, the order rotating between rounds) so drifting machine load hits all of them alike; the report
gives the median over rounds. "Lower bound" = query forward+backward of the same encoder (backbone + dense
head) + momentum-encoder forward + optimizer step + EMA, with a trivial loss: what any momentum method pays.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from training.data.label_space import LabelSpace
from training.mdp import build_method, momentum_schedule
from training.mdp.losses import moco_infonce
from training.mdp.model import build_encoder, create_momentum_copy, ema_update_

# The paper's union: VOC 21 + ADE20K 150 + COCO-Stuff 171 = 342 classes (docs/METHOD.md).
PAPER_DATASETS = (("voc", 21), ("ade20k", 150), ("coco_stuff", 171))
PAPER_IMAGES = 10_582 + 20_210 + 118_287  # VOC aug + ADE20K train + COCO-Stuff-164k train
PAPER_EPOCHS = 200
H100_BF16_DENSE_TFLOPS = 989.0  # H100 SXM dense bf16 tensor-core peak (NVIDIA datasheet)


class LowerBound(nn.Module):
    """Query fwd+bwd and momentum fwd of the MDP encoder with a trivial loss: the floor of any such step."""

    def __init__(self, arch: str, output_stride: int, embed_dim: int):
        super().__init__()
        self.encoder = build_encoder(arch, output_stride, embed_dim, head="dense", head_hidden_dim=512)
        self.momentum_encoder = create_momentum_copy(self.encoder)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        query = self.encoder(batch["image"])
        with torch.no_grad():
            keys = self.momentum_encoder(batch["image_k"])
        return {"loss": (query * keys).sum(1).mean()}

    def momentum_update(self, momentum: float) -> None:
        ema_update_(self.encoder, self.momentum_encoder, momentum)


def paper_label_space() -> LabelSpace:
    return LabelSpace([(name, [f"class{i}" for i in range(count)]) for name, count in PAPER_DATASETS])


def synthetic_batch(label_space: LabelSpace, batch: int, crop: int, device: torch.device) -> dict:
    """Images from all three datasets, labels inside each image's dataset block, 10% ignore."""
    dataset_id = torch.arange(batch) % len(label_space.datasets)
    offsets = torch.tensor([d.offset for d in label_space.datasets])
    sizes = torch.tensor([len(d.class_names) for d in label_space.datasets])
    # Blocky label maps (8x8 cells) so images hold a handful of classes, as real ones do.
    cells = torch.rand(batch, crop // 8, crop // 8)
    local = (cells * sizes[dataset_id][:, None, None]).long()
    mask = (offsets[dataset_id][:, None, None] + local).repeat_interleave(8, 1).repeat_interleave(8, 2)
    mask[torch.rand(mask.shape) < 0.1] = -1
    image = torch.randn(batch, 3, crop, crop)
    return {
        "image": image.to(device),
        "image_k": (image + 0.1 * torch.randn_like(image)).to(device),
        "mask": mask.to(device),
        "dataset_id": dataset_id.to(device),
        "index": torch.arange(batch, device=device),
    }


def make_variants(args, label_space, names: tuple[str, ...] | None = None) -> dict[str, nn.Module]:
    """The benchmarked variants by display name; ``names`` picks a subset (default: all, in this order)."""
    common = dict(label_space=label_space, arch=args.arch, output_stride=args.output_stride, embed_dim=args.embed_dim)
    builders = {
        "lower bound": lambda: LowerBound(args.arch, args.output_stride, args.embed_dim),
        "MDP full (mixup + CSC2)": lambda: build_method("mdp", **common),
        "MDP, ClassMix + CSC2": lambda: build_method("mdp", pixel_mix="classmix", **common),
        "MDP, no mixing": lambda: build_method("mdp", mixing=False, **common),
        "MDP, no CSC": lambda: build_method("mdp", sparse_coding=None, **common),
        "MDP, no mixing, no CSC": lambda: build_method("mdp", mixing=False, sparse_coding=None, **common),
        "MoCo v2 (queue 65536)": lambda: build_method("moco_v2", **common),
        "pixel-to-pixel": lambda: build_method("pixel_to_pixel", **common),
        "region bank": lambda: build_method("region_bank", **common),
        "supervised CE": lambda: build_method("supervised_ce", **common),
    }
    unknown = sorted(set(names or ()) - set(builders))
    if unknown:
        raise ValueError(f"unknown benchmark variants {unknown}; known: {list(builders)}")
    return {name: builders[name]() for name in (names or builders)}


class Trainer:
    """One optimizer per variant; ``step`` = forward, backward, SGD step, EMA (as training/engine does)."""

    def __init__(self, model: nn.Module, args, device: torch.device):
        self.model = model.to(device).train()
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
        self.device = device
        self.step_count = 0
        self.total_steps = args.warmup + args.repeats + 2

    def step(self, batch: dict) -> None:
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            out = self.model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.optimizer.step()
        self.model.momentum_update(momentum_schedule(self.step_count, self.total_steps, 0.999, 1.0))
        self.step_count += 1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    trainers: dict[str, Trainer], batch: dict, warmup: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall-clock seconds, process CPU seconds) of each step, per variant.

    CPU time counts the work of this process only, so on a shared CPU it is far less disturbed by other
    processes than the wall clock; on a GPU only the wall clock is meaningful.
    """
    names = list(trainers)
    for _ in range(warmup):
        for name in names:
            trainers[name].step(batch)
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(batch["image"].device)
            start, start_cpu = time.perf_counter(), time.process_time()
            trainers[name].step(batch)
            synchronize(batch["image"].device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
        print(f"round {round_index + 1}/{repeats} done", file=sys.stderr)
    return wall, cpu


def isolated_mdp_extra(methods: dict[str, nn.Module], batch: dict, repeats: int) -> dict[str, list[float]]:
    """Process CPU seconds of MDP's own work per step, on fixed encoder outputs, interleaved.

    The real ``query_view`` (mixing) and ``objective`` (prototype logits, losses, prototype update) plus the
    backward of the losses down to the query embeddings: everything an MDP step adds to the lower bound.
    Short and repeated many times, so far less noisy than the difference of two full steps.
    """
    encoded = {}
    for name, method in methods.items():
        with torch.no_grad():
            encoded[name] = (method.encoder(batch["image"]), method.momentum_encoder(batch["image_k"]))
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            query, keys = encoded[name]
            start = time.process_time()
            leaf = query.detach().requires_grad_()
            out = method.objective(leaf, keys, method.query_view(batch, keys))
            out["loss"].backward()
            times[name].append(time.process_time() - start)
    return times


def isolated_moco_difference(lower: LowerBound, moco: nn.Module, batch: dict, repeats: int) -> dict[str, list[float]]:
    """Process CPU seconds per step of the only work where a MoCo v2 step differs from the lower bound's, on fixed
    backbone features, interleaved: ``dense`` = the lower bound's dense heads on both views, its trivial loss and
    the backward to the features; ``pooled`` = MoCo v2's pooled heads, InfoNCE against the queue, the backward and
    the queue update. MoCo v2's step ~ lower bound - dense + pooled: short pieces timed many times, so far less
    noisy than a second whole step (backbones, optimizer and EMA are the same for both; the heads have about the
    same number of parameters)."""
    with torch.no_grad():
        query_features = lower.encoder.backbone.forward_features(batch["image"])
        key_features = lower.momentum_encoder.backbone.forward_features(batch["image_k"])

    def embed(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(head(features), dim=1)  # what Encoder.forward does after the backbone

    def dense() -> None:
        query = embed(lower.encoder.head, query_features.detach().requires_grad_())
        with torch.no_grad():
            keys = embed(lower.momentum_encoder.head, key_features)
        (query * keys).sum(1).mean().backward()

    def pooled() -> None:
        query = embed(moco.encoder.head, query_features.detach().requires_grad_())
        with torch.no_grad():
            keys = embed(moco.momentum_encoder.head, key_features)
        moco_infonce(query, keys, moco.queue.entries(), moco.tau).backward()
        moco.queue.update(keys)

    times = {"dense": [], "pooled": []}
    for _ in range(repeats):
        for name, work in (("dense", dense), ("pooled", pooled)):
            start = time.process_time()
            work()
            times[name].append(time.process_time() - start)
    return times


def count_step_flops(trainer: Trainer, batch: dict) -> int:
    """FLOPs of one forward + backward (torch.utils.flop_counter: matmul/conv family, 2 FLOPs per MAC)."""
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(trainer.device.type, enabled=False):
            out = trainer.model(batch)
        out["loss"].backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def projection_flops_per_image(
    args, label_space, arch: str = "resnet50", crops: tuple[int, int] = (64, 128)
) -> tuple[float, float]:
    """GFLOPs per image of a full MDP step with ``arch`` OS8 at 512^2, from counts at two small crops.

    Every FLOP of the step (convolutions, head, pixel-to-prototype logits) is proportional to the number of
    pixels, so the count at the larger crop times (512 / crop)^2 is the 512^2 count; the smaller crop checks
    that proportionality. Returns (GFLOPs per image at 512^2, count ratio large / small crop).
    """
    cpu = torch.device("cpu")
    per_crop = {}
    for crop in crops:
        torch.manual_seed(0)
        method = build_method("mdp", label_space=label_space, arch=arch, output_stride=8, embed_dim=args.embed_dim)
        trainer = Trainer(method, argparse.Namespace(**{**vars(args), "channels_last": False, "amp": "none"}), cpu)
        per_crop[crop] = count_step_flops(trainer, synthetic_batch(label_space, 2, crop, cpu)) / 2
    small, large = crops
    return per_crop[large] * (512 / large) ** 2 / 1e9, per_crop[large] / per_crop[small]


def memory_report(variants: dict[str, nn.Module], embed_dim: int, num_classes: int) -> list[str]:
    prototypes = variants["MDP full (mixup + CSC2)"].memory
    proto_bytes = sum(b.numel() * b.element_size() for b in prototypes.buffers())
    region_bytes = sum(b.numel() * b.element_size() for b in variants["region bank"].memory.buffers())
    moco_bytes = sum(b.numel() * b.element_size() for b in variants["MoCo v2 (queue 65536)"].queue.buffers())
    per_class_queue = num_classes * 5000 * embed_dim * 4  # ContrastiveSeg-style: 5000 pixels per class
    # A queue holding one embedding per labelled OS8 pixel of one epoch (the cross-batch pixel-to-pixel idea).
    pixels_per_epoch = PAPER_IMAGES * (512 // 8) ** 2
    all_pixels = pixels_per_epoch * embed_dim * 2  # fp16
    rows = [
        "| memory | size | grows with |",
        "|---|---|---|",
        f"| MDP class prototypes [{num_classes}, {embed_dim}] fp32 + counts + shares | {proto_bytes / 1e6:.3f} MB "
        "| classes only |",
        f"| region bank (4096 regions, fp32) | {region_bytes / 1e6:.2f} MB | bank size |",
        f"| MoCo v2 key queue (65536 x {embed_dim}, fp32) | {moco_bytes / 1e6:.1f} MB | queue size |",
        f"| pixel queue, 5000 pixels per class x {num_classes} classes (ContrastiveSeg-style), fp32 | "
        f"{per_class_queue / 1e9:.2f} GB | classes x pixels kept |",
        f"| every OS8 pixel of one epoch ({PAPER_IMAGES:,} images at 512^2), fp16 | {all_pixels / 1e12:.1f} TB | "
        "dataset size |",
    ]
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--output-stride", type=int, default=8)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--extra-repeats", type=int, default=30, help="repeats of the isolated MDP-only timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--skip-projection", action="store_true", help="skip the ResNet-50 512^2 FLOP count")
    # The project's report is docs/BENCHMARKS.md, written by `python -m benchmarks`; this script alone prints
    # its section and writes a file only when asked, so it never leaves a second, diverging report in docs/.
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report to this file")
    return parser.parse_args(argv)


def step_report(args: argparse.Namespace, device: torch.device, label_space: LabelSpace) -> list[str]:
    """Time, count and compare one training step of every variant; the markdown lines of the result."""
    torch.manual_seed(0)
    variants = make_variants(args, label_space)
    trainers = {name: Trainer(model, args, device) for name, model in variants.items()}
    batch = synthetic_batch(label_space, args.batch, args.crop, device)
    load_before = os.getloadavg()
    started = time.perf_counter()
    times, cpu_times = time_interleaved(trainers, batch, args.warmup, args.repeats)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()
    flops = {name: count_step_flops(trainer, batch) for name, trainer in trainers.items()}
    mdp_variants = {name: model for name, model in variants.items() if name.startswith("MDP")}
    extra = isolated_mdp_extra(mdp_variants, batch, args.extra_repeats)

    median = {name: statistics.median(values) for name, values in times.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu_times.items()}
    # On a CPU the ratios use process CPU time (robust to other load), on a GPU the wall clock.
    reference = median_cpu if device.type == "cpu" else median
    reference_name = "process CPU time" if device.type == "cpu" else "wall clock"
    lower, moco = reference["lower bound"], reference["MoCo v2 (queue 65536)"]
    lines = [
        "# Training-step benchmark (benchmarks/train_step.py)",
        "",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on **{device.type.upper()}** "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}), "
        f"backbone **{args.arch}** OS{args.output_stride}, crop **{args.crop}x{args.crop}**, batch **{args.batch}**, "
        f"D = {args.embed_dim}, C = {label_space.num_classes} (VOC 21 + ADE20K 150 + COCO-Stuff 171), "
        f"AMP {args.amp}, channels_last {args.channels_last}.",
        f"Median of {args.repeats} interleaved rounds after {args.warmup} warm-up rounds ({elapsed:.0f} s); "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (the machine is shared, so "
        "single steps are noisy; the rotation spreads that noise over all variants).",
        "",
        f"Ratios use the median **{reference_name}** per step.",
        "",
        "| variant | median wall (s) | min wall (s) | median CPU (s) | img/s (wall) | vs lower bound | vs MoCo v2 "
        "| GFLOP / image (fwd+bwd) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, value in median.items():
        ratio_base = reference[name]
        lines.append(
            f"| {name} | {value:.3f} | {min(times[name]):.3f} | {median_cpu[name]:.3f} | {args.batch / value:.1f} "
            f"| {ratio_base / lower:.3f}x | {ratio_base / moco:.3f}x | {flops[name] / args.batch / 1e9:.2f} |"
        )
    full = reference["MDP full (mixup + CSC2)"]
    return lines + [
        "",
        f"Targets: MDP full <= 1.10x lower bound (measured **{full / lower:.3f}x**) and <= 1.05x "
        f"MoCo v2 (measured **{full / moco:.3f}x**). "
        f"FLOPs: MDP full {flops['MDP full (mixup + CSC2)'] / flops['lower bound']:.3f}x "
        "the lower bound's.",
        *isolated_work_lines(args, extra, lower),
        "",
        "## Memory of the method (independent of the run)",
        "",
        *memory_report(variants, args.embed_dim, label_space.num_classes),
    ]


def isolated_work_lines(args: argparse.Namespace, extra: dict[str, list[float]], lower: float) -> list[str]:
    """MDP's own work per step, timed on fixed encoder outputs, against the lower bound's step."""
    return [
        "",
        "### MDP's own work, isolated",
        "",
        f"Median process CPU time of mixing + prototype logits + losses + their backward + prototype update on "
        f"fixed encoder outputs ({args.extra_repeats} interleaved repeats), against the lower bound's median CPU "
        "time per step. The lower bound's own trivial loss is negligible, so lower bound + this = an MDP step "
        "without noise from the encoder.",
        "",
        "| variant | extra CPU per step (ms) | extra / lower bound | implied step / lower bound |",
        "|---|---|---|---|",
        *(
            f"| {name} | {1000 * statistics.median(values):.1f} | {statistics.median(values) / lower:.2%} | "
            f"{1 + statistics.median(values) / lower:.3f}x |"
            for name, values in extra.items()
        ),
    ]


def projection_report(args: argparse.Namespace, label_space: LabelSpace) -> list[str]:
    """GPU hours of the paper's 200-epoch recipe from the counted FLOPs and an assumed H100 utilisation."""
    gflops_512, linearity = projection_flops_per_image(args, label_space)
    total_flops = gflops_512 * 1e9 * PAPER_IMAGES * PAPER_EPOCHS
    lines = [
        "",
        "## Projection: the paper's 200-epoch VOC+ADE20K+COCO recipe (ResNet-50, OS8, 512^2)",
        "",
        f"Counted with torch.utils.flop_counter: one full MDP step (query fwd+bwd, momentum fwd, prototype "
        f"logits, CSC2) costs **{gflops_512:.0f} GFLOP per image** at 512^2 (count at 128^2 x 16; the "
        f"128^2/64^2 ratio is {linearity:.3f}, i.e. cost proportional to pixels). "
        f"{PAPER_IMAGES:,} images x {PAPER_EPOCHS} epochs = {total_flops / 1e18:.2f} EFLOP.",
        "",
        "| hardware | assumed sustained bf16 throughput | GPU hours | wall clock |",
        "|---|---|---|---|",
    ]
    for utilisation in (0.25, 0.40):
        sustained = H100_BF16_DENSE_TFLOPS * utilisation * 1e12
        hours = total_flops / sustained / 3600
        lines.append(
            f"| 1x H100 SXM | {utilisation:.0%} of {H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s | "
            f"{hours:.0f} | {hours / 24:.1f} days |"
        )
        scaled = hours / 0.9  # 90% data-parallel scaling efficiency on one node
        lines.append(f"| 8x H100 SXM (90% scaling) | {utilisation:.0%} per GPU | {scaled:.0f} | {scaled / 8:.1f} h |")
    return lines + [
        "",
        "Utilisation is an assumption, not a measurement: dilated ResNet-50 training in bf16 with "
        "channels_last typically sustains a quarter to two fifths of the tensor-core peak; data loading "
        "must keep up (docs/DATA.md, workers per GPU). Re-run this script with `--device cuda --amp bf16 "
        "--channels-last --arch resnet50 --crop 512` on the target GPU before quoting a number.",
    ]


# CPU and GPU behave differently: say so beside the numbers.
CLOSING_NOTE = [
    "",
    "CPU numbers compare the method's extra work with the encoder's at a small scale (the loss and memory "
    "terms scale with pixels x classes, the encoder with pixels x channels^2). On a GPU the small loss, "
    "mixing and memory kernels cost launch latency rather than FLOPs, so the GPU ratio must be measured "
    "there with this same script.",
]


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    label_space = paper_label_space()
    lines = step_report(args, device, label_space)
    if not args.skip_projection:
        lines += projection_report(args, label_space)
    lines += CLOSING_NOTE
    print("\n".join(lines))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
