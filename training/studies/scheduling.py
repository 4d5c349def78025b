"""A study's jobs (pretraining, then fine-tuning per target) run as ordinary commands in their own run folders,
side by side, skipped when done and resumed when killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from training.data.transforms import PhotometricConfig
from training.studies.design import PHOTOMETRIC_KEYS, Budget, Method, StudyData, Target

DONE_NAME = "job_done.json"


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


def study_wall_minutes(records: list[dict]) -> float:
    """First job start to last job end, over the whole study (also when this invocation only re-reports)."""
    spans = [(r["finished_at"] - r["seconds"], r["finished_at"]) for r in records if "finished_at" in r]
    return (max(end for _, end in spans) - min(start for start, _ in spans)) / 60 if spans else 0.0
