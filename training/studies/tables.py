"""A study's section of the results page: the table (mean +- std over seeds, the paper's numbers beside it), the
orderings checked, the curves, and the section put in place between its markers."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from training.data.specs import DatasetSpec, parse_spec
from training.studies.design import (
    BUDGET_OPTIONS,
    DEFAULT_SEEDS,
    FULL,
    QUICK,
    TARGETS,
    Budget,
    Method,
    StudyData,
    Target,
    study_setup,
)
from training.studies.orderings import check_orderings, paired_difference
from training.studies.plots import write_curves, write_plot
from training.studies.scheduling import study_wall_minutes

DEFAULT_SECTION = "paper-tables"


def section_markers(section: str) -> tuple[str, str]:
    """The comments that delimit a study's section of the results page."""
    option = "" if section == DEFAULT_SECTION else f" --section {section}"
    return (
        f"<!-- {section}:begin (written by python -m training.experiments paper-tables{option}) -->",
        f"<!-- {section}:end -->",
    )


SECTION_BEGIN, SECTION_END = section_markers(DEFAULT_SECTION)


# ---- aggregation and report ----------------------------------------------------------------------------------
def summarise(records: list[dict], methods: list[Method], targets: tuple[str, ...] = TARGETS) -> dict:
    """``{method: {target: {"mean", "std", "n", "seeds": [...]}}}`` from the fine-tuning records."""
    table: dict = {}
    for method in methods:
        row = table.setdefault(method.key, {})
        for target in targets:
            scores = {
                r["seed"]: r["mIoU"]
                for r in records
                if r.get("kind") == "finetune" and "mIoU" in r and r["method"] == method.key and r["target"] == target
            }
            values = [scores[seed] for seed in sorted(scores)]
            row[target] = {
                "mean": statistics.fmean(values) if values else math.nan,
                "std": statistics.stdev(values) if len(values) > 1 else math.nan,
                "n": len(values),
                "seeds": sorted(scores),
                "values": values,
            }
    return table


def format_cell(cell: dict) -> str:
    if not cell["n"]:
        return "not run"
    std = f" ± {cell['std']:.2f}" if cell["std"] == cell["std"] else ""
    return f"{cell['mean']:.2f}{std}" + (f" (n={cell['n']})" if cell["n"] != 3 else "")


def shown_spec(spec: str) -> str:
    """A spec as the results page shows it: the dataset folder's name instead of its path on this machine."""
    parsed = parse_spec(spec)
    return str(DatasetSpec(parsed.name, Path(parsed.path).name or parsed.path, parsed.split))


def study_command(info: dict) -> str:
    """The command line that (re)writes a section, as the section quotes it (options left at their defaults are
    not repeated)."""
    words = ["python -m training.experiments paper-tables"] + (["--quick"] if info["quick"] else [])
    if not info["synthetic"]:
        words += ["--pretrain", *info["pretrain"], "--targets", *(t["eval_spec"] for t in info["targets"])]
    if info["unify_map_file"]:
        words += ["--unify-map", info["unify_map_file"]]
    if info["methods_requested"]:
        words += ["--methods", *info["methods"]]
    if info["seeds"] != DEFAULT_SEEDS:
        words += ["--seeds", *map(str, info["seeds"])]
    preset = asdict(QUICK if info["quick"] else FULL)
    for option, name in BUDGET_OPTIONS:
        if info["budget"][name] != preset[name]:
            words += [option, str(info["budget"][name])]
    if info["section"] != DEFAULT_SECTION:
        words += ["--section", info["section"]]
    return " ".join(words)


def section_intro(info: dict) -> str:
    scored = ", ".join(f"{t['key']} on its {t['split']} split" for t in info["targets"])
    folders = "" if info["synthetic"] else "dataset folders shown by name; "
    return (
        f"Produced by `{study_command(info)}` ({folders}{info['jobs_run']} jobs, "
        f"{info['compute_minutes']:.0f} min of job time on {info['lanes']} lanes, "
        f"{info['wall_minutes']:.0f} min wall clock, {info['date']}). "
        f"Every method: {info['setup']}. mIoU (%) after fine-tuning ({scored}), mean ± sample std over seeds "
        f'{", ".join(map(str, info["seeds"]))}; "vs scratch": mean ± std of the per-seed difference to '
        "training from scratch with the same seed. The paper's numbers (ResNet-50, VOC-aug + ADE20K (+ COCO) "
        "pretraining, fine-tuned on VOC-aug and Cityscapes, 100-200 epochs; arXiv 2106.04121) are there to "
        "show the ordering the paper claims, not to be matched."
    )


def render_table(table: dict, methods: list[Method], targets: list[dict]) -> list[str]:
    header = "".join(f" fine-tune {t['key']} ({t['role']}) | vs scratch |" for t in targets)
    lines = [
        f"| pretraining |{header} paper VOC | paper Cityscapes | paper setting |",
        "|---|" + "---:|---:|" * len(targets) + "---:|---:|---|",
    ]

    def versus_scratch(key: str, target: str) -> str:
        paired = (
            None
            if key == "scratch" or "scratch" not in table
            else paired_difference(table[key][target], table["scratch"][target])
        )
        return "–" if paired is None else f"{paired[0]:+.2f} ± {paired[1]:.2f}"

    for method in methods:
        cells = "".join(
            f" {format_cell(table[method.key][t['key']])} | {versus_scratch(method.key, t['key'])} |" for t in targets
        )
        paper = " | ".join(f"{method.paper[t]:.2f}" if t in method.paper else "–" for t in TARGETS)
        lines.append(f"| {method.label} |{cells} {paper} | {method.paper_note} |")
    return lines


def render_checks(checks: list[dict]) -> list[str]:
    lines = [
        "### The paper's orderings, checked",
        "",
        "Seeds are paired (seed k of every row fine-tunes on the same sample order), so each check is the mean "
        'of the per-seed differences; "noise" is their sample standard deviation, and "within noise" '
        "means |mean difference| < noise.",
        "",
        "| claim | target | mean paired difference (mIoU) | noise | verdict |",
        "|---|---|---:|---:|---|",
    ]
    for check in checks:
        lines.append(
            f"| {check['better']} > {check['worse']}: {check['claim']} | {check['target']} | "
            f"{check['difference']:+.2f} | {check['noise']:.2f} | {check['verdict']} |"
        )
    held = sum(c["verdict"] == "holds" for c in checks)
    reversed_ = sum(c["verdict"] == "reversed" for c in checks)
    lines += [
        "",
        f"Of {len(checks)} checks, {held} hold, {reversed_} are reversed and "
        f"{len(checks) - held - reversed_} are within noise.",
    ]
    return lines


def render_dynamics(dynamics: dict, methods: list[Method], curves_name: str) -> list[str]:
    lines = [
        "### Pretraining dynamics",
        "",
        "Per row, mean over seeds. From the training log (averages over each logging interval): the loss at the first "
        "and the last logged step, the prototype accuracy on the training batches at the end (prototype rows) and "
        "the time per step of one job. From the learning probe on a fixed set of held-out pretraining crops (the "
        "same crops for every row; docs/LEARNING.md): the backbone's ridge linear-probe pixel accuracy at step 0 "
        "(random init) and at the end, and for prototype rows the held-out nearest-prototype accuracy and the mean "
        "cosine between the prototypes of seen classes at the end.",
        "",
        "| pretraining | steps | loss, first log | loss, last log | prototype accuracy, end | backbone probe, "
        "step 0 -> end | held-out prototype accuracy | prototype cosine | s/step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method in methods:
        row = dynamics.get(method.key)
        if not row:
            continue
        lines.append(
            f"| {method.label} | {row['steps']} | {row['loss_first']:.3f} | {row['loss_last']:.3f} | "
            f"{_optional(row['prototype_accuracy'])} | {_optional(row.get('backbone_probe_start'))} -> "
            f"{_optional(row.get('backbone_probe_end'))} | {_optional(row.get('heldout_prototype_accuracy'))} | "
            f"{_optional(row.get('prototype_cosine'))} | {row['seconds_per_step']:.2f} |"
        )
    return lines + ["", f"![pretraining loss per row and seed]({curves_name})"]


def _optional(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def section_title(info: dict) -> str:
    if info["synthetic"]:
        return "The paper's tables in miniature"
    return f"The paper's tables in miniature: pretrained on {' + '.join(info['pretrain_names'])}"


def render_section(
    table: dict,
    checks: list[dict],
    methods: list[Method],
    info: dict,
    plot_name: str,
    dynamics: dict | None = None,
    curves_name: str = "",
) -> str:
    begin, end = section_markers(info["section"])
    lines = [
        begin,
        f"## {section_title(info)}",
        "",
        section_intro(info),
        "",
        *render_table(table, methods, info["targets"]),
        "",
        f"![mIoU per pretraining method]({plot_name})",
        "",
        *render_checks(checks),
    ]
    if dynamics:
        lines += ["", *render_dynamics(dynamics, methods, curves_name)]
    return "\n".join([*lines, end]) + "\n"


def replace_section(markdown: str, section: str, begin: str = SECTION_BEGIN, end: str = SECTION_END) -> str:
    """``markdown`` with the section between ``begin`` and ``end`` replaced (or appended); the rest is kept byte
    for byte."""
    if begin in markdown:
        head, rest = markdown.split(begin, 1)
        if end not in rest:
            raise ValueError(f"the results file has {begin!r} but no {end!r}; fix it by hand")
        tail = rest.split(end, 1)[1].lstrip("\n")
        return head + section + ("\n" + tail if tail else "")
    return markdown.rstrip("\n") + "\n\n" + section


def write_report(
    records: list[dict], methods: list[Method], results_md: Path, info: dict, dynamics: dict | None = None
) -> dict:
    """Rewrite the study's section of ``results_md`` and its key in the .json next to it; returns the table."""
    key = info["section"].replace("-", "_")
    table = summarise(records, methods, tuple(t["key"] for t in info["targets"]))
    checks = check_orderings(table)
    plot_path = results_md.with_name(f"{results_md.stem}_{key}.png")
    title = f"pretrained on {' + '.join(info['pretrain_names'])}"
    write_plot(table, methods, plot_path, info["targets"], title)
    curves_path = results_md.with_name(f"{results_md.stem}_{key}_pretraining.png")
    if dynamics:
        write_curves(dynamics, methods, curves_path, f"pretraining loss, {title}")
    section = render_section(table, checks, methods, info, plot_path.name, dynamics, curves_path.name)
    existing = results_md.read_text() if results_md.is_file() else "# Results\n"
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text(replace_section(existing, section, *section_markers(info["section"])))
    results_json = results_md.with_suffix(".json")
    data = json.loads(results_json.read_text()) if results_json.is_file() else {}
    summaries = {m: {k: v for k, v in row.items() if k != "curves"} for m, row in (dynamics or {}).items()}
    data[key] = {"info": info, "table": table, "orderings": checks, "runs": records, "pretraining": summaries}
    results_json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return table


def study_info(
    args: argparse.Namespace, budget: Budget, data: StudyData, methods: list[Method], records: list[dict]
) -> dict:
    """What the section says about the study: its command's options, budget, datasets and cost."""
    failures = [r for r in records if "error" in r]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "seeds": args.seeds,
        "lanes": args.jobs,
        "budget": asdict(budget),
        "quick": args.quick,
        "methods": [m.key for m in methods],
        "methods_requested": args.methods is not None,
        "unify_map_file": args.unify_map.name if args.unify_map else "",
        "section": args.section,
        "synthetic": data.synthetic,
        "pretrain_names": data.names,
        "pretrain": [shown_spec(spec) for spec in data.pretrain],
        "targets": [
            {**asdict(t), "role": t.role, "train_spec": shown_spec(t.train_spec), "eval_spec": shown_spec(t.eval_spec)}
            for t in data.targets
        ],
        "jobs_run": len(records),
        "failures": len(failures),
        "compute_minutes": sum(r.get("seconds", 0.0) for r in records) / 60,
        "wall_minutes": study_wall_minutes(records),
        "setup": study_setup(budget, data),
    }


def summary_lines(table: dict, methods: list[Method], targets: list[Target]) -> list[str]:
    """One line per method: its score on each target, as in the section's table."""
    return [
        f"{method.key:16s} " + "  ".join(f"{t.key} {format_cell(table[method.key][t.key])}" for t in targets)
        for method in methods
    ]
