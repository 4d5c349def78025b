"""Controlled probes of the demo's learning dynamics: one knob at a time, same data, seed and steps.

    python -m training.probes [--output runs/probes] [--doc docs/LEARNING.md] [--jobs 2] [--only KEY ...]

Each row is the README demo (``python -m training.pretrain``) with a few ``--set`` overrides; every run logs the
learning-dynamics probe (``train.probe_every``) into its metrics.jsonl. The command reads those files and writes
the table between markers in ``--doc``. A run that finished is not run again, so re-running the command after
a kill continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mdp_hub.errors import command
from training.studies.probes import PROBES, run_probe, summarise, table, write_section


@command("python -m training.probes")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.probes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("runs/probes"), help="run folders (default: %(default)s)")
    parser.add_argument("--doc", type=Path, default=Path("docs/LEARNING.md"), help="page to write the table into")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each (default: 2)")
    parser.add_argument("--only", nargs="+", metavar="KEY", choices=[p.key for p in PROBES], help="run only these rows")
    args = parser.parse_args(argv)
    probes = [p for p in PROBES if not args.only or p.key in args.only]
    try:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            run_dirs = list(pool.map(lambda probe: run_probe(probe, args.output), probes))
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    rows = [(probe, summarise(run_dir / "metrics.jsonl")) for probe, run_dir in zip(probes, run_dirs)]
    (args.output / "probes.json").write_text(json.dumps({p.key: s for p, s in rows}, indent=1))
    write_section(args.doc, table(rows))
    print(f"wrote the probe table of {len(rows)} runs to {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
