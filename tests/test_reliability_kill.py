"""SIGKILL at several points, including in the middle of writing a checkpoint, for pretraining and fine-tuning.

Each run is killed by the process itself at a precise point (the table ``KILL_CHAIN``), restarted with the same
command, and at the end its weights must equal those of an uninterrupted run bit for bit. The file doubles as the
child program: ``python tests/test_reliability_kill.py --kill POINT:N pretrain|finetune <CLI args>`` runs the real
CLI with the fault armed.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_finetune_roundtrip import make_shapes_dataset
from test_finetune_roundtrip import tiny_overrides as finetune_overrides
from test_pretrain_run import TINY_SIZES, synthetic_root  # noqa: F401  (fixture)
from test_pretrain_run import tiny_overrides as pretrain_overrides

from training import finetune as finetune_cli
from training import pretrain as pretrain_cli
from training.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOTAL_STEPS = 8
CHECKPOINT_EVERY = 2
# (fault, n-th occurrence in that process, step of last.pth after the kill). Each restart resumes from the previous
# row's checkpoint; save #1 of a process resumed at step s is the one at s + 2.
KILL_CHAIN = [
    ("mid-write", 2, 2),  # torch.save has written half of the step-4 checkpoint's temporary file
    ("before-rename", 1, 2),  # the step-4 temporary file is complete and fsynced, os.replace not yet called
    ("after-rename", 1, 4),  # last.pth is the new step-4 file; the directory fsync and snapshots not yet done
    ("mid-step", 2, 4),  # inside step 6, between checkpoints
]
MAINS = {"pretrain": pretrain_cli.main, "finetune": finetune_cli.main}


def _args(kind: str, data: Path, run: Path) -> list[str]:
    if kind == "pretrain":
        extra = {"train.max_steps": TOTAL_STEPS, "train.checkpoint_every": CHECKPOINT_EVERY, "train.log_every": 2}
        return ["--output", str(run), *pretrain_overrides(data, **extra)]
    overrides = finetune_overrides(data, TOTAL_STEPS)
    overrides = [o for o in overrides if not o.startswith("train.checkpoint_every=")]
    overrides += [f"train.checkpoint_every={CHECKPOINT_EVERY}", "eval.overlays=0"]
    return ["--recipe", "finetune_voc_aug", "--output", str(run), *[f"--set={o}" for o in overrides]]


def _run_killed(kind: str, fault: str, count: int, args: list[str]) -> subprocess.CompletedProcess:
    # the same thread count as this process: a different split of the reductions changes the last bits
    env = dict(
        os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", OMP_NUM_THREADS=str(torch.get_num_threads())
    )
    cmd = [sys.executable, __file__, "--kill", f"{fault}:{count}", kind, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def finetune_data(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes", seed=0, train_images=16, val_images=2)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_kills_at_every_point_then_restarts_end_bit_exact(kind, synthetic_root, finetune_data, tmp_path):  # noqa: F811
    data = synthetic_root if kind == "pretrain" else finetune_data
    straight = tmp_path / "straight"
    assert MAINS[kind](_args(kind, data, straight)) == 0

    run = tmp_path / "killed"
    for fault, count, expected_step in KILL_CHAIN:
        result = _run_killed(kind, fault, count, _args(kind, data, run))
        assert result.returncode == -signal.SIGKILL, f"{fault}: {result.stderr[-3000:]}"
        assert load_checkpoint(run / "last.pth")["step"] == expected_step, fault
    torch.manual_seed(4321)  # the restarted process's RNG state must not matter
    assert MAINS[kind](_args(kind, data, run)) == 0

    final, reference = load_checkpoint(run / "last.pth"), load_checkpoint(straight / "last.pth")
    assert final["step"] == reference["step"] == TOTAL_STEPS
    assert final["model"].keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        assert torch.equal(final["model"][key], value), key
    leftovers = sorted(p.name for p in run.iterdir() if ".tmp-" in p.name)
    assert not leftovers, f"temporary files of killed writers left behind: {leftovers}"


# ---------------------------------------------------------------- the child program


def _arm(fault: str, count: int) -> None:
    """Make this process SIGKILL itself at the ``count``-th occurrence of ``fault``."""
    import training.engine.checkpoint as checkpoint_module
    import training.engine.loop as loop_module

    seen = {"n": 0}

    def hit() -> bool:
        seen["n"] += 1
        return seen["n"] == count

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if fault == "mid-write":
        real_save = torch.save

        def half_save(obj, handle, *args, **kwargs):
            if not hit():
                return real_save(obj, handle, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
            os.fsync(handle.fileno())
            die()

        checkpoint_module.torch.save = half_save
    elif fault in ("before-rename", "after-rename"):
        real_replace = os.replace

        def replace(src, dst):
            if not str(dst).endswith(".pth") or not hit():
                return real_replace(src, dst)
            if fault == "after-rename":
                real_replace(src, dst)
            die()

        checkpoint_module.os.replace = replace
    elif fault == "mid-step":
        real_set_lr = loop_module.set_lr

        def set_lr(optimizer, lr):
            if hit():
                die()
            real_set_lr(optimizer, lr)

        loop_module.set_lr = set_lr
    else:
        raise ValueError(f"unknown fault {fault!r}")


def _child_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill", required=True, help="FAULT:N")
    parser.add_argument("kind", choices=sorted(MAINS))
    args, cli_args = parser.parse_known_args()
    fault, count = args.kill.split(":")
    _arm(fault, int(count))
    sys.exit(MAINS[args.kind](cli_args))


if __name__ == "__main__":
    _child_main()
