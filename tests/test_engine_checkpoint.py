"""Checkpoint files: atomic writes, weights_only reading, RNG round trip, clear errors, snapshot cap."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from training.engine import distributed
from training.engine.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    check_compatible,
    load_checkpoint,
    restore_rng_state,
    save_atomic,
)
from training.engine.optim import warmup_cosine


def _state(step: int) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "pretrain",
        "step": step,
        "model": {"w": torch.full((2,), float(step))},
        "rng": capture_rng_state(),
    }


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    save_atomic(_state(1), tmp_path / "last.pth")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(load_checkpoint(tmp_path / "last.pth")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_corrupt_and_foreign_files_give_clear_errors(tmp_path):
    save_atomic(_state(3), tmp_path / "last.pth")
    data = (tmp_path / "last.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth cannot be read.*corrupt"):
        load_checkpoint(tmp_path / "truncated.pth")
    torch.save({"state_dict": {}}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match=r"plain\.pth is not an mdp-hub/train-checkpoint"):
        load_checkpoint(tmp_path / "plain.pth")
    torch.save({**_state(1), "format_version": 99}, tmp_path / "future.pth")
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(tmp_path / "future.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="arch is 'resnet18' in the checkpoint but 'resnet50'"):
        check_compatible({"arch": "resnet18"}, path=tmp_path / "x.pth", expected={"arch": "resnet50"})


def test_pickled_objects_are_refused(tmp_path):
    torch.save({**_state(1), "evil": object()}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "unsafe.pth")


def test_atomic_write_keeps_the_old_file_when_saving_fails(tmp_path):
    save_atomic(_state(5), tmp_path / "last.pth")
    with pytest.raises(Exception):
        save_atomic({"bad": lambda: None}, tmp_path / "last.pth")  # lambdas cannot be pickled
    assert load_checkpoint(tmp_path / "last.pth")["step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"], "no temporary file may be left behind"


def test_manager_caps_snapshots_and_finds_last(tmp_path):
    manager = CheckpointManager(tmp_path, keep_snapshots=2)
    assert manager.resume_path() is None
    for step in (10, 20, 30):
        manager.save(_state(step), snapshot=True)
    manager.save(_state(35))
    assert [p.name for p in manager.snapshots()] == ["checkpoint_00000020.pth", "checkpoint_00000030.pth"]
    assert load_checkpoint(manager.resume_path())["step"] == 35


def test_warmup_cosine_endpoints():
    assert warmup_cosine(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CPU process that believes it sees ``devices[0]`` CUDA devices; CUDA RNG writes are recorded."""
    devices, written = [0], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: devices[0] > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices[0])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": written.append((device, state)))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: None)  # torch.manual_seed seeds CUDA too
    return devices, written


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


@pytest.mark.parametrize("saved, visible", [(4, 2), (1, 2), (2, 0)])
def test_rng_restores_what_it_can_on_another_number_of_cuda_devices(fake_cuda, saved, visible):
    devices, written = fake_cuda
    state = dict(capture_rng_state(), cuda=[torch.full((8,), i, dtype=torch.uint8) for i in range(saved)])
    expected = _draws()
    devices[0] = visible
    with pytest.warns(RuntimeWarning, match=f"RNG states for {saved} device.*this process sees {visible}"):
        restore_rng_state(state)
    assert _draws() == expected  # torch CPU, numpy and python continue exactly
    assert [device for device, _ in written] == list(range(min(saved, visible)))
    assert all(torch.equal(tensor, state["cuda"][device]) for device, tensor in written)


def test_resume_on_another_gpu_count_derives_distinct_reproducible_rank_streams(fake_cuda, tmp_path):
    """A 1-process job on 4 GPUs resumed as 2 processes on 2 GPUs: no stop; each rank gets its own stream."""
    from test_engine_loop import build_trainer

    devices, _ = fake_cuda
    trainer = build_trainer(tmp_path, total_steps=4, checkpoint_every=2)
    trainer.run()
    trainer.logger.close()
    state = load_checkpoint(tmp_path / "last.pth")
    state["rng"]["cuda"] = [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]
    state["rng_per_rank"] = [state["rng"]]
    save_atomic(state, tmp_path / "last.pth")
    devices[0] = 2
    draws = []
    for rank in (0, 1, 1):
        resumed = build_trainer(tmp_path, total_steps=8, checkpoint_every=2)
        resumed.dist = distributed.DistInfo(rank, 2, rank, torch.device("cpu"))
        with pytest.warns(RuntimeWarning, match="written by 1 process.*this run has 2"):
            assert resumed.resume() == 4
        draws.append(_draws())
    assert draws[1] == draws[2] and draws[0] != draws[1]
