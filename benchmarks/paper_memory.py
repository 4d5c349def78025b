"""Memory of one training step of every paper recipe at its true size, and what it means on a GPU.

For each distinct (arch, method, output stride) of the paper recipes, in a fresh process (so the peak is this
step's): build the method as the recipe does (342 classes), take one SGD step on ``--batch`` synthetic images at
the recipe's crop, and record

  measured  the process's peak resident memory during the step minus its resident memory before it (fp32, CPU):
            activations, gradients, optimizer state and the allocator's temporaries;
  counted   the bytes of every tensor autograd saves for the backward pass (``saved_tensors_hooks``, each storage
            counted once), in fp32 and under bf16 autocast (CPU autocast casts as CUDA autocast does);
  fixed     parameters, gradients, SGD momentum and the momentum encoder, in fp32.

The GPU projection per image is the counted bf16 activations scaled by measured / counted at fp32 (the share of
temporaries the count does not see); the largest batch per GPU is what fits beside the fixed part and 1.5 GB of
CUDA context and workspace, with 10% of the GPU kept free.

    python benchmarks/paper_memory.py [--crop 512] [--batch 1] [--out report.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

GPU_GB = (24, 40, 80)
CUDA_CONTEXT_GB = 1.5
GPU_FREE_SHARE = 0.1


def paper_combinations() -> dict[tuple[str, str, int], list[str]]:
    """(arch, method, output stride) -> the paper recipes that train it."""
    from training.config import list_recipes, load_config

    combos: dict[tuple[str, str, int], list[str]] = {}
    for name in list_recipes():
        cfg = load_config(name, [])
        if cfg.data.crop_size < 256:  # the CPU demo
            continue
        combos.setdefault((cfg.method.arch, cfg.method.name, cfg.method.output_stride), []).append(name)
    return combos


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _saved_bytes(step, autocast: bool) -> int:
    """Bytes of the tensors autograd saves during ``step()`` (each storage once)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            step(backward=False)
    return sum(seen.values())


def measure_one(recipe: str, crop: int, batch: int) -> dict:
    """One recipe's step in this process: measured peak delta, counted activations, fixed bytes."""
    from benchmarks.train_step import paper_label_space, synthetic_batch
    from training.config import load_config
    from training.pretraining.model import method_from_config

    cfg = load_config(recipe, [])
    label_space = paper_label_space()
    torch.manual_seed(0)
    method = method_from_config(cfg, label_space, cfg.method.options).train()
    parameters = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9)
    data = synthetic_batch(label_space, batch, crop, torch.device("cpu"))

    def step(backward: bool = True) -> None:
        loss = method(data)["loss"]
        if backward:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)

    weights = sum(t.numel() * t.element_size() for t in method.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in parameters)
    before = _rss_bytes()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "recipe": recipe,
        "crop": crop,
        "batch": batch,
        "measured_step_bytes": max(0, peak - before),
        "counted_fp32_bytes": _saved_bytes(step, autocast=False),
        "counted_bf16_bytes": _saved_bytes(step, autocast=True),
        "fixed_bytes": weights + 2 * trainable,  # weights (incl. momentum encoder, buffers) + grads + momentum
    }


def project(row: dict) -> dict:
    """Per-image bf16 GPU memory and the largest batch per GPU size."""
    temporaries = row["measured_step_bytes"] / max(row["counted_fp32_bytes"], 1)
    per_image = row["counted_bf16_bytes"] * max(temporaries, 1.0) / row["batch"]
    fixed = row["fixed_bytes"] + CUDA_CONTEXT_GB * 1e9
    fits = {gb: max(0, int((gb * 1e9 * (1 - GPU_FREE_SHARE) - fixed) // per_image)) for gb in GPU_GB}
    return {**row, "temporaries_factor": temporaries, "bf16_per_image_bytes": per_image, "largest_batch": fits}


def run(crop: int, batch: int, limit: int | None = None) -> list[dict]:
    """Every paper combination (the first ``limit``), each in its own process (its peak is then its own)."""
    rows = []
    for (arch, method, stride), recipes in sorted(paper_combinations().items())[:limit]:
        code = (
            "import json, sys; from benchmarks.paper_memory import measure_one; "
            f"print(json.dumps(measure_one({recipes[0]!r}, {crop}, {batch})))"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{recipes[0]} failed:\n{done.stderr[-2000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(project({**row, "arch": arch, "method": method, "output_stride": stride, "recipes": recipes}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = run(args.crop, args.batch)
    for row in rows:
        print(
            f"{row['arch']} {row['method']} OS{row['output_stride']}: measured {row['measured_step_bytes'] / 1e9:.2f} "
            f"GB, counted fp32 {row['counted_fp32_bytes'] / 1e9:.2f} GB, bf16 {row['counted_bf16_bytes'] / 1e9:.2f} "
            f"GB, largest batch {row['largest_batch']}"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
