"""No lost work: a step's checkpoint is written before that step's validation, one run per run folder (a live
owner refuses the next run by pid, a dead one's lock is taken over), and a refused resume leaves the earlier
run's files untouched. (Broken validation data at start-up: tests/test_reliability_errors.py; Ctrl-C:
tests/test_engine_loop.py; disk full and interrupted saves: tests/test_reliability_disk.py; a failed miner:
tests/test_mine_pseudo_labels.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_finetune_roundtrip import make_shapes_dataset, tiny_overrides

from training import finetune as finetune_cli
from training import pretrain as pretrain_cli
from training.engine.checkpoint import load_checkpoint
from training.engine.logger import read_metrics
from training.engine.run_lock import LOCK_NAME, RunFolderBusy, RunLock
from training.seg import finetuning


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes", seed=0, train_images=8, val_images=2)


def test_validation_runs_after_its_steps_checkpoint_and_a_resume_repeats_an_unfinished_one(
    shapes, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    args = [
        "--output",
        str(run),
        *[f"--set={o}" for o in tiny_overrides(shapes, 4)],
        "--set=train.eval_every=2",
        "--set=train.checkpoint_every=1000",
        "--set=eval.overlays=0",
    ]

    def broken_validation(*_, **__):
        raise RuntimeError("validation crashed")

    with monkeypatch.context() as patch:
        patch.setattr(finetuning, "evaluate_dataset", broken_validation)
        with pytest.raises(RuntimeError, match="validation crashed"):
            finetune_cli.main(["--recipe", "finetune_voc_aug", *args])
    assert load_checkpoint(run / "last.pth")["step"] == 2  # the two steps before the crash are kept

    assert finetune_cli.main(["--recipe", "finetune_voc_aug", *args]) == 0
    validations = [record["step"] for record in read_metrics(run / "metrics.jsonl") if "mIoU" in record]
    assert validations == [2, 4]  # step 2's validation, lost in the crash, ran first on the resume
    assert load_checkpoint(run / "last.pth")["metrics"]["step"] == 2  # written before step 4's validation
    assert json.loads((run / "eval" / "results.json").read_text())["step"] == 4


def test_a_live_runs_lock_refuses_a_second_run_naming_its_pid(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from training.engine.run_lock import "
            f"RunLock; lock = RunLock({str(tmp_path)!r}); lock.acquire(); print('locked', "
            "flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=rf"another run is using this folder \(pid {holder.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path) as lock:  # the holder died: its lock file is taken over
        assert lock.previous_owner["pid"] == holder.pid
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] != holder.pid
    assert not (tmp_path / LOCK_NAME).exists()  # released: the folder holds only the run's own files


def test_a_refused_resume_leaves_the_earlier_runs_files_untouched(shapes, tmp_path):
    other = make_shapes_dataset(tmp_path / "other", seed=1, train_images=4, val_images=1)
    run = tmp_path / "run"

    def pretrain(dataset):
        return pretrain_cli.main(
            [
                "--output",
                str(run),
                "--set",
                f"data.datasets=[folder:{dataset}:train]",
                "--set",
                "data.crop_size=32",
                "--set",
                "data.base_size=0",
                "--set",
                "data.num_workers=0",
                "--set",
                "train.batch_size=2",
                "--set",
                "train.max_steps=1",
                "--set",
                "train.plots=false",
                "--set",
                "export.enabled=false",
                "--set",
                "method.options.sc_topk=1",
            ]
        )

    assert pretrain(shapes) == 0
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "label_space.json", "last.pth")}
    assert pretrain(other) == 2  # another label space: last.pth cannot be resumed
    assert {name: (run / name).read_bytes() for name in before} == before
