"""The paper's tables in miniature: every pretraining method on the same datasets, fine-tuned on the same targets.

    python -m training.experiments paper-tables [--pretrain SPEC ...] [--targets SPEC ...] [--seeds 0 1 2]
        [--jobs 2] [--output runs/paper_tables] [--results docs/RESULTS.md] [--section paper-tables] [--quick]

Every pretraining method of the paper's tables (plus training from scratch) is pretrained on the ``--pretrain``
datasets, concatenated in that order (``python -m training.pretrain``, the demo recipe with the method and the
datasets swapped), then fine-tuned (``python -m training.finetune``, DeepLabV3) on each ``--targets`` dataset,
once per seed. A target ``NAME:PATH[:split]`` is fine-tuned on its format's training split and scored on
``split`` (default: the format's evaluation split); it is "seen" when it is one of the pretraining datasets,
else "held out". The default (``--pretrain synthetic``) is the synthetic VOC-aug + ADE20K + COCO-Stuff
look-alikes with two targets, synthetic ``voc_aug`` (seen, scored on val) and the Cityscapes-layout dataset
(held out, partly new label space).

Every method gets the same schedule, backbone, crops and fine-tuning recipe; only the pretraining objective
(and, for the unification row, the label space) differs. The command writes its own section of
``docs/RESULTS.md`` between ``<!-- SECTION:begin -->`` / ``<!-- SECTION:end -->`` markers (``--section``, so a
study on other datasets gets a section of its own): mean +- sample std over seeds, the paper's numbers for
reference, the paper's orderings checked one by one, the pretraining losses; plus ``docs/RESULTS.json`` (every
run, under the section's key) and plots.

Runs are ordinary run folders under ``--output`` (pretraining ``pretrain/<method>/seed<k>``, fine-tuning
``finetune/<target>/<method>/seed<k>``, each with its log; ``<target>`` is the dataset's label-space name). A job
that finished is not run again and a killed job resumes from its checkpoint, so re-running the same command
continues an interrupted study. ``--jobs`` runs that many jobs side by side with one thread each (on 2 cores, 2
jobs of 1 thread are ~1.6x faster than one job of 2 threads for these small models).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mdp_hub.errors import UserError, command
from training.studies.design import (
    DEFAULT_SEEDS,
    METHOD_KEYS,
    SYNTHETIC,
    resolve_study_data,
    study_budget,
    study_methods,
)
from training.studies.dynamics import pretraining_dynamics
from training.studies.scheduling import run_study
from training.studies.tables import DEFAULT_SECTION, study_info, summary_lines, write_report


def _add_paper_tables_arguments(tables: argparse.ArgumentParser) -> None:
    tables.add_argument(
        "--pretrain",
        nargs="+",
        default=[SYNTHETIC],
        metavar="SPEC",
        help="pretraining datasets NAME:PATH[:split], concatenated in this order (default: "
        "synthetic, the generated VOC-aug + ADE20K + COCO-Stuff look-alikes)",
    )
    tables.add_argument(
        "--targets",
        nargs="+",
        default=[],
        metavar="SPEC",
        help="fine-tuning datasets NAME:PATH[:split]: trained on the format's training split, "
        "scored on split (default: the format's evaluation split); required unless synthetic",
    )
    tables.add_argument(
        "--unify-map",
        type=Path,
        default=None,
        help="class-name unification map (JSON) for the mdp_unified row; synthetic has its own",
    )
    tables.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS, help="seeds per row")
    tables.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=METHOD_KEYS,
        metavar="METHOD",
        help="rows to run (default: all; mdp_unified only with a unification map; the choices "
        "are listed in the usage line)",
    )
    tables.add_argument("--jobs", type=int, default=2, help="jobs side by side, one thread each (default 2)")
    tables.add_argument(
        "--output",
        type=Path,
        default=Path("runs/paper_tables"),
        help="folder of the run folders (default runs/paper_tables)",
    )
    tables.add_argument(
        "--results",
        type=Path,
        default=Path("docs/RESULTS.md"),
        help="Markdown file whose section is (re)written; .json and .png next to it",
    )
    tables.add_argument(
        "--section",
        default=DEFAULT_SECTION,
        help="name of the section (its markers, its .json key and plot names; default paper-tables)",
    )


def _add_override_arguments(tables: argparse.ArgumentParser) -> None:
    """Overrides of the recipes: backbone, crop, schedule lengths, where the synthetic data lives, quick mode."""
    tables.add_argument("--arch", default=None, help="backbone (timm name; default resnet18)")
    tables.add_argument("--crop", type=int, default=None, help="square training crop in pixels (default 96)")
    tables.add_argument(
        "--base-size",
        type=int,
        default=None,
        help="short side before the random rescale and at evaluation (default: the recipes')",
    )
    tables.add_argument("--pretrain-epochs", type=int, default=None, help="override the pretraining epochs")
    tables.add_argument("--pretrain-steps", type=int, default=None, help="cap on each pretraining's steps")
    tables.add_argument("--finetune-iterations", type=int, default=None, help="override the fine-tuning iterations")
    tables.add_argument("--window", type=int, default=None, help="the MDP rows' prototype window (default 4096)")
    tables.add_argument("--synthetic-root", default="", help="synthetic benchmark folder (default: the cache)")
    tables.add_argument(
        "--quick",
        action="store_true",
        help="a few steps per run (and a tiny synthetic benchmark): a smoke test, numbers meaningless",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mdp_hub.help_format import HelpFormatter, plain  # here: the study driver needs no timm otherwise

    parser = argparse.ArgumentParser(
        prog="python -m training.experiments", description=plain(__doc__), formatter_class=HelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    summary = "pretrain every method, fine-tune on seen and held-out datasets, write a section of docs/RESULTS.md"
    tables = sub.add_parser(
        "paper-tables", help=summary, description=summary[0].upper() + summary[1:] + ".", formatter_class=HelpFormatter
    )
    _add_paper_tables_arguments(tables)
    _add_override_arguments(tables)
    return parser.parse_args(argv)


@command("python -m training.experiments", expected=(ValueError,))  # bad specs, layouts, method lists
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: must be at least 1")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", args.section):
        raise UserError(f"--section {args.section!r}: use lower-case letters, digits and '-'")
    budget = study_budget(args)
    data = resolve_study_data(args.pretrain, args.targets, args.unify_map, budget)
    methods = study_methods(args.methods, data.unify_map is not None)
    output = args.output.resolve()
    records = run_study(methods, args.seeds, output, budget, args.jobs, data)
    failures = [r for r in records if "error" in r]
    info = study_info(args, budget, data, methods, records)
    dynamics = pretraining_dynamics(output, methods, args.seeds, budget.pretrain_batch)
    table = write_report(records, methods, args.results, info, dynamics)
    print("\n".join(summary_lines(table, methods, data.targets)))
    print(f"wrote {args.results} (study: {info['wall_minutes']:.1f} min wall clock)")
    if failures:
        print(f"{len(failures)} job(s) failed: " + "; ".join(r["error"] for r in failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
