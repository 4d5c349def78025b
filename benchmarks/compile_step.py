"""torch.compile of the MDP training step against eager mode, on the demo recipe (``train.compile=true``).

For one crop and batch: the graphs and graph breaks Dynamo finds in the step (``torch._dynamo.explain``), the time
of the first compiled step (tracing and Inductor's code generation), and the median time of a training step
(forward, backward, SGD) in eager mode and compiled, on the same batches, with the largest loss difference
between the two over those steps.

    python -m benchmarks.compile_step [--crop 64] [--batch 4] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch._inductor.config
from torch.utils.data import DataLoader


def _batches(crop: int, batch: int, steps: int):
    from training.config import load_config
    from training.engine import distributed
    from training.pretraining import stages as pretraining_stages

    cpu = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    cfg = load_config("demo", ["data.photometric_on=worker", f"data.crop_size={crop}", f"train.batch_size={batch}"])
    label_space, stages = pretraining_stages.build_stages(cfg, cpu)
    torch.manual_seed(0)
    loader = DataLoader(stages[0].dataset, batch_size=batch, shuffle=True, drop_last=True)
    return cfg, label_space, cpu, [b for _, b in zip(range(steps), loader)]


def _timed_steps(model, method, batches) -> tuple[list[float], list[torch.Tensor]]:
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    seconds, losses = [], []
    for batch in batches:
        torch.manual_seed(1)  # the same mixing draws in both modes
        started = time.perf_counter()
        out = model(batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
        losses.append(out["loss"].detach())
    return seconds, losses


def run(crop: int = 64, batch: int = 4, steps: int = 8, backend: str = "inductor") -> dict:
    """Eager and compiled step times (the first compiled step apart), graph breaks and loss agreement."""
    from training.pretraining import model as pretraining_model

    cfg, label_space, cpu, batches = _batches(crop, batch, steps + 2)
    torch.manual_seed(0)
    method, model = pretraining_model.build_model(cfg, label_space, cpu)
    eager_seconds, eager_losses = _timed_steps(model, method, batches)

    torch._dynamo.reset()
    explained = torch._dynamo.explain(pretraining_model.build_model(cfg, label_space, cpu)[1])(batches[0])
    torch.manual_seed(0)
    method, model = pretraining_model.build_model(cfg, label_space, cpu)
    # Inductor draws random numbers with its own generator; the eager ones make the losses comparable
    torch._inductor.config.fallback_random = True
    compiled_seconds, compiled_losses = _timed_steps(torch.compile(model, backend=backend), method, batches)
    torch._dynamo.reset()
    eager = statistics.median(eager_seconds[2:])  # the first steps warm the allocator and caches
    compiled = statistics.median(compiled_seconds[2:])
    return {
        "crop": crop,
        "batch": batch,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "backend": backend,
        "graphs": explained.graph_count,
        "graph_breaks": explained.graph_break_count,
        "break_reasons": [str(reason.reason) for reason in explained.break_reasons],
        "first_compiled_step_s": compiled_seconds[0],
        "eager_step_s": eager,
        "compiled_step_s": compiled,
        "compiled_over_eager": compiled / eager,
        "loss_difference_by_step": [abs(float(a - b)) for a, b in zip(eager_losses, compiled_losses)],
        "eager_losses": [float(loss) for loss in eager_losses],
    }


def section_lines(report: dict, seconds: float, load: tuple[float, float]) -> list[str]:
    """Markdown of ``run``'s report."""
    ratio = report["compiled_over_eager"]
    reading = (
        "compiled is slower than eager on this CPU, so `train.compile` stays off by default"
        if ratio > 1
        else "compiled is faster than eager on this CPU"
    )
    breaks = "; ".join(report["break_reasons"]) or "none"
    diffs = report["loss_difference_by_step"]
    return [
        f"The demo recipe's MDP step (resnet18 OS8, crop {report['crop']}, batch {report['batch']}, "
        f"{report['threads']} torch threads), {report['steps']} timed steps after 2 warm-up steps, in eager mode and "
        f"through `torch.compile` (backend {report['backend']}) on the same batches; {seconds:.0f} s; load "
        f"average {load[0]:.2f} before, {load[1]:.2f} after.",
        "",
        "| graphs | graph breaks | first compiled step (s) | eager step (s) | compiled step (s) | compiled / eager "
        "| loss difference: step 1 / largest over steps 1-3 / over all steps |",
        "|---|---|---|---|---|---|---|",
        f"| {report['graphs']} | {report['graph_breaks']} | {report['first_compiled_step_s']:.1f} | "
        f"{report['eager_step_s']:.3f} | {report['compiled_step_s']:.3f} | {ratio:.2f}x | "
        f"{diffs[0]:.1e} / {max(diffs[:3]):.1e} / {max(diffs):.1e} |",
        "",
        f"Graph breaks: {breaks} (the suite captures the step with `fullgraph=True`, which fails on any break). "
        "Losses are compared step by step from the same weights and batches, with Inductor "
        "drawing its random numbers as eager mode does (`fallback_random`): they agree to float rounding at first, "
        "then part as the fused kernels' summation order differs and training amplifies it, as two eager runs on "
        f"different hardware would; {reading}. Not measured on a GPU, where Inductor's fused kernels are the point.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.crop, args.batch, args.steps), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
