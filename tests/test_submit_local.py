"""``python -m training.submit`` with submitit's local executor (real processes, no SLURM): two tasks train as two
ranks; the pre-emption signal makes them checkpoint at one step and stop, submitit requeues the job, and the
requeued job resumes from ``last.pth`` and finishes."""

import json
import os
import signal
import time

import pytest
from test_pretrain_run import synthetic_root, tiny_overrides  # noqa: F401  (fixture)

from training.engine.logger import read_metrics
from training.submit import PretrainJob, build_executor, main, parse_args

submitit = pytest.importorskip("submitit", reason="the cluster extra is not installed (pip install -e '.[cluster]')")


def _wait_for(condition, what: str, seconds: float = 240.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:.0f} s for {what}")
        time.sleep(0.5)


def _steps(run) -> list[int]:
    path = run / "metrics.jsonl"
    return [row["step"] for row in read_metrics(path) if "loss" in row] if path.is_file() else []


def test_a_preempted_job_checkpoints_is_requeued_and_resumes(synthetic_root, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    pretrain_args = ["--output", str(run), "--set=train.device=cpu", "--set=train.threads=1"] + tiny_overrides(
        synthetic_root, **{"train.max_steps": 40, "train.checkpoint_every": 1000, "data.num_workers": 0}
    )
    args = parse_args(
        ["--cluster", "local", "--gpus-per-node", "2", "--cpus-per-task", "1", "--time", "30"]
        + ["--logs", str(tmp_path / "logs"), "--", *pretrain_args]
    )
    job = build_executor(args).submit(PretrainJob(args.pretrain_args))
    _wait_for(lambda: len(_steps(run)) >= 3, "the first steps of both ranks")
    owner = json.loads((run / ".lock").read_text())["pid"]  # rank 0, the process holding the run folder
    os.kill(owner, signal.SIGUSR2)  # what SLURM sends before pre-emption or the time limit
    assert job.results() == [0, 0]  # after the requeue, both tasks finished the run
    assert _steps(run) == list(range(1, 41))  # every step once: the requeued job went on from the checkpoint
    log = "\n".join(path.read_text() for path in sorted((tmp_path / "logs").glob("*_0_log.*")))
    assert "stopped by SIGUSR2 after step" in log and "(resumed from" in log


def test_the_command_line_refuses_bad_sizes_with_one_line(capsys):
    assert main(["--nodes", "0", "--", "--recipe", "demo"]) == 2
    assert "--nodes must be at least 1, got 0" in capsys.readouterr().err
