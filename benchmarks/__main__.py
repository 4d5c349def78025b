"""One benchmark command: training step, memory, data pipeline, hub loading and the GPU-hour projection.

    python -m benchmarks                  # full run (about 10-20 minutes on 2 CPU cores)
    python -m benchmarks --quick          # a few minutes, fewer repeats and smaller crops
    python -m benchmarks --out docs/BENCHMARKS.md
    python -m benchmarks --only data_pipeline   # refresh one section of an existing report

Run from the repository root. Every number in the report comes from this run: the training-step variants are
timed in this process (benchmarks/train_step.py), the data pipeline in a subprocess with one thread like a
DataLoader worker (benchmarks/data_pipeline.py), hub loading from an offline local cache (benchmarks/hub_load.py).
A PNG of the memory scaling is written next to the report. Each section is a module of benchmarks/sections/.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.report import PRESETS, Settings, replace_block
from benchmarks.sections.compile import compile_section
from benchmarks.sections.data_index import data_index_section
from benchmarks.sections.data_pipeline import data_pipeline_section
from benchmarks.sections.hub_loading import hub_section
from benchmarks.sections.instruments import instruments_section
from benchmarks.sections.memory import memory_scaling_section, paper_memory_section
from benchmarks.sections.projection import paper_section, projected_h100_images_per_s
from benchmarks.sections.training_step import train_step_section
from mdp_hub.errors import command
from mdp_hub.help_format import HelpFormatter, plain

# The sections between markers, which ``--only`` refreshes in an existing report.
ONLY_SECTIONS = {
    "instruments": lambda settings, device: instruments_section(settings, device),
    "data_index": lambda settings, device: data_index_section(settings),
    "compile": lambda settings, device: compile_section(settings),
    "data_pipeline": lambda settings, device: data_pipeline_section(settings, projected_h100_images_per_s(settings)),
}


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


def all_sections(settings: Settings, device: torch.device, out: Path) -> list[str]:
    """Every section in the report's order (the projection's GPU rates size the data pipeline's workers)."""
    print("[1/5] training step", file=sys.stderr)
    train_lines, train = train_step_section(settings, device)
    memory_lines = memory_scaling_section(settings.embed_dim, out.with_name(out.stem + "_memory.png"), out.parent)
    print("[2/5] FLOPs and projection", file=sys.stderr)
    paper_lines, paper = paper_section(settings, train["args"], train["label_space"], train["flops_per_image"])
    print("[3/5] data pipeline", file=sys.stderr)
    data_lines = data_pipeline_section(settings, paper["h100_images_per_s"])
    print("[4/5] hub loading", file=sys.stderr)
    sections = [
        train_lines,
        [*memory_lines, "", *paper_memory_section(settings)],
        data_lines,
        hub_section(settings),
        paper_lines,
        data_index_section(settings),
        compile_section(settings),
        instruments_section(settings, device),
    ]
    return [line for section in sections for line in (*section, "")]


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
    started, clock = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    body = all_sections(settings, device, out)
    preset = f" --preset {args.preset}" if args.preset != "full" else ""
    header = [
        "# Benchmarks",
        "",
        f"Written by `python -m benchmarks{preset}` on {started:%Y-%m-%d %H:%M} UTC in "
        f"{time.perf_counter() - clock:.0f} s (preset **{args.preset}**). Every number below comes from that run; "
        "re-run the command to refresh the page. Each section states its machine, versions, settings and the load "
        "average around it (the machine may be shared).",
        "",
    ]
    out.write_text("\n".join([*header, *body]))
    print(f"[5/5] wrote {out} and {out.with_name(out.stem + '_memory.png')}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
