"""Elastic restart: under ``torchrun --max-restarts`` with gloo and 2 processes, a worker that dies (SIGKILL inside a
step) is restarted with its peer, and the run continues from the last checkpoint to the same weights.

The file doubles as the worker program (``torchrun ... tests/test_reliability_elastic.py --run-dir D ...``): the
toy trainer of tests/test_engine_loop.py, with rank 1 killing itself on the first attempt only.

torchrun keeps one agent-hosted TCPStore for all restart attempts; the failed attempt's keys (the dead ranks' gloo
addresses) are still in it. Before ``init_distributed`` gave each attempt its own key space, a restarted rank that
read its peer's key first connected to the dead process ("Connection refused", then further restarts or a hang)
in about one run of three here; ``test_each_restart_attempt_gets_its_own_key_space`` pins that part down without
torchrun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_engine_loop import build_trainer
from test_reliability_kill import _arm

from training.engine import distributed
from training.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT_EVERY, KILL_AT_STEP = 8, 2, 5


@pytest.mark.slow
def test_worker_killed_under_torchrun_is_restarted_and_resumes_from_the_last_checkpoint(tmp_path):
    # 2 ranks x batch 2 see the samples of 1 process x batch 4 (see test_engine_loop's DDP test)
    single = build_trainer(
        tmp_path / "single",
        total_steps=STEPS,
        batch_size=4,
        dataset_size=24,
        checkpoint_every=CHECKPOINT_EVERY,
        random_draws=False,
    )
    single.run()
    single.logger.close()

    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", OMP_NUM_THREADS="1")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "--max-restarts",
        "3",
        "--monitor-interval",
        "0.2",
        __file__,
        "--run-dir",
        str(tmp_path / "ddp"),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Exactly one restart, the fault's: a restarted group that reads the failed attempt's addresses needs more
    assert report["restart_count"] == 1 and report["final_step"] == STEPS, report
    assert "Connection refused" not in result.stderr, result.stderr[-3000:]
    assert report["resumed_from"] in range(CHECKPOINT_EVERY, STEPS, CHECKPOINT_EVERY), report
    # The fault was rank 1's SIGKILL. The agent reports the first exit its monitor sees: rank 1's -9, or, when the
    # machine is loaded, rank 0's abort on the connection its killed peer reset, whichever comes first.
    killed = "(exitcode: -9) local_rank: 1" in result.stderr
    peer_reset = "local_rank: 0" in result.stderr and "Connection reset by peer" in result.stderr
    assert killed or peer_reset, result.stderr[-3000:]

    state = load_checkpoint(tmp_path / "ddp" / "last.pth")
    assert state["step"] == STEPS and len(state["rng_per_rank"]) == 2
    for name, tensor in single.module.state_dict().items():
        torch.testing.assert_close(state["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_one_machine_restart_together_after_a_worker_dies(tmp_path):
    """Two torchrun agents (``--nnodes 2 --nproc_per_node 1``, c10d rendezvous on localhost) with the documented
    environment: node 1's worker is SIGKILLed in a step, both nodes restart and the run finishes from last.pth."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", OMP_NUM_THREADS="1")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"  # docs/TRAINING.md: each attempt gets a fresh store
    endpoint = f"127.0.0.1:{_free_port()}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "mdp-two-nodes",
        "--max-restarts", "3", "--monitor-interval", "0.2",
        __file__, "--run-dir", str(tmp_path / "ddp"),
    ]  # fmt: skip
    nodes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    nodes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-4000:]
    report = json.loads(next(out for out, _ in outputs if out.strip()).strip().splitlines()[-1])
    assert report["final_step"] == STEPS and report["resumed_from"] in range(CHECKPOINT_EVERY, STEPS, CHECKPOINT_EVERY)
    state = load_checkpoint(tmp_path / "ddp" / "last.pth")
    assert state["step"] == STEPS and len(state["rng_per_rank"]) == 2


ELASTIC_ENV = (
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "MASTER_ADDR",
    "MASTER_PORT",
    "LOCAL_WORLD_SIZE",
)


@pytest.fixture
def agent_store(monkeypatch):
    """A TCPStore server standing in for torchrun's agent, and a worker environment pointing at it."""
    for name in ELASTIC_ENV:
        monkeypatch.delenv(name, raising=False)
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    for name, value in {
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_MAX_RESTARTS": "3",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(server.port),
        "LOCAL_WORLD_SIZE": "2",
        "TORCHELASTIC_RESTART_COUNT": "0",
    }.items():
        monkeypatch.setenv(name, value)
    return server


def test_each_restart_attempt_gets_its_own_key_space(agent_store, monkeypatch):
    first = distributed._elastic_store(2, timedelta(seconds=10))
    first.set("0/rank_1", "address of the rank that is about to die")  # what a group's set-up leaves behind
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    restarted = distributed._elastic_store(2, timedelta(seconds=10))
    assert not restarted.check(["0/rank_1"])  # the restarted group cannot read the dead rank's address ...
    assert agent_store.num_keys() >= 1  # ... although the agent's store, shared across attempts, still holds it
    restarted.set("0/rank_1", "new address")
    assert restarted.get("0/rank_1") == b"new address" and first.get("0/rank_1") != b"new address"


def test_elastic_store_only_under_a_single_node_agent_store(agent_store, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    assert distributed._elastic_store(2, timedelta(seconds=10)) is None  # env:// creates the store, as usual
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # 2 nodes x 1 process: agents count restarts separately
    with pytest.warns(RuntimeWarning, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        assert distributed._elastic_store(2, timedelta(seconds=10)) is None
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    with pytest.raises(RuntimeError, match="TORCHELASTIC_RESTART_COUNT is not set"):
        distributed._elastic_store(2, timedelta(seconds=10))


def _worker_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args()
    info = distributed.init_distributed("cpu")
    restart_count = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    trainer = build_trainer(
        args.run_dir,
        total_steps=STEPS,
        batch_size=2,
        dataset_size=24,
        checkpoint_every=CHECKPOINT_EVERY,
        dist_info=info,
        random_draws=False,
    )
    resumed_from = trainer.resume()
    if info.rank == 1 and restart_count == 0:
        _arm("mid-step", KILL_AT_STEP - resumed_from)
    try:
        final = trainer.run()
    finally:
        trainer.logger.close()
        distributed.cleanup()
    if info.is_main:
        print(json.dumps({"restart_count": restart_count, "resumed_from": resumed_from, "final_step": final}))


if __name__ == "__main__":
    _worker_main()
