"""``python -m training.data synth [OUT_DIR]`` and ``python -m training.data check SPEC [SPEC...] [--json]``."""

from __future__ import annotations

import argparse
import json
import sys

from mdp_hub.errors import command
from training.data.doctor import check_spec, format_report
from training.data.synthetic import ensure_synthetic, generate


@command("python -m training.data")
def main(argv: list[str] | None = None) -> int:
    from mdp_hub.help_format import HelpFormatter, plain  # here: the data tools need no timm otherwise

    parser = argparse.ArgumentParser(
        prog="python -m training.data", description=plain(__doc__), formatter_class=HelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    synth = commands.add_parser("synth", help="write the synthetic multi-dataset benchmark in the real layouts")
    synth.add_argument("out_dir", nargs="?", help="new folder (default: the cache used by the trainers)")
    synth.add_argument("--seed", type=int, default=0, help="random seed of the images (default 0)")
    check = commands.add_parser("check", help="validate datasets: layout, every sample, class histograms")
    check.add_argument(
        "specs", nargs="+", metavar="SPEC", help="NAME:PATH[:split], e.g. ade20k:/data/ADEChallengeData2016"
    )
    check.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args(argv)

    if args.command == "synth":
        specs = generate(args.out_dir, args.seed) if args.out_dir else ensure_synthetic(seed=args.seed)
        print(json.dumps(specs, indent=1))
        return 0
    reports = []
    for spec in args.specs:
        try:
            reports.extend(check_spec(spec))
        except ValueError as error:  # a malformed spec string
            reports.append({"spec": spec, "samples": 0, "errors": [{"file": spec, "problem": str(error)}]})
    if args.json:
        print(json.dumps(reports, indent=1))
    else:
        print("\n".join(format_report(r) for r in reports))
    problems = sum(len(r["errors"]) for r in reports)
    if not args.json:
        print(f"{len(reports)} split(s) checked, {problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
