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
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mdp_hub.errors import UserError, command
from training.data.readers import open_reader
from training.data.specs import DatasetSpec, parse_spec
from training.data.synthetic import ensure_synthetic, unify_map
from training.data.transforms import PhotometricConfig
from training.engine.logger import METRICS_NAME, read_metrics

DONE_NAME = "job_done.json"
SYNTHETIC = "synthetic"
DEFAULT_SECTION = "paper-tables"
# The synthetic study's targets, which are also the two fine-tuning datasets whose paper numbers the table quotes.
TARGETS = ("voc_aug", "cityscapes")
# The colour jitter the demo recipe lightens for the colour-coded synthetic classes; photos get the paper's.
PHOTOMETRIC_KEYS = ("brightness", "contrast", "saturation", "hue", "grayscale_p", "blur_p")


def section_markers(section: str) -> tuple[str, str]:
    """The comments that delimit a study's section of the results page."""
    option = "" if section == DEFAULT_SECTION else f" --section {section}"
    return (
        f"<!-- {section}:begin (written by python -m training.experiments paper-tables{option}) -->",
        f"<!-- {section}:end -->",
    )


SECTION_BEGIN, SECTION_END = section_markers(DEFAULT_SECTION)


@dataclass(frozen=True)
class Method:
    """One row of the tables: a pretraining method as ``--set`` overrides of the demo recipe (None = scratch)."""

    key: str
    label: str
    pretrain: tuple[str, ...] | None
    paper: dict = field(default_factory=dict)  # the paper's numbers for this row (docs/METHOD.md)
    paper_note: str = ""


# The demo recipe runs the full method (mixing + CSC2); every row states all of its options explicitly.
_MDP = ("method.name=mdp", "method.head_output_norm=whiten")
_SHIPPED = "tau: 0.07, window: {window}, prototype_anchors: false, within_image_weight: 1.0"
_P2PROTO = "method.options={" + _SHIPPED + ", mixing: false, sparse_coding: null}"
METHODS: tuple[Method, ...] = (
    Method(
        "scratch",
        "scratch (no pretraining)",
        None,
        paper_note="no VOC/Cityscapes number; COCO-Stuff 25.02 vs MDP 38.37 (R10)",
    ),
    Method(
        "supervised_ce",
        "supervised CE, concatenated labels",
        ("method.name=supervised_ce", "method.options={}"),
        {"voc_aug": 68.48},
        "COCO-only from scratch, 80k iterations (R3)",
    ),
    Method(
        "multi_head",
        "multi-head supervised",
        ("method.name=multi_head", "method.options={}"),
        {"voc_aug": 71.19},
        "VOC+ADE20K 100 ep (R4)",
    ),
    Method(
        "pixel_to_pixel",
        "pixel-to-pixel contrast",
        ("method.name=pixel_to_pixel", "method.options={tau: 0.07}"),
        {"voc_aug": 71.19, "cityscapes": 77.17},
        "VOC+ADE20K 100 ep (R2)",
    ),
    Method(
        "region_bank",
        "pixel-to-region bank",
        ("method.name=region_bank", "method.options={tau: 0.07, bank_size: 1024}"),
        {},
        "VOC-only 200 ep: region 70.11 < class 70.56 (R5)",
    ),
    Method(
        "mdp_no_mixing",
        "MDP prototypes, no mixing",
        (*_MDP, _P2PROTO),
        {"voc_aug": 71.98, "cityscapes": 75.37},
        "VOC+ADE20K 100 ep, no CSC (R7, R8)",
    ),
    Method(
        "mdp_unified",
        "MDP prototypes, unified labels",
        (*_MDP, _P2PROTO, "data.unify_map={unify_map}"),
        {"voc_aug": 71.91},
        "vs 71.93 with concatenated labels (R9)",
    ),
    Method(
        "mdp",
        "MDP prototypes + mixing",
        (*_MDP, "method.options={" + _SHIPPED + ", mixing: true, sparse_coding: null}"),
        {},
        "no number without CSC",
    ),
    Method(
        "mdp_csc",
        "MDP prototypes + mixing + CSC2 (full)",
        (*_MDP, "method.options={" + _SHIPPED + ", mixing: true, sparse_coding: csc2}"),
        {"voc_aug": 73.32, "cityscapes": 77.75},
        "VOC+ADE20K 100 ep (R2)",
    ),
    Method(
        "mdp_csc_previous",
        "full MDP, previous head (plain, anchored prototypes)",
        (
            "method.name=mdp",
            "method.head_output_norm=none",
            "method.options={tau: 0.07, window: {window}, prototype_anchors: true, within_image_weight: 0.0, "
            "mixing: true, sparse_coding: csc2}",
        ),
        {},
        "the head before whitening and the within-image term (docs/LEARNING.md)",
    ),
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
    ("mdp_csc", "mdp_no_mixing", "mixing and sparse coding together help (R7, R8: 73.32 vs 71.98)"),
)
# An ordering checked only when the row between its two rows was not run (it would count the same claim twice).
ORDERING_SKIPPED_WITH = {("mdp_csc", "mdp_no_mixing"): "mdp"}


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
    arch: str = "resnet18"
    base_size: int = 0  # short side before the random rescale and at evaluation; 0 = the recipes' defaults
    pretrain_max_steps: int = 0  # >0 caps each pretraining (smoke runs)
    window: int = 4096  # the MDP rows' prototype window (the paper's 4096)


FULL = Budget()
# Command-line options that change the budget: (option, Budget field).
BUDGET_OPTIONS = (
    ("--arch", "arch"),
    ("--crop", "crop"),
    ("--base-size", "base_size"),
    ("--pretrain-epochs", "pretrain_epochs"),
    ("--pretrain-steps", "pretrain_max_steps"),
    ("--finetune-iterations", "finetune_iterations"),
    ("--window", "window"),
)
DEFAULT_SEEDS = [0, 1, 2]
QUICK = Budget(
    pretrain_epochs=1,
    finetune_iterations=4,
    pretrain_batch=4,
    finetune_batch=4,
    crop=64,
    synthetic_sizes={
        "voc_train": 4,
        "voc_aug": 8,
        "voc_val": 4,
        "ade20k_train": 8,
        "ade20k_val": 2,
        "coco_stuff164k_train": 8,
        "coco_stuff164k_val": 2,
        "cityscapes_train": 8,
        "cityscapes_val": 4,
    },
)


@dataclass(frozen=True)
class Target:
    """A fine-tuning target: trained on its format's training split, scored on ``eval_spec`` (split ``split``)."""

    key: str  # the dataset's label-space name: job folder, table column, JSON key
    train_spec: str
    eval_spec: str
    split: str
    seen: bool  # one of the pretraining datasets

    @property
    def role(self) -> str:
        return "seen" if self.seen else "held out"


@dataclass
class StudyData:
    """What a study pretrains on (spec strings and label-space names, in label-space order) and fine-tunes on."""

    pretrain: list[str]
    names: list[str]
    targets: list[Target]
    synthetic: bool
    unify_map: dict | None = None


def same_dataset(a: DatasetSpec, b: DatasetSpec) -> bool:
    return a.name == b.name and Path(a.path).expanduser().resolve() == Path(b.path).expanduser().resolve()


def resolve_target(text: str, pretrain: list[str]) -> Target:
    """Open a target's training and evaluation splits, so layout errors surface before any job runs."""
    spec = parse_spec(text)
    train_spec = DatasetSpec(spec.name, spec.path)
    train_reader, eval_reader = open_reader(train_spec, train=True), open_reader(spec, train=False)
    if [s.image for s in train_reader.samples] == [s.image for s in eval_reader.samples]:
        print(f"warning: target {text} is fine-tuned and scored on the same {len(eval_reader)} images", file=sys.stderr)
    seen = any(same_dataset(spec, parse_spec(other)) for other in pretrain)
    return Target(train_reader.dataset_name, str(train_spec), str(spec), eval_reader.split, seen)


def resolve_study_data(pretrain: list[str], targets: list[str], unify_file: Path | None, budget: Budget) -> StudyData:
    """The datasets of a study; ``pretrain == ["synthetic"]`` is the synthetic benchmark with its two targets."""
    synthetic = pretrain == [SYNTHETIC]
    if synthetic:
        specs = ensure_synthetic(budget.synthetic_root or None, sizes=budget.synthetic_sizes or None)
        pretrain = specs["pretrain"]
        targets = targets or [specs["pretrain_val"][0], specs["downstream_val"]]
    elif SYNTHETIC in pretrain:
        raise ValueError("--pretrain synthetic stands for the whole synthetic benchmark; do not mix it with specs")
    elif not targets:
        raise ValueError(
            "--targets: name the datasets to fine-tune on (NAME:PATH[:split]) when pretraining on dataset specs"
        )
    names = [open_reader(spec, train=True).dataset_name for spec in pretrain]
    resolved = [resolve_target(text, pretrain) for text in targets]
    keys = [target.key for target in resolved]
    if len(set(keys)) != len(keys):
        raise ValueError(f"--targets: each dataset may be a target once (got {', '.join(keys)})")
    mapping = json.loads(unify_file.read_text()) if unify_file else unify_map() if synthetic else None
    return StudyData(list(pretrain), names, resolved, synthetic, mapping)


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

    def done(self) -> dict | None:
        path = self.run_dir / DONE_NAME
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        record.setdefault("finished_at", path.stat().st_mtime)  # records written before the field existed
        return record


def _yaml_dict(values: dict) -> str:
    return "{" + ", ".join(f"{key}: {value}" for key, value in values.items()) + "}"


def pretrain_data_overrides(data: StudyData, budget: Budget) -> list[str]:
    """``--set`` arguments naming the pretraining datasets (the demo recipe's default is the synthetic set)."""
    overrides = []
    if data.synthetic and budget.synthetic_root:
        overrides.append(f"data.synthetic_root={budget.synthetic_root}")
    if data.synthetic and budget.synthetic_sizes:
        overrides.append(f"data.synthetic_sizes={_yaml_dict(budget.synthetic_sizes)}")
    if not data.synthetic:
        overrides.append(f"data.datasets={json.dumps(data.pretrain)}")
        paper = PhotometricConfig()
        overrides += [f"data.photometric.{key}={getattr(paper, key)}" for key in PHOTOMETRIC_KEYS]
    if budget.base_size:
        overrides.append(f"data.base_size={budget.base_size}")
    if budget.pretrain_max_steps:
        overrides.append(f"train.max_steps={budget.pretrain_max_steps}")
    return overrides


def pretrain_job(method: Method, seed: int, output: Path, budget: Budget, data: StudyData, unify_path: Path) -> Job:
    run_dir = output / "pretrain" / method.key / f"seed{seed}"
    overrides = [
        f"train.seed={seed}",
        f"train.epochs={budget.pretrain_epochs}",
        f"train.batch_size={budget.pretrain_batch}",
        f"data.crop_size={budget.crop}",
        f"method.arch={budget.arch}",
        "data.num_workers=0",
        "train.threads=1",
        "train.log_every=25",
        "train.checkpoint_every=50",
        "train.plots=false",
        "export.enabled=false",
        "method.window_reference_batch=0",  # the study's window is stated in regions, as run
        *(
            text.replace("{unify_map}", str(unify_path)).replace("{window}", str(budget.window))
            for text in method.pretrain
        ),
        *pretrain_data_overrides(data, budget),
    ]
    command = [sys.executable, "-m", "training.pretrain", "--recipe", "demo", "--output", str(run_dir)]
    for text in overrides:
        command += ["--set", text]
    return Job("pretrain", method, seed, run_dir, command)


def finetune_job(method: Method, seed: int, target: Target, output: Path, budget: Budget) -> Job:
    run_dir = output / "finetune" / target.key / method.key / f"seed{seed}"
    init = "scratch" if method.pretrain is None else str(output / "pretrain" / method.key / f"seed{seed}" / "last.pth")
    overrides = [
        f"data.train={json.dumps(target.train_spec)}",
        f"data.val={json.dumps(target.eval_spec)}",
        f"train.seed={seed}",
        f"train.iterations={budget.finetune_iterations}",
        f"train.batch_size={budget.finetune_batch}",
        f"data.crop_size=[{budget.crop}, {budget.crop}]",
        f"model.arch={budget.arch}",
        "model.output_stride=16",
        "data.num_workers=0",
        "train.threads=1",
        "train.eval_every=0",
        "train.checkpoint_every=50",
        "train.log_every=25",
        "eval.overlays=0",
    ]
    if budget.base_size:  # MMSeg-style keep-ratio test resize to the training scale: short side base_size
        overrides += [
            f"data.base_size={budget.base_size}",
            f"eval.test_scale=[{4 * budget.base_size}, {budget.base_size}]",
        ]
    command = [
        sys.executable,
        "-m",
        "training.finetune",
        "--recipe",
        "finetune_synthetic",
        "--init",
        init,
        "--output",
        str(run_dir),
    ]
    for text in overrides:
        command += ["--set", text]
    return Job("finetune", method, seed, run_dir, command, target.key)


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
            records.append(
                {
                    **run_job(job, log),
                    "kind": job.kind,
                    "method": job.method.key,
                    "seed": job.seed,
                    "target": job.target,
                }
            )
        except (RuntimeError, OSError, KeyError, ValueError) as error:
            log._print(f"FAILED {error}")
            records.append(
                {
                    "kind": job.kind,
                    "method": job.method.key,
                    "seed": job.seed,
                    "target": job.target,
                    "error": str(error),
                }
            )
            break
    return records


def run_study(
    methods: list[Method], seeds: list[int], output: Path, budget: Budget, jobs: int, data: StudyData
) -> list[dict]:
    output.mkdir(parents=True, exist_ok=True)
    unify_path = output / ("unify_synthetic.json" if data.synthetic else "unify_map.json")
    if data.unify_map is not None:
        unify_path.write_text(json.dumps(data.unify_map, indent=2) + "\n")
    chains = []
    for seed in seeds:  # seed-major, so a study cut short still has complete seeds of every method
        for method in methods:
            chain = [] if method.pretrain is None else [pretrain_job(method, seed, output, budget, data, unify_path)]
            chain += [finetune_job(method, seed, target, output, budget) for target in data.targets]
            chains.append(chain)
    log = Progress(sum(len(chain) for chain in chains))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return [record for records in pool.map(lambda chain: run_chain(chain, log), chains) for record in records]


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


def paired_difference(a: dict, b: dict) -> tuple[float, float, list[int]] | None:
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
        if better not in table or worse not in table or ORDERING_SKIPPED_WITH.get((better, worse)) in table:
            continue
        for target in table[better]:
            paired = paired_difference(table[better][target], table[worse][target])
            if paired is None:
                continue
            difference, noise, common = paired
            verdict = "holds" if difference > noise else "reversed" if difference < -noise else "within noise"
            checks.append(
                {
                    "better": better,
                    "worse": worse,
                    "target": target,
                    "difference": difference,
                    "noise": noise,
                    "paired_seeds": common,
                    "verdict": verdict,
                    "claim": claim,
                }
            )
    return checks


def _fmt(cell: dict) -> str:
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
            f" {_fmt(table[method.key][t['key']])} | {versus_scratch(method.key, t['key'])} |" for t in targets
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


def pretraining_logs(output: Path, method: Method, seeds: list[int], key: str = "loss") -> list[list[dict]]:
    """The records holding ``key`` in each seed's pretraining metrics.jsonl (seeds without any are left out)."""
    if method.pretrain is None:
        return []
    logs = []
    for seed in seeds:
        path = output / "pretrain" / method.key / f"seed{seed}" / METRICS_NAME
        records = [r for r in read_metrics(path) if key in r] if path.is_file() else []
        if records:
            logs.append(records)
    return logs


def _mean_of(values: list) -> float | None:
    values = [float(v) for v in values if v is not None]
    return statistics.fmean(values) if values else None


def probe_dynamics(output: Path, method: Method, seeds: list[int]) -> dict:
    """Means over seeds of the learning probe's first and last records (empty for runs without probe records)."""
    probes = pretraining_logs(output, method, seeds, key="val_backbone_probe")
    return {
        "backbone_probe_start": _mean_of([log[0]["val_backbone_probe"] for log in probes]),
        "backbone_probe_end": _mean_of([log[-1]["val_backbone_probe"] for log in probes]),
        "heldout_prototype_accuracy": _mean_of([log[-1].get("val_prototype_accuracy") for log in probes]),
        "prototype_cosine": _mean_of([log[-1].get("prototype_cos_mean") for log in probes]),
    }


def pretraining_dynamics(output: Path, methods: list[Method], seeds: list[int], batch: int) -> dict:
    """``{method: {"steps", "loss_first", "loss_last", "prototype_accuracy", "seconds_per_step", "curves",
    **probe_dynamics}}``, means over the seeds' pretraining logs."""
    dynamics = {}
    for method in methods:
        logs = pretraining_logs(output, method, seeds)
        if not logs:
            continue
        speeds = [r["img_per_s"] for log in logs for r in log if r.get("img_per_s")]
        dynamics[method.key] = {
            "steps": max(log[-1]["step"] for log in logs),
            "loss_first": statistics.fmean(float(log[0]["loss"]) for log in logs),
            "loss_last": statistics.fmean(float(log[-1]["loss"]) for log in logs),
            "prototype_accuracy": _mean_of([log[-1].get("prototype_accuracy") for log in logs]),
            "seconds_per_step": batch / statistics.fmean(speeds) if speeds else math.nan,
            "curves": [[[r["step"], float(r["loss"])] for r in log] for log in logs],
            **probe_dynamics(output, method, seeds),
        }
    return dynamics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plot(table: dict, methods: list[Method], path: Path, targets: list[dict], title: str) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4.4), squeeze=False)
    for axis, target in zip(axes[0], targets):
        key = target["key"]
        means = [table[m.key][key]["mean"] for m in methods]
        stds = [
            table[m.key][key]["std"] if table[m.key][key]["std"] == table[m.key][key]["std"] else 0 for m in methods
        ]
        colors = [
            "#999999" if m.pretrain is None else "#4477aa" if not m.key.startswith("mdp") else "#ee6677"
            for m in methods
        ]
        axis.barh(range(len(methods)), means, xerr=stds, color=colors, capsize=3)
        for i, method in enumerate(methods):
            values = table[method.key][key]["values"]
            axis.plot(values, [i] * len(values), "k.", markersize=4)
        axis.set_yticks(range(len(methods)), [m.key for m in methods])
        axis.invert_yaxis()
        finite = [v for v in means if v == v]
        if finite:
            axis.set_xlim(max(0.0, min(finite) - 8), max(finite) + 5)
        axis.set_xlabel(f"mIoU (%), {key} {target['split']} split")
        role = "seen in pretraining" if target["seen"] else "held out"
        axis.set_title(f"fine-tune on {key} ({role})", fontsize=10)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_curves(dynamics: dict, methods: list[Method], path: Path, title: str) -> None:
    """One panel per pretrained row: the logged loss against the step, one line per seed."""
    plt = _pyplot()
    rows = [m for m in methods if m.key in dynamics]
    columns = min(3, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(max(4 * columns, 7), 2.8 * lines + 0.4), squeeze=False)
    for axis, method in zip(axes.flat, rows):
        for curve in dynamics[method.key]["curves"]:
            axis.plot([step for step, _ in curve], [loss for _, loss in curve], linewidth=1)
        axis.set_title(method.key, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(rows) :]:
        axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


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


def study_wall_minutes(records: list[dict]) -> float:
    """First job start to last job end, over the whole study (also when this invocation only re-reports)."""
    spans = [(r["finished_at"] - r["seconds"], r["finished_at"]) for r in records if "finished_at" in r]
    return (max(end for _, end in spans) - min(start for start, _ in spans)) / 60 if spans else 0.0


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


def study_budget(args: argparse.Namespace) -> Budget:
    """The preset (``--quick`` or the full budget) with the command line's overrides."""
    budget = Budget(**asdict(QUICK if args.quick else FULL))
    for option, name in BUDGET_OPTIONS:
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None:
            setattr(budget, name, value)
    if args.synthetic_root:
        budget.synthetic_root = str(Path(args.synthetic_root).resolve())
    elif args.quick:
        budget.synthetic_root = str((args.output / "synthetic").resolve())
    return budget


def study_methods(requested: list[str] | None, has_unify_map: bool) -> list[Method]:
    """The rows to run (default: all); the unified-labels row needs a unification map."""
    keys = requested or [key for key in METHOD_KEYS if key != "mdp_unified" or has_unify_map]
    if "mdp_unified" in keys and not has_unify_map:
        raise ValueError(
            "--methods mdp_unified needs --unify-map FILE (a class-name unification map) for these datasets"
        )
    return [method for method in METHODS if method.key in keys]


def study_setup(budget: Budget, data: StudyData) -> str:
    scale = f", short side {budget.base_size} px" if budget.base_size else ""
    steps = f" (at most {budget.pretrain_max_steps} steps)" if budget.pretrain_max_steps else ""
    jitter = "" if data.synthetic else ", MoCo-v2 colour jitter"
    return (
        f"{budget.arch}, {budget.crop} px crops{scale}, batch {budget.pretrain_batch}, {budget.pretrain_epochs} "
        f"pretraining epochs{steps} over {' + '.join(data.names)} (demo recipe: OS16, SGD, cosine{jitter}; MDP "
        f"prototype window {budget.window} regions); "
        f"then DeepLabV3 at OS16, {budget.finetune_iterations} iterations at batch {budget.finetune_batch} "
        f"(MMSeg schedule: SGD 0.02, poly), whole-image evaluation{scale}"
    )


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
    info = {
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
    dynamics = pretraining_dynamics(output, methods, args.seeds, budget.pretrain_batch)
    table = write_report(records, methods, args.results, info, dynamics)
    for method in methods:
        print(f"{method.key:16s} " + "  ".join(f"{t.key} {_fmt(table[method.key][t.key])}" for t in data.targets))
    print(f"wrote {args.results} (study: {info['wall_minutes']:.1f} min wall clock)")
    if failures:
        print(f"{len(failures)} job(s) failed: " + "; ".join(r["error"] for r in failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
