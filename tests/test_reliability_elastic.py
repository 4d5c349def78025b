"""Elastic restart: under ``torchrun --max-restarts`` with gloo and 2 processes, a worker that dies (SIGKILL inside a
step) is restarted with its peer, and the run continues from the last checkpoint to the same weights.

The file doubles as the worker program (``torchrun ... tests/test_reliability_elastic.py --run-dir D ...``): the
toy trainer of tests/test_engine_loop.py, with rank 1 killing itself on the first attempt only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.engine import distributed
from training.engine.checkpoint import load_checkpoint

from test_engine_loop import build_trainer
from test_reliability_kill import _arm

ROOT = Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT_EVERY, KILL_AT_STEP = 8, 2, 5


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MDP_RUN_ELASTIC_TEST") != "1",
    reason="opt-in (MDP_RUN_ELASTIC_TEST=1): on 2 shared CPU cores the restarted gloo group hangs in about one run "
    "of three (peer connection refused, then no progress), which would make CI fail at random; see "
    "docs/RELIABILITY.md",
)
def test_worker_killed_under_torchrun_is_restarted_and_resumes_from_the_last_checkpoint(tmp_path):
    # 2 ranks x batch 2 see the samples of 1 process x batch 4 (see test_engine_loop's DDP test)
    single = build_trainer(tmp_path / "single", total_steps=STEPS, batch_size=4, dataset_size=24,
                           checkpoint_every=CHECKPOINT_EVERY, random_draws=False)
    single.run()
    single.logger.close()

    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", OMP_NUM_THREADS="1")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "--max-restarts", "3", "--monitor-interval", "0.2", __file__, "--run-dir", str(tmp_path / "ddp")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # One restart is the fault's; gloo's rendezvous on 2 shared cores occasionally fails once more (connection
    # refused while the peer is still starting), which the spare restarts absorb like a real cluster would.
    assert report["restart_count"] >= 1 and report["final_step"] == STEPS, report
    assert report["resumed_from"] in range(CHECKPOINT_EVERY, STEPS, CHECKPOINT_EVERY), report
    assert "(exitcode: -9) local_rank: 1" in result.stderr, result.stderr[-3000:]  # the SIGKILL of rank 1

    state = load_checkpoint(tmp_path / "ddp" / "last.pth")
    assert state["step"] == STEPS and len(state["rng_per_rank"]) == 2
    for name, tensor in single.module.state_dict().items():
        torch.testing.assert_close(state["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def _worker_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args()
    info = distributed.init_distributed("cpu")
    restart_count = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    trainer = build_trainer(args.run_dir, total_steps=STEPS, batch_size=2, dataset_size=24,
                            checkpoint_every=CHECKPOINT_EVERY, dist_info=info, random_draws=False)
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
