"""Disk full and unwritable output: checkpoints and exports fail with the OS error and leave the previous good file
(or nothing), never a half-written file that a later resume or load would take for a good one.

A full disk is simulated by letting the real writer put half of its bytes on disk and then raise
``OSError(ENOSPC)``; an unwritable folder by ``OSError(EROFS)`` from the call that creates the file (the suite runs
as root, for whom a chmod'ed folder stays writable). Counted figures: ``CHECKPOINT_FAULTS`` and ``EXPORT_FAULTS``,
each tried on a fresh folder and over a previous good result.
"""

from __future__ import annotations

import errno
import importlib
import io
import os
from pathlib import Path

import pytest
import torch
from prototype_checkpoints import build_method_with_prototypes, save_checkpoint
from test_engine_loop import build_trainer

import training.engine.checkpoint as checkpoint_module
from mdp_hub import CheckpointError
from mdp_hub.errors import WriteError, describe, exit_code
from mdp_hub.export import export
from mdp_hub.integrity import verify_checksum
from training.engine.checkpoint import load_checkpoint

TAG = "tiny_run"  # a custom tag: the checkpoints are no run of a paper recipe
# mdp_hub re-exports the function export() under the submodule's name, so fetch the module itself
export_module = importlib.import_module("mdp_hub.export")


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fail_on_call(number: int, real, failing):
    """A stand-in for ``real`` whose ``number``-th call runs ``failing`` instead."""
    calls = {"n": 0}

    def call(*args, **kwargs):
        calls["n"] += 1
        return failing(*args, **kwargs) if calls["n"] == number else real(*args, **kwargs)

    return call


# ---------------------------------------------------------------- checkpoints


class _FailingFile(io.FileIO):
    """A real file that takes the first ``budget`` bytes, then fails the way ``failure()`` says: the real
    ``torch.save`` writes into it (and wraps the OSError in its own RuntimeError, as it does on a full disk)."""

    def __init__(self, path, mode, budget: int, failure):
        super().__init__(path, mode)
        self.budget, self.failure = budget, failure

    def write(self, data) -> int:
        if len(data) > self.budget:
            super().write(bytes(data[: self.budget]))
            raise self.failure()
        self.budget -= len(data)
        return super().write(data)


def _arm_checkpoint_file(failure):
    def arm(monkeypatch) -> None:
        def open_failing(path, mode="r", *args, **kwargs):
            return _FailingFile(path, mode, 4096, failure)  # a toy checkpoint has ~20 kB

        monkeypatch.setattr(checkpoint_module, "open", open_failing, raising=False)

    return arm


def _arm_read_only_run_folder(monkeypatch) -> None:
    def refuse(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(checkpoint_module, "open", refuse, raising=False)


def _interrupt() -> KeyboardInterrupt:
    return KeyboardInterrupt()


# fault -> (arm, errno of the WriteError; None for an interrupt)
CHECKPOINT_FAULTS = {
    "disk full half-way through torch.save": (_arm_checkpoint_file(_disk_full), errno.ENOSPC),
    "read-only run folder": (_arm_read_only_run_folder, errno.EROFS),
    "second Ctrl-C half-way through torch.save": (_arm_checkpoint_file(_interrupt), None),
}


@pytest.mark.parametrize("fault", sorted(CHECKPOINT_FAULTS))
def test_failed_checkpoint_keeps_the_last_good_one_and_the_run_resumes_bit_exact(fault, tmp_path, monkeypatch):
    arm, code = CHECKPOINT_FAULTS[fault]
    straight = build_trainer(tmp_path / "straight", total_steps=6, checkpoint_every=2, log_every=2)
    straight.run()
    straight.logger.close()

    run = tmp_path / "run"
    first = build_trainer(run, total_steps=6, checkpoint_every=2, log_every=2)
    first.config.total_steps = 2
    first.run()
    first.logger.close()
    good = (run / "last.pth").read_bytes()
    checkpoint_files = sorted(p.name for p in run.iterdir() if p.suffix == ".pth")

    failing = build_trainer(run, total_steps=6, checkpoint_every=2, log_every=2)
    failing.resume()
    with monkeypatch.context() as patch:
        arm(patch)
        with pytest.raises(WriteError) as caught:
            failing.run()  # fails at the step-4 checkpoint
    failing.logger.close()
    assert caught.value.errno == code
    message = describe(caught.value)  # what the entry points print: one line with the file and the free space
    assert message.startswith(f"could not write {run / 'last.pth'}: ") and " free on its disk" in message
    assert message.endswith("the previous last.pth is unchanged")
    assert exit_code(caught.value) == (130 if code is None else 2)
    assert (run / "last.pth").read_bytes() == good, "the last good checkpoint was touched"
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pth" or ".tmp-" in p.name) == checkpoint_files

    restarted = build_trainer(run, total_steps=6, checkpoint_every=2, log_every=2)  # the disk has space again
    assert restarted.resume() == 2
    restarted.run()
    restarted.logger.close()
    final, reference = load_checkpoint(run / "last.pth"), load_checkpoint(tmp_path / "straight" / "last.pth")
    for key, value in reference["model"].items():
        assert torch.equal(final["model"][key], value), key


# ---------------------------------------------------------------- exports


def _config_half_then_fail(model, config_path, **kwargs):
    Path(config_path).write_text('{"architecture": "res')
    raise _disk_full()


def _arm_tensor_file(name):
    """The real writer puts half of ``name``'s bytes on disk, then the disk is full."""

    def arm(patch):
        real_write_bytes = Path.write_bytes

        def write_bytes(self, data):
            if self.name != name:
                return real_write_bytes(self, data)
            real_write_bytes(self, data[: len(data) // 2])
            raise _disk_full()

        patch.setattr(Path, "write_bytes", write_bytes)

    return arm


def _arm_config(patch):
    patch.setattr(export_module, "save_config_for_hf", _config_half_then_fail)


def _arm_card(patch):
    real_write_text = Path.write_text

    def write_text(self, text, *args, **kwargs):
        if self.name != export_module.CARD_FILENAME:
            return real_write_text(self, text, *args, **kwargs)
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise _disk_full()

    patch.setattr(Path, "write_text", write_text)


def _arm_read_only_folder(patch):
    def refuse(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))

    patch.setattr(export_module.tempfile, "mkdtemp", refuse)


def _arm_rename(patch):
    def refuse(src, dst):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))

    patch.setattr(export_module.os, "replace", _fail_on_call(2, os.replace, refuse))


EXPORT_FAULTS = {  # fault: (arm, errno, the file the one line names, under the output folder)
    "disk full writing model.safetensors": (_arm_tensor_file("model.safetensors"), errno.ENOSPC, "model.safetensors"),
    "disk full writing mdp_prototypes.safetensors": (
        _arm_tensor_file("mdp_prototypes.safetensors"),
        errno.ENOSPC,
        "mdp_prototypes.safetensors",
    ),
    "disk full writing config.json": (_arm_config, errno.ENOSPC, "config.json"),
    "disk full writing README.md": (_arm_card, errno.ENOSPC, "README.md"),
    "read-only output folder": (_arm_read_only_folder, errno.EROFS, ""),
    "I/O error between the renames into place": (_arm_rename, errno.EIO, None),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two pretraining checkpoints with different weights: the earlier export and the one that fails."""
    folder = tmp_path_factory.mktemp("ckpts")
    for seed in (0, 1):
        method, _ = build_method_with_prototypes(seed=seed)
        save_checkpoint(method, folder / f"seed{seed}.pth")
    return folder / "seed0.pth", folder / "seed1.pth"


@pytest.mark.parametrize("over_previous", [False, True], ids=["fresh folder", "over a previous export"])
@pytest.mark.parametrize("fault", sorted(EXPORT_FAULTS))
def test_failed_export_leaves_nothing_that_loads_as_good(fault, over_previous, checkpoints, tmp_path, monkeypatch):
    arm, code, named = EXPORT_FAULTS[fault]
    out = tmp_path / "export"
    if over_previous:
        export(checkpoints[0], out, tag=TAG)
    before = _folder_bytes(out) if out.exists() else {}
    with monkeypatch.context() as patch:
        arm(patch)
        with pytest.raises(OSError) as caught:
            export(checkpoints[1], out, tag=TAG)
    assert caught.value.errno == code
    message = describe(caught.value)
    assert message.startswith(f"could not write {out}")  # one line naming the folder (and the file)
    if named is not None:
        assert message.startswith(f"could not write {out / named if named else out}:"), message
    assert " free on its disk" in describe(caught.value)
    after = _folder_bytes(out) if out.exists() else {}
    assert not [name for name in after if name.startswith(export_module.STAGING_PREFIX)], "staging left behind"
    if after == before:
        return  # nothing changed: the previous export (or no export) is what a user finds
    # Only the interrupted renames get here: new weights under the previous config's checksum, refused on load;
    # or, in a fresh folder, weights without a config.json, which is no export.
    assert fault == "I/O error between the renames into place"
    if over_previous:
        with pytest.raises(CheckpointError, match="differs from .* recorded in"):
            verify_checksum(out / "model.safetensors")
    else:
        assert "config.json" not in after
    export(checkpoints[1], out, tag=TAG)  # once the fault is gone, the export completes and verifies
    verify_checksum(out / "model.safetensors")
