"""The shared step loop on a tiny CPU model: resume, stop signals, non-finite losses, DDP equivalence.

The file doubles as the child program of the subprocess tests (``python tests/test_engine_loop.py ...``), so the
signalled/torchrun processes run exactly the code under test. The SIGKILL-and-restart test runs the real
pretraining CLI (tests/test_pretrain_run.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from mdp_hub.errors import command
from training.engine import distributed
from training.engine.checkpoint import CheckpointError, load_checkpoint
from training.engine.data import epoch_loader, steps_per_epoch
from training.engine.logger import RunLogger, read_metrics
from training.engine.loop import LoopConfig, Trainer
from training.engine.numerics import NonFiniteLossError, make_grad_scaler
from training.engine.optim import build_optimizer, warmup_cosine

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 4


class ToySegmentation(Dataset):
    """Images whose label is the channel with the largest value; noise drawn from the global RNG (augmentation)."""

    def __init__(self, size: int = 48, side: int = 8, noise: float = 0.1):
        self.noise = noise
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randn(size, 3, side, side, generator=gen)
        masks = self.images.argmax(dim=1)
        masks[:, 0, :] = -1  # an ignored row, as the data layer produces
        self.masks = masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        noise = self.noise * torch.randn_like(self.images[index])
        return {
            "image": self.images[index] + noise,
            "mask": self.masks[index],
            "dataset_id": torch.tensor(0),
            "index": torch.tensor(index),
        }


class ToyMethod(nn.Module):
    """Per-pixel classifier whose output dict follows the trainer contract (``loss`` + per-term scalars)."""

    def __init__(self, poison_at: int = -1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(8, NUM_CLASSES, 1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.poison_at = poison_at

    def forward(self, batch: dict) -> dict:
        logits = self.classifier(self.body(batch["image"]))
        ce = F.cross_entropy(logits, batch["mask"], ignore_index=-1)
        reg = 1e-3 * logits.pow(2).mean()
        if self.poison_at >= 0:  # a term that blows up at a given call, like a diverging loss would
            reg = reg + torch.where(self.calls == self.poison_at, torch.tensor(float("inf")), torch.tensor(0.0))
        self.calls += 1
        return {"loss": ce + reg, "ce": ce.detach(), "reg": reg.detach()}


def build_trainer(
    run_dir: Path,
    *,
    total_steps: int,
    batch_size: int = 4,
    dataset_size: int = 48,
    poison_at: int = -1,
    checkpoint_every: int = 5,
    log_every: int = 5,
    dist_info=None,
    lr: float = 0.05,
    random_draws: bool = True,
) -> Trainer:
    dist_info = dist_info or distributed.DistInfo(0, 1, 0, torch.device("cpu"))
    torch.manual_seed(0)
    module = ToyMethod(poison_at)
    if not random_draws:  # rank-local draws (dropout, noise) differ from one process's; the DDP test needs none
        module.body[3].p = 0.0
    model = module
    if dist_info.distributed:
        model = nn.parallel.DistributedDataParallel(module, broadcast_buffers=False)
    dataset = ToySegmentation(dataset_size, noise=0.1 if random_draws else 0.0)
    sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, seed=3)
    per_epoch = steps_per_epoch(sampler, batch_size)
    epochs = -(-total_steps // per_epoch)
    optimizer = build_optimizer(module, "sgd", lr=lr, weight_decay=1e-4)
    config = LoopConfig(
        total_steps=total_steps,
        epoch_lengths=[per_epoch] * epochs,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        keep_snapshots=2,
    )
    logger = RunLogger(run_dir, enabled=dist_info.is_main, total_steps=total_steps, progress=False, tensorboard=False)
    return Trainer(
        module=module,
        model=model,
        optimizer=optimizer,
        scaler=make_grad_scaler("none", dist_info.device),
        lr_at=lambda step: warmup_cosine(step, total_steps, 2, lr),
        iterate_epoch=lambda epoch, skip: epoch_loader(
            dataset, sampler, batch_size=batch_size, epoch=epoch, skip=skip, seed=1
        ),
        config=config,
        run_dir=run_dir,
        dist_info=dist_info,
        checkpoint_extras=lambda: {"kind": "toy", "arch": "toy"},
        logger=logger,
    )


def losses_by_step(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


def test_resume_continues_bit_exact(tmp_path):
    """Stop after 7 steps, resume from last.pth in a fresh trainer: steps 8.. equal the uninterrupted run."""
    straight = build_trainer(tmp_path / "straight", total_steps=14, log_every=1, checkpoint_every=7)
    straight.run()
    straight.logger.close()

    first = build_trainer(tmp_path / "resumed", total_steps=14, log_every=1, checkpoint_every=7)
    first.config.total_steps = 7  # the same schedule, cut after step 7 as a kill would
    first.run()
    first.logger.close()
    torch.manual_seed(1234)  # a restarted process starts with unrelated RNG state
    second = build_trainer(tmp_path / "resumed", total_steps=14, log_every=1, checkpoint_every=7)
    assert second.resume(expected={"kind": "toy"}) == 7
    second.run()
    second.logger.close()

    a, b = losses_by_step(tmp_path / "straight"), losses_by_step(tmp_path / "resumed")
    assert sorted(b) == list(range(1, 15))
    for step in range(8, 15):
        assert a[step] == b[step], f"step {step}: {a[step]!r} != {b[step]!r}"
    for name, tensor in straight.module.state_dict().items():
        assert torch.equal(tensor, second.module.state_dict()[name]), name


def test_checkpoint_holds_full_state_and_loads_weights_only(tmp_path):
    trainer = build_trainer(tmp_path, total_steps=5, checkpoint_every=5)
    trainer.run()
    state = torch.load(tmp_path / "last.pth", weights_only=True)
    assert state["format"] == "mdp-hub/train-checkpoint" and state["step"] == 5
    assert {"torch", "cuda", "numpy", "python"} <= set(state["rng"])
    assert state["optimizer"]["state"], "optimizer momentum buffers must be saved"
    assert set(state["model"]) == set(trainer.module.state_dict())
    with pytest.raises(CheckpointError, match="kind"):
        build_trainer(tmp_path, total_steps=5).resume(expected={"kind": "pretrain"})


def test_non_finite_loss_stops_with_step_and_term_and_keeps_last_good_checkpoint(tmp_path):
    trainer = build_trainer(tmp_path, total_steps=20, poison_at=7, checkpoint_every=5, log_every=5)
    with pytest.raises(NonFiniteLossError, match=r"step 7 in term\(s\) loss, reg") as caught:
        trainer.run()
    assert caught.value.step == 7 and caught.value.terms == ["loss", "reg"]
    assert load_checkpoint(tmp_path / "last.pth")["step"] == 5, "the checkpoint after the bad step must not exist"


def test_snapshots_are_capped(tmp_path):
    trainer = build_trainer(tmp_path, total_steps=24, checkpoint_every=0)  # 12 steps/epoch -> 2 epoch snapshots
    trainer.config.snapshot_every = 4
    trainer.run()
    names = sorted(p.name for p in tmp_path.glob("checkpoint_*.pth"))
    assert names == ["checkpoint_00000020.pth", "checkpoint_00000024.pth"]


# ---------------------------------------------------------------- subprocess tests


def _child_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _wait_for_checkpoint(path: Path, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    # a deadline for a child that is stuck, not an estimate of its speed (the machine may be loaded)
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"child exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_writes_checkpoint_then_exits(tmp_path):
    cmd = [
        sys.executable,
        __file__,
        "--run-dir",
        str(tmp_path),
        "--steps",
        "100000",
        "--slow",
        "0.02",
        "--checkpoint-every",
        "0",
    ]
    proc = subprocess.Popen(cmd, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(tmp_path / "started", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGTERM, err
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["step"] > 0
    assert f"stopped by SIGTERM after step {state['step']}" in err


@pytest.mark.slow
def test_ctrl_c_writes_checkpoint_then_exits_and_a_second_one_aborts_at_once(tmp_path):
    once, twice = tmp_path / "once", tmp_path / "twice"
    cmd = [sys.executable, __file__, "--steps", "100000", "--checkpoint-every", "0"]
    proc = subprocess.Popen(
        cmd + ["--run-dir", str(once), "--slow", "0.02"],
        env=_child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_checkpoint(once / "started", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in err, err
    assert f"stopped by SIGINT after step {load_checkpoint(once / 'last.pth')['step']}" in err

    # each step sleeps a minute, so the second Ctrl-C surely lands before the step boundary
    proc = subprocess.Popen(
        cmd + ["--run-dir", str(twice), "--slow", "60"],
        env=_child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_checkpoint(twice / "started", proc)
    proc.send_signal(signal.SIGINT)
    seen = ""
    while "Ctrl-C: stopping after this step" not in seen:  # the handler answered the first one
        line = proc.stderr.readline()
        assert line, f"child exited early: {seen}"
        seen += line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in err, seen + err
    assert "test_engine_loop.py: error: interrupted by a second Ctrl-C before the checkpoint" in err, repr(seen)
    assert not (twice / "last.pth").exists()


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process_on_the_concatenated_batch(tmp_path):
    """DDP averages gradients over ranks: 2 x batch 2 must give the weights of 1 x batch 4 (same samples).

    One process with batch 4 takes sampler positions [4k, 4k+4); DistributedSampler gives rank r the positions
    r, r+2, ... of the same permutation, so rank r's batch k is positions {4k+r, 4k+r+2}: together the two ranks
    see exactly the single process's batch.
    """
    single = build_trainer(
        tmp_path / "single", total_steps=6, batch_size=4, dataset_size=24, checkpoint_every=6, random_draws=False
    )
    single.run()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        __file__,
        "--run-dir",
        str(tmp_path / "ddp"),
        "--steps",
        "6",
        "--batch-size",
        "2",
        "--dataset-size",
        "24",
        "--checkpoint-every",
        "6",
        "--no-random-draws",
        "--starve-backend-threads",
    ]
    result = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "terminate called" not in result.stderr, result.stderr[-3000:]
    ddp_state = load_checkpoint(tmp_path / "ddp" / "last.pth")
    assert len(ddp_state["rng_per_rank"]) == 2
    for name, tensor in single.module.state_dict().items():
        torch.testing.assert_close(ddp_state["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def _starve_backend_threads(cpu: int) -> None:
    """Pin this process to ``cpu`` and put gloo's worker threads at SCHED_IDLE: they then run only while the main
    thread waits. A worker that releases a finished collective's tensors after the main thread has reached
    interpreter shutdown (which aborted rank 1 with SIGABRT under load) becomes the usual order instead of a rare
    one, so this test catches a regression on any machine, loaded or not."""
    os.sched_setaffinity(0, {cpu})
    for thread in Path("/proc/self/task").iterdir():
        if (thread / "comm").read_text().startswith("pt_gloo_runloop"):
            os.sched_setaffinity(int(thread.name), {cpu})
            os.sched_setscheduler(int(thread.name), os.SCHED_IDLE, os.sched_param(0))


@command("test_engine_loop.py")
def _child_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dataset-size", type=int, default=48)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--slow", type=float, default=0.0, help="seconds of sleep in every forward")
    parser.add_argument("--no-random-draws", action="store_true")
    parser.add_argument("--starve-backend-threads", action="store_true")
    args = parser.parse_args(argv)
    info = distributed.init_distributed("cpu")
    if args.starve_backend_threads:
        _starve_backend_threads(min(os.sched_getaffinity(0)))
    trainer = build_trainer(
        args.run_dir,
        total_steps=args.steps,
        batch_size=args.batch_size,
        dataset_size=args.dataset_size,
        checkpoint_every=args.checkpoint_every,
        dist_info=info,
        random_draws=not args.no_random_draws,
    )
    original_forward = trainer.model.forward

    def forward(batch):
        # "started" appears inside the first step, when the loop's signal handlers are installed
        (args.run_dir / "started").touch()
        time.sleep(args.slow)
        return original_forward(batch)

    trainer.model.forward = forward
    resumed_from = trainer.resume()
    args.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        final = trainer.run()
    finally:
        trainer.logger.close()
        distributed.cleanup()
    if info.is_main:
        print(json.dumps({"resumed_from": resumed_from, "final_step": final}))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
