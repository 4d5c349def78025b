"""The paper's tables in miniature, on the synthetic benchmark.

    python -m training.experiments paper-tables [--seeds 0 1 2] [--jobs 2] [--output runs/paper_tables]
                                                [--results docs/RESULTS.md] [--quick]

Every pretraining method of the paper's tables (plus training from scratch) is pretrained on the synthetic
VOC-aug + ADE20K + COCO-Stuff look-alikes (``python -m training.pretrain``, the demo recipe with the method
swapped), then fine-tuned (``python -m training.finetune``, DeepLabV3) on

* ``voc_aug``: a pretraining dataset (its train_aug split, scored on its val split), and
* ``cityscapes``: the held-out Cityscapes-layout dataset, whose label space is partly new,

once per seed. Every method gets the same schedule, backbone, crops and fine-tuning recipe; only the
pretraining objective (and, for the unification row, the label space) differs. The command writes its own
section of ``docs/RESULTS.md`` (mean +- sample std over seeds, the paper's numbers for reference, the paper's
orderings checked one by one), ``docs/RESULTS.json`` (every run) and a plot.

Runs are ordinary run folders under ``--output`` (pretraining ``pretrain/<method>/seed<k>``, fine-tuning
``finetune/<target>/<method>/seed<k>``, each with its log). A job that finished is not run again and a killed
job resumes from its checkpoint, so re-running the same command continues an interrupted study. ``--jobs``
runs that many jobs side by side with one thread each (on 2 cores, 2 jobs of 1 thread are ~1.6x faster than
one job of 2 threads for these small models).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from training.data.synthetic import ensure_synthetic, unify_map

DONE_NAME = "job_done.json"
SECTION_BEGIN = "<!-- paper-tables:begin (written by python -m training.experiments paper-tables) -->"
SECTION_END = "<!-- paper-tables:end -->"
TARGETS = ("voc_aug", "cityscapes")


@dataclass(frozen=True)
class Method:
    """One row of the tables: a pretraining method as ``--set`` overrides of the demo recipe (None = scratch)."""

    key: str
    label: str
    pretrain: Optional[tuple[str, ...]]
    paper: dict = field(default_factory=dict)  # the paper's numbers for this row (MDP_METHOD.md section 9)
    paper_note: str = ""


# The demo recipe runs the full method (mixing + CSC2); every row states all of its options explicitly.
_MDP = ("method.name=mdp",)
_P2PROTO = "method.options={tau: 0.07, window: 16, mixing: false, sparse_coding: null}"
METHODS: tuple[Method, ...] = (
    Method("scratch", "scratch (no pretraining)", None,
           paper_note="no VOC/Cityscapes number; COCO-Stuff 25.02 vs MDP 38.37 (R10)"),
    Method("supervised_ce", "supervised CE, concatenated labels",
           ("method.name=supervised_ce", "method.options={}"), {"voc_aug": 68.48},
           "COCO-only from scratch, 80k iterations (R3)"),
    Method("multi_head", "multi-head supervised", ("method.name=multi_head", "method.options={}"),
           {"voc_aug": 71.19}, "VOC+ADE20K 100 ep (R4)"),
    Method("pixel_to_pixel", "pixel-to-pixel contrast", ("method.name=pixel_to_pixel", "method.options={tau: 0.07}"),
           {"voc_aug": 71.19, "cityscapes": 77.17}, "VOC+ADE20K 100 ep (R2)"),
    Method("region_bank", "pixel-to-region bank", ("method.name=region_bank",
                                                   "method.options={tau: 0.07, bank_size: 1024}"),
           {}, "VOC-only 200 ep: region 70.11 < class 70.56 (R5)"),
    Method("mdp_no_mixing", "MDP prototypes, no mixing", (*_MDP, _P2PROTO),
           {"voc_aug": 71.98, "cityscapes": 75.37}, "VOC+ADE20K 100 ep, no CSC (R7, R8)"),
    Method("mdp_unified", "MDP prototypes, unified labels", (*_MDP, _P2PROTO, "data.unify_map={unify_map}"),
           {"voc_aug": 71.91}, "vs 71.93 with concatenated labels (R9)"),
    Method("mdp", "MDP prototypes + mixing", (
        *_MDP, "method.options={tau: 0.07, window: 16, mixing: true, sparse_coding: null}"),
           {}, "no number without CSC"),
    Method("mdp_csc", "MDP prototypes + mixing + CSC2 (full)", (
        *_MDP, "method.options={tau: 0.07, window: 16, mixing: true, sparse_coding: csc2}"),
           {"voc_aug": 73.32, "cityscapes": 77.75}, "VOC+ADE20K 100 ep (R2)"),
)
METHOD_KEYS = tuple(method.key for method in METHODS)

# (better, worse, what the paper reports): the orderings the paper's tables claim, checked on every target.
PAPER_ORDERINGS: tuple[tuple[str, str, str], ...] = (
    ("mdp_csc", "scratch", "pretraining helps (R10: COCO-Stuff 38.37 vs 25.02)"),
    ("mdp_csc", "supervised_ce", "prototype contrast beats plain supervised CE (R3)"),
    ("mdp_csc", "multi_head", "beats one head per dataset (R4: VOC 73.32 vs 71.19)"),
    ("mdp_csc", "pixel_to_pixel", "beats pixel-to-pixel contrast (R2: 73.32 vs 71.19, Cityscapes 77.75 vs 77.17)"),
    ("mdp_no_mixing", "region_bank", "class prototypes beat a region bank (R5: 70.56 vs 70.11)"),
    ("mdp", "mdp_no_mixing", "cross-dataset mixing helps (R7: 73.32 vs 71.98)"),
    ("mdp_csc", "mdp", "sparse coding helps, mostly on the unseen dataset (R8: Cityscapes 76.53 vs 75.37)"),
)


@dataclass
class Budget:
    """How much compute each run gets; the same for every method."""

    pretrain_epochs: int = 2
    finetune_iterations: int = 120
    synthetic_root: str = ""  # "" = the data layer's cache folder
    synthetic_sizes: dict = field(default_factory=dict)  # images per split (tests), {} = the benchmark's defaults
    pretrain_batch: int = 8
    finetune_batch: int = 8
    crop: int = 96


FULL = Budget()
QUICK = Budget(pretrain_epochs=1, finetune_iterations=4, pretrain_batch=4, finetune_batch=4, crop=64,
               synthetic_sizes={"voc_train": 4, "voc_aug": 8, "voc_val": 4, "ade20k_train": 8, "ade20k_val": 2,
                                "coco_stuff164k_train": 8, "coco_stuff164k_val": 2, "cityscapes_train": 8,
                                "cityscapes_val": 4})


@dataclass
class Job:
    kind: str  # pretrain | finetune
    method: Method
    seed: int
    run_dir: Path
    command: list[str]
    target: str = ""

    @property
    def name(self) -> str:
        where = f"{self.target}/" if self.target else ""
        return f"{self.kind} {where}{self.method.key} seed {self.seed}"

    def done(self) -> Optional[dict]:
        path = self.run_dir / DONE_NAME
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        record.setdefault("finished_at", path.stat().st_mtime)  # records written before the field existed
        return record


def _yaml_dict(values: dict) -> str:
    return "{" + ", ".join(f"{key}: {value}" for key, value in values.items()) + "}"


def pretrain_job(method: Method, seed: int, output: Path, budget: Budget, unify_path: Path) -> Job:
    run_dir = output / "pretrain" / method.key / f"seed{seed}"
    overrides = [
        f"train.seed={seed}", f"train.epochs={budget.pretrain_epochs}", f"train.batch_size={budget.pretrain_batch}",
        f"data.crop_size={budget.crop}", "data.num_workers=0", "train.threads=1", "train.log_every=25",
        "train.checkpoint_every=50", "train.plots=false", "export.enabled=false",
        *(text.replace("{unify_map}", str(unify_path)) for text in method.pretrain),
    ]
    if budget.synthetic_root:
        overrides.append(f"data.synthetic_root={budget.synthetic_root}")
    if budget.synthetic_sizes:
        overrides.append(f"data.synthetic_sizes={_yaml_dict(budget.synthetic_sizes)}")
    command = [sys.executable, "-m", "training.pretrain", "--recipe", "demo", "--output", str(run_dir)]
    for text in overrides:
        command += ["--set", text]
    return Job("pretrain", method, seed, run_dir, command)


def finetune_job(method: Method, seed: int, target: str, output: Path, budget: Budget, specs: dict) -> Job:
    run_dir = output / "finetune" / target / method.key / f"seed{seed}"
    init = "scratch" if method.pretrain is None else str(output / "pretrain" / method.key / f"seed{seed}" / "last.pth")
    if target == "voc_aug":
        train_spec, val_spec = specs["pretrain"][0], specs["pretrain_val"][0]
    else:
        train_spec, val_spec = specs["downstream_train"], specs["downstream_val"]
    overrides = [
        f"data.train={train_spec}", f"data.val={val_spec}", f"train.seed={seed}",
        f"train.iterations={budget.finetune_iterations}", f"train.batch_size={budget.finetune_batch}",
        f"data.crop_size=[{budget.crop}, {budget.crop}]", "model.output_stride=16", "data.num_workers=0",
        "train.threads=1", "train.eval_every=0", "train.checkpoint_every=50", "train.log_every=25",
        "eval.overlays=0",
    ]
    command = [sys.executable, "-m", "training.finetune", "--recipe", "finetune_synthetic", "--init", init,
               "--output", str(run_dir)]
    for text in overrides:
        command += ["--set", text]
    return Job("finetune", method, seed, run_dir, command, target)


def run_job(job: Job, log: "Progress") -> dict:
    """Run one job to completion (resuming a killed one); its record is written to ``job_done.json``."""
    finished = job.done()
    if finished is not None:
        log.skip(job)
        return finished
    job.run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    log.start(job)
    started = time.perf_counter()
    with open(job.run_dir / "job.log", "a") as output:
        output.write("$ " + " ".join(job.command) + "\n")
        output.flush()
        code = subprocess.call(job.command, stdout=output, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{job.name} failed with exit code {code}; see {job.run_dir / 'job.log'}")
    record = {"job": job.name, "seconds": round(seconds, 1), "finished_at": time.time()}
    if job.kind == "finetune":
        results = json.loads((job.run_dir / "eval" / "results.json").read_text())
        record.update(mIoU=results["mIoU"], mAcc=results["mAcc"], aAcc=results["aAcc"], step=results["step"])
    (job.run_dir / DONE_NAME).write_text(json.dumps(record, indent=2) + "\n")
    log.finish(job, record)
    return record


class Progress:
    """One line per job start/end on stdout, safe across the worker threads."""

    def __init__(self, total: int):
        self.total, self.finished, self.lock = total, 0, threading.Lock()
        self.started = time.perf_counter()

    def _print(self, text: str) -> None:
        with self.lock:
            elapsed = time.perf_counter() - self.started
            print(f"[{elapsed / 60:6.1f} min {self.finished}/{self.total}] {text}", flush=True)

    def start(self, job: Job) -> None:
        self._print(f"start  {job.name}")

    def skip(self, job: Job) -> None:
        self.finished += 1
        self._print(f"done   {job.name} (already finished)")

    def finish(self, job: Job, record: dict) -> None:
        self.finished += 1
        score = f", mIoU {record['mIoU']:.2f}" if "mIoU" in record else ""
        self._print(f"done   {job.name} in {record['seconds']:.0f} s{score}")


def run_chain(jobs: list[Job], log: Progress) -> list[dict]:
    """A method's pretraining then its fine-tunings, in order; a failure stops this chain only."""
    records = []
    for job in jobs:
        try:
            records.append({**run_job(job, log), "kind": job.kind, "method": job.method.key, "seed": job.seed,
                            "target": job.target})
        except (RuntimeError, OSError, KeyError, ValueError) as error:
            log._print(f"FAILED {error}")
            records.append({"kind": job.kind, "method": job.method.key, "seed": job.seed, "target": job.target,
                            "error": str(error)})
            break
    return records


def run_study(methods: list[Method], seeds: list[int], output: Path, budget: Budget, jobs: int) -> list[dict]:
    specs = ensure_synthetic(budget.synthetic_root or None, sizes=budget.synthetic_sizes or None)
    output.mkdir(parents=True, exist_ok=True)
    unify_path = output / "unify_synthetic.json"
    unify_path.write_text(json.dumps(unify_map(), indent=2) + "\n")
    chains = []
    for seed in seeds:  # seed-major, so a study cut short still has complete seeds of every method
        for method in methods:
            chain = [] if method.pretrain is None else [pretrain_job(method, seed, output, budget, unify_path)]
            chain += [finetune_job(method, seed, target, output, budget, specs) for target in TARGETS]
            chains.append(chain)
    log = Progress(sum(len(chain) for chain in chains))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return [record for records in pool.map(lambda chain: run_chain(chain, log), chains) for record in records]


# ---- aggregation and report ----------------------------------------------------------------------------------
def summarise(records: list[dict], methods: list[Method]) -> dict:
    """``{method: {target: {"mean", "std", "n", "seeds": [...]}}}`` from the fine-tuning records."""
    table: dict = {}
    for method in methods:
        row = table.setdefault(method.key, {})
        for target in TARGETS:
            scores = {r["seed"]: r["mIoU"] for r in records if r.get("kind") == "finetune" and "mIoU" in r
                      and r["method"] == method.key and r["target"] == target}
            values = [scores[seed] for seed in sorted(scores)]
            row[target] = {"mean": statistics.fmean(values) if values else math.nan,
                           "std": statistics.stdev(values) if len(values) > 1 else math.nan,
                           "n": len(values), "seeds": sorted(scores), "values": values}
    return table


def paired_difference(a: dict, b: dict) -> Optional[tuple[float, float, list[int]]]:
    """(mean of a - b over common seeds, its noise, the seeds) for two cells of ``summarise``; None if no common
    seed. Noise: sample std of the per-seed differences, or with one common seed the larger std of the cells."""
    common = sorted(set(a["seeds"]) & set(b["seeds"]))
    if not common:
        return None
    differences = [a["values"][a["seeds"].index(seed)] - b["values"][b["seeds"].index(seed)] for seed in common]
    if len(common) > 1:
        noise = statistics.stdev(differences)
    else:
        noise = max((s for s in (a["std"], b["std"]) if s == s), default=0.0)
    return statistics.fmean(differences), noise, common


def check_orderings(table: dict) -> list[dict]:
    """Each paper ordering on each target: holds / reversed / within noise.

    Seeds are paired (seed k of both rows shares the fine-tuning data order and the synthetic data), so the
    comparison is the mean of the per-seed differences against their sample standard deviation; with fewer than
    two common seeds, the larger of the two rows' standard deviations (0 with one seed each) stands in for it.
    """
    checks = []
    for better, worse, claim in PAPER_ORDERINGS:
        if better not in table or worse not in table:
            continue
        for target in TARGETS:
            paired = paired_difference(table[better][target], table[worse][target])
            if paired is None:
                continue
            difference, noise, common = paired
            verdict = "holds" if difference > noise else "reversed" if difference < -noise else "within noise"
            checks.append({"better": better, "worse": worse, "target": target, "difference": difference,
                           "noise": noise, "paired_seeds": common, "verdict": verdict, "claim": claim})
    return checks


def _fmt(cell: dict) -> str:
    if not cell["n"]:
        return "not run"
    std = f" ± {cell['std']:.2f}" if cell["std"] == cell["std"] else ""
    return f"{cell['mean']:.2f}{std}" + (f" (n={cell['n']})" if cell["n"] != 3 else "")


def render_section(table: dict, checks: list[dict], methods: list[Method], info: dict, plot_name: str) -> str:
    lines = [SECTION_BEGIN, "## The paper's tables in miniature", "",
             "Produced by `python -m training.experiments paper-tables` "
             f"({info['jobs_run']} jobs, {info['compute_minutes']:.0f} min of job time on {info['lanes']} lanes, "
             f"{info['wall_minutes']:.0f} min wall clock, {info['date']}). Every method: {info['setup']}. "
             "mIoU (%) on the val split after fine-tuning, mean ± sample std over seeds "
             f"{', '.join(map(str, info['seeds']))}; \"vs scratch\": mean ± std of the per-seed difference to "
             "training from scratch with the same seed. The paper's numbers (ResNet-50, real datasets, 100-200 epochs; "
             "`../shared/docs/MDP_METHOD.md` section 9) are there to show the ordering the paper claims, not to be "
             "matched.", "",
             "| pretraining | fine-tune voc_aug (seen) | vs scratch | fine-tune cityscapes (held out) | vs scratch "
             "| paper VOC | paper Cityscapes | paper setting |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]

    def versus_scratch(key: str, target: str) -> str:
        paired = None if key == "scratch" or "scratch" not in table else paired_difference(
            table[key][target], table["scratch"][target])
        return "–" if paired is None else f"{paired[0]:+.2f} ± {paired[1]:.2f}"

    for method in methods:
        row = table[method.key]
        paper = [f"{method.paper[t]:.2f}" if t in method.paper else "–" for t in TARGETS]
        lines.append(f"| {method.label} | {_fmt(row['voc_aug'])} | {versus_scratch(method.key, 'voc_aug')} | "
                     f"{_fmt(row['cityscapes'])} | {versus_scratch(method.key, 'cityscapes')} | {paper[0]} | "
                     f"{paper[1]} | {method.paper_note} |")
    lines += ["", f"![mIoU per pretraining method]({plot_name})", "",
              "### The paper's orderings, checked", "",
              "Seeds are paired (seed k of every row fine-tunes on the same sample order), so each check is the mean "
              "of the per-seed differences; \"noise\" is their sample standard deviation, and \"within noise\" "
              "means |mean difference| < noise.", "",
              "| claim | target | mean paired difference (mIoU) | noise | verdict |", "|---|---|---:|---:|---|"]
    for check in checks:
        lines.append(f"| {check['better']} > {check['worse']}: {check['claim']} | {check['target']} | "
                     f"{check['difference']:+.2f} | {check['noise']:.2f} | {check['verdict']} |")
    held = sum(c["verdict"] == "holds" for c in checks)
    reversed_ = sum(c["verdict"] == "reversed" for c in checks)
    lines += ["", f"Of {len(checks)} checks, {held} hold, {reversed_} are reversed and "
              f"{len(checks) - held - reversed_} are within noise.", SECTION_END]
    return "\n".join(lines) + "\n"


def write_plot(table: dict, methods: list[Method], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for axis, target, title in zip(axes, TARGETS, ("fine-tune on voc_aug (seen in pretraining)",
                                                    "fine-tune on cityscapes (held out)")):
        means = [table[m.key][target]["mean"] for m in methods]
        stds = [table[m.key][target]["std"] if table[m.key][target]["std"] == table[m.key][target]["std"] else 0
                for m in methods]
        colors = ["#999999" if m.pretrain is None else "#4477aa" if not m.key.startswith("mdp") else "#ee6677"
                  for m in methods]
        axis.barh(range(len(methods)), means, xerr=stds, color=colors, capsize=3)
        for i, method in enumerate(methods):
            values = table[method.key][target]["values"]
            axis.plot(values, [i] * len(values), "k.", markersize=4)
        axis.set_yticks(range(len(methods)), [m.key for m in methods])
        axis.invert_yaxis()
        finite = [v for v in means if v == v]
        if finite:
            axis.set_xlim(max(0.0, min(finite) - 8), max(finite) + 5)
        axis.set_xlabel("mIoU (%)")
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def replace_section(markdown: str, section: str) -> str:
    """``markdown`` with its paper-tables section replaced (or appended); the rest is kept byte for byte."""
    if SECTION_BEGIN in markdown:
        head, rest = markdown.split(SECTION_BEGIN, 1)
        if SECTION_END not in rest:
            raise ValueError(f"the results file has {SECTION_BEGIN!r} but no {SECTION_END!r}; fix it by hand")
        tail = rest.split(SECTION_END, 1)[1].lstrip("\n")
        return head + section + ("\n" + tail if tail else "")
    return markdown.rstrip("\n") + "\n\n" + section


def write_report(records: list[dict], methods: list[Method], results_md: Path, info: dict) -> dict:
    table = summarise(records, methods)
    checks = check_orderings(table)
    plot_path = results_md.with_name(results_md.stem + "_paper_tables.png")
    write_plot(table, methods, plot_path)
    section = render_section(table, checks, methods, info, plot_path.name)
    existing = results_md.read_text() if results_md.is_file() else "# Results on the synthetic benchmark\n"
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text(replace_section(existing, section))
    results_json = results_md.with_suffix(".json")
    data = json.loads(results_json.read_text()) if results_json.is_file() else {}
    data["paper_tables"] = {"info": info, "table": table, "orderings": checks, "runs": records}
    results_json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return table


def study_wall_minutes(records: list[dict]) -> float:
    """First job start to last job end, over the whole study (also when this invocation only re-reports)."""
    spans = [(r["finished_at"] - r["seconds"], r["finished_at"]) for r in records if "finished_at" in r]
    return (max(end for _, end in spans) - min(start for start, _ in spans)) / 60 if spans else 0.0


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.experiments", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tables = sub.add_parser("paper-tables", help="pretrain every method, fine-tune on a seen and a held-out "
                                                 "dataset, write docs/RESULTS.md")
    tables.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    tables.add_argument("--methods", nargs="+", default=list(METHOD_KEYS), choices=METHOD_KEYS, metavar="METHOD",
                        help=f"rows to run (default all): {', '.join(METHOD_KEYS)}")
    tables.add_argument("--jobs", type=int, default=2, help="jobs side by side, one thread each (default 2)")
    tables.add_argument("--output", type=Path, default=Path("runs/paper_tables"))
    tables.add_argument("--results", type=Path, default=Path("docs/RESULTS.md"),
                        help="Markdown file whose paper-tables section is (re)written; .json and .png next to it")
    tables.add_argument("--pretrain-epochs", type=int, default=None)
    tables.add_argument("--finetune-iterations", type=int, default=None)
    tables.add_argument("--synthetic-root", default="", help="synthetic benchmark folder (default: the cache)")
    tables.add_argument("--quick", action="store_true",
                        help="a tiny synthetic benchmark and a few steps per run (smoke test, numbers meaningless)")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    budget = Budget(**asdict(QUICK if args.quick else FULL))
    if args.pretrain_epochs is not None:
        budget.pretrain_epochs = args.pretrain_epochs
    if args.finetune_iterations is not None:
        budget.finetune_iterations = args.finetune_iterations
    if args.synthetic_root:
        budget.synthetic_root = str(Path(args.synthetic_root).resolve())
    elif args.quick:
        budget.synthetic_root = str((args.output / "synthetic").resolve())
    if args.jobs < 1:
        print("error: --jobs must be at least 1", file=sys.stderr)
        return 2
    methods = [method for method in METHODS if method.key in args.methods]
    output = args.output.resolve()
    records = run_study(methods, args.seeds, output, budget, args.jobs)
    failures = [r for r in records if "error" in r]
    info = {
        "date": time.strftime("%Y-%m-%d"), "seeds": args.seeds, "lanes": args.jobs, "budget": asdict(budget),
        "jobs_run": len(records), "failures": len(failures),
        "compute_minutes": sum(r.get("seconds", 0.0) for r in records) / 60,
        "wall_minutes": study_wall_minutes(records),
        "setup": (f"resnet18, {budget.crop} px crops, batch {budget.pretrain_batch}, {budget.pretrain_epochs} "
                  f"pretraining epochs over the three synthetic pretraining datasets (demo recipe: OS16, SGD, "
                  f"cosine); then DeepLabV3 at OS16, {budget.finetune_iterations} iterations at batch "
                  f"{budget.finetune_batch} (MMSeg schedule: SGD 0.02, poly), whole-image evaluation"),
    }
    table = write_report(records, methods, args.results, info)
    for method in methods:
        print(f"{method.key:16s} " + "  ".join(f"{target} {_fmt(table[method.key][target])}" for target in TARGETS))
    print(f"wrote {args.results} (study: {info['wall_minutes']:.1f} min wall clock)")
    if failures:
        print(f"{len(failures)} job(s) failed: " + "; ".join(r["error"] for r in failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
