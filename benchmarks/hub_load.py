"""Benchmark: ``timm.create_model(..., pretrained=True)`` from a local Hugging Face cache, MDP vs timm.

Builds one offline Hub cache holding (1) an ``mdp-hub`` export of random ResNet-50 weights under the
registered repo of ``mdp_resnet50`` and (2) random weights in timm's own format under
``timm/resnet50.a1_in1k`` (what ``create_model('resnet50', pretrained=True)`` reads). Then times, with
interleaved repeats and medians, ``mdp_resnet50`` against ``resnet50`` (with its 1000-class head, as users
call it) and ``resnet50`` with ``num_classes=0`` (same headless work as MDP). Target: ratio <= 1.1.

    python benchmarks/hub_load.py [--repeats 9] [--write-docs docs/HUB.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import huggingface_hub
import timm
import torch
from safetensors.torch import save_file

import mdp_hub

BEGIN, END = "<!-- benchmark:hub_load -->", "<!-- /benchmark:hub_load -->"


def fill_cache(root: Path) -> Path:
    """An HF cache with MDP and timm ResNet-50 weights (random values, real formats); returns its path."""
    cache = root / "hf_cache"
    torch.manual_seed(0)
    timm_model = timm.create_model("resnet50")
    headless = {k: v for k, v in timm_model.state_dict().items() if not k.startswith("fc.")}
    save_file(headless, str(root / "mdp.safetensors"))
    export = mdp_hub.export(root / "mdp.safetensors", root / "mdp_export")  # random weights claim no recipe
    mdp_hub.install_export(export, timm.models.get_pretrained_cfg("mdp_resnet50").hf_hub_id, cache_dir=cache)
    timm_folder = root / "timm_export"
    timm_folder.mkdir()
    save_file(timm_model.state_dict(), str(timm_folder / "model.safetensors"))
    cfg = timm.models.get_pretrained_cfg("resnet50")
    (timm_folder / "config.json").write_text(
        json.dumps({"architecture": "resnet50", "num_classes": 1000, "pretrained_cfg": cfg.to_dict(remove_source=True)})
    )
    mdp_hub.install_export(timm_folder, cfg.hf_hub_id, cache_dir=cache)
    return cache


def time_once(name: str, cache: Path, **kwargs) -> float:
    start = time.perf_counter()
    timm.create_model(name, pretrained=True, cache_dir=cache, **kwargs)
    return time.perf_counter() - start


def run(repeats: int) -> dict[str, list[float]]:
    huggingface_hub.constants.HF_HUB_OFFLINE = True  # the cache is the only source, as for an offline user
    cases = {
        "mdp_resnet50": ("mdp_resnet50", {}),
        "resnet50 (timm, 1000-class head)": ("resnet50", {}),
        "resnet50 (timm, num_classes=0)": ("resnet50", {"num_classes": 0}),
    }
    times: dict[str, list[float]] = {label: [] for label in cases}
    with tempfile.TemporaryDirectory() as tmp:
        cache = fill_cache(Path(tmp))
        for label, (name, kwargs) in cases.items():  # warm-up: imports, file system cache
            time_once(name, cache, **kwargs)
        for _ in range(repeats):
            for label, (name, kwargs) in cases.items():
                times[label].append(time_once(name, cache, **kwargs))
    return times


def per_run_ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """mdp_resnet50's time over each model's: each run loads every model once, back to back, so per-run ratios
    cancel the drift of a shared machine; the median of them."""
    return {
        label: statistics.median(m / t for m, t in zip(times["mdp_resnet50"], values))
        for label, values in times.items()
    }


def table_lines(times: dict[str, list[float]]) -> list[str]:
    """The table of load times: median, min and the per-run ratio of every model."""
    ratio = per_run_ratios(times)
    return [
        "| create_model(..., pretrained=True) | median (s) | min (s) | mdp_resnet50 / this |",
        "|---|---|---|---|",
        *(
            f"| {label} | {statistics.median(values):.3f} | {min(values):.3f} | {ratio[label]:.3f}x |"
            for label, values in times.items()
        ),
    ]


def report(times: dict[str, list[float]], repeats: int) -> str:
    lines = [
        BEGIN,
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} with `python benchmarks/hub_load.py --repeats {repeats}` "
        f"on {platform.machine()}, torch {torch.__version__}, timm {timm.__version__}, "
        f"{torch.get_num_threads()} threads (shared machine), offline, weights from a local Hugging Face cache; "
        f"median of {repeats} interleaved runs after one warm-up; the ratio is the median of the per-run ratios.",
        "",
        *table_lines(times),
        "",
        f"Target: `mdp_resnet50` / timm `resnet50` <= 1.1; measured "
        f"{per_run_ratios(times)['resnet50 (timm, 1000-class head)']:.2f}.",
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--write-docs", type=Path, help="replace the benchmark section of this markdown file")
    args = parser.parse_args()
    section = report(run(args.repeats), args.repeats)
    print(section)
    if args.write_docs:
        text = args.write_docs.read_text()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{args.write_docs}: no {BEGIN} ... {END} markers to replace")
        head, rest = text.split(BEGIN, 1)
        args.write_docs.write_text(head + section + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
