"""Training checkpoints: atomic ``last.pth``, capped snapshots, auto-resume and RNG state.

Every value written is a tensor or a plain Python type, so :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``. The layout is the contract in docs/ARCHITECTURE.md ("Training checkpoint").
"""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdp_hub.checkpoint_io import not_a_torch_file
from mdp_hub.errors import CheckpointError, failure_cause, write_error

FORMAT = "mdp-hub/train-checkpoint"
FORMAT_VERSION = 1
LAST_NAME = "last.pth"
SNAPSHOT_PATTERN = re.compile(r"^checkpoint_(\d+)\.pth$")


# ---------------------------------------------------------------- RNG state


def capture_rng_state() -> dict:
    """RNG states of torch (CPU and every CUDA device), numpy and python as weights_only-safe values."""
    np_state = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [version, list(internal), gauss_next],
    }


def restore_rng_state(state: dict) -> None:
    """Restore what :func:`capture_rng_state` captured: torch CPU, numpy and python exactly, CUDA per device.

    A job resumed on another number of visible GPUs (or on the CPU) cannot get every device's stream back: the
    devices the checkpoint and this process both have are restored, the others keep their current (seeded)
    state, and a ``RuntimeWarning`` says so; random draws on those devices differ from an uninterrupted run.
    """
    torch.set_rng_state(state["torch"])
    _restore_cuda_rng_states(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["bit_generator"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _restore_cuda_rng_states(saved: list) -> None:
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    restored = min(len(saved), visible)
    for device in range(restored):
        torch.cuda.set_rng_state(saved[device], device)
    if saved and len(saved) != visible:
        what = f"devices 0..{restored - 1} restored" if restored else "none restored"
        warnings.warn(
            f"checkpoint holds CUDA RNG states for {len(saved)} device(s), this process sees {visible} ({what}); "
            "other devices keep their seeded state, so their random draws differ from an uninterrupted run",
            RuntimeWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------- files


def save_atomic(obj: Any, path: Path) -> None:
    """Write with ``torch.save`` to a temporary file, fsync it, then ``os.replace`` it over ``path``.

    A crash at any moment leaves either the old or the new complete file, never a truncated one. A full disk, an
    unwritable folder or an interrupt (second Ctrl-C) raises :class:`~mdp_hub.errors.WriteError` naming ``path``
    and the free space; the previous file is unchanged and the temporary one removed.
    """
    path = Path(path)
    tmp = _temporary_path(path, os.getpid())
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError, KeyboardInterrupt) as error:
        # torch wraps a failed write in a RuntimeError; one without an OSError inside is a bug: keep its traceback
        if isinstance(error, RuntimeError) and failure_cause(error) is None:
            raise
        left = f"the previous {path.name} is unchanged" if existed else "no checkpoint was written"
        raise write_error(path, error, left) from error
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _temporary_path(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp-{pid}")


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files of writers that died before their ``os.replace`` (SIGKILL, power loss).

    They are never taken for checkpoints (their names do not match), but each one holds a checkpoint's worth of
    disk. Only for folders with one writer (the main process of one run), since a live writer's file looks the same.
    """
    own_suffix = f".tmp-{os.getpid()}"
    stale = [p for p in Path(directory).glob(".*.pth.tmp-*") if not p.name.endswith(own_suffix)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: Path, *, kind: str | None = None, map_location: Any = "cpu") -> dict:
    """Read a training checkpoint with ``weights_only=True`` and check its format (and ``kind`` if given)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    problem = not_a_torch_file(path)
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem}; give the last.pth of a run")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated/corrupt/unsafe files
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); it is corrupt, truncated or "
            f"not a training checkpoint. Delete it to start over, or resume from a snapshot checkpoint_<step>.pth"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not an {FORMAT} file (format: {found!r})")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {state.get('format_version')!r}; this code reads version {FORMAT_VERSION}"
        )
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(f"{path} is a {state.get('kind')!r} checkpoint, expected {kind!r}")
    return state


def check_compatible(state: dict, *, path: Path, expected: dict) -> None:
    """Raise if the checkpoint's stored values differ from ``expected`` (e.g. arch, label space)."""
    for key, value in expected.items():
        if state.get(key) != value:
            raise CheckpointError(
                f"{path} was written by an incompatible run: {key} is {state.get(key)!r} in the checkpoint "
                f"but {value!r} in this run. Use another --output folder, or resume with the original config"
            )


class CheckpointManager:
    """``last.pth`` plus snapshots ``checkpoint_<step>.pth`` in a run folder, at most ``keep_snapshots`` of them."""

    def __init__(self, run_dir: Path, keep_snapshots: int = 3):
        if keep_snapshots < 0:
            raise ValueError(f"keep_snapshots must be >= 0, got {keep_snapshots}")
        self.run_dir = Path(run_dir)
        self.keep_snapshots = keep_snapshots

    @property
    def last_path(self) -> Path:
        return self.run_dir / LAST_NAME

    def snapshots(self) -> list[Path]:
        """Snapshot files sorted by step."""
        found = []
        for path in self.run_dir.glob("checkpoint_*.pth"):
            match = SNAPSHOT_PATTERN.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def save(self, state: dict, *, snapshot: bool = False) -> Path:
        remove_stale_temporaries(self.run_dir)
        save_atomic(state, self.last_path)
        if snapshot and self.keep_snapshots > 0:
            save_atomic(state, self.run_dir / f"checkpoint_{state['step']:08d}.pth")
            for old in self.snapshots()[: -self.keep_snapshots]:
                old.unlink()
        return self.last_path

    def resume_path(self) -> Path | None:
        """``last.pth`` if the run folder has one (auto-resume), else None."""
        return self.last_path if self.last_path.is_file() else None
