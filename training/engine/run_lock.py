"""One run per run folder: ``<run>/.lock`` names its owner and is held with an exclusive ``flock``.

Two runs writing one folder would interleave ``metrics.jsonl`` and delete each other's temporary checkpoints. The
kernel releases a ``flock`` when its process dies however it dies, so a lock file left by a killed run (its pid no
longer running) is simply taken over by the next run; a live owner makes the next run stop at once, naming its pid.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from mdp_hub.errors import UserError

LOCK_NAME = ".lock"
log = logging.getLogger(__name__)


class RunFolderBusy(UserError):
    """Another live run holds the run folder's lock."""


class RunLock:
    """Context manager holding ``<run_dir>/.lock`` (only where ``enabled``: the main process of a run)."""

    def __init__(self, run_dir: Path, *, enabled: bool = True):
        self.path = Path(run_dir) / LOCK_NAME
        self.enabled = enabled
        self._fd: int | None = None
        self._created_folder = False  # the run folder did not exist before this lock
        self.previous_owner: dict | None = None  # the dead run whose lock file was taken over, if any

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.enabled:
            return
        self._created_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise RunFolderBusy(
                    f"{self.path.parent}: another run is using this folder (pid {owner.get('pid', '?')} on "
                    f"{owner.get('host', '?')}, started {owner.get('started', '?')}); wait for it to end or stop "
                    "it, or give this run another --output"
                ) from None
            except OSError as error:  # a filesystem without file locks
                os.close(fd)
                log.warning("%s: cannot lock the run folder (%s); make sure no other run uses it", self.path, error)
                return
            if not _same_file(fd, self.path):  # its previous owner removed it meanwhile: lock the new one
                os.close(fd)
                continue
            self.previous_owner = _read_owner(fd) or None
            _write_owner(fd)
            self._fd = fd
        if self.previous_owner:
            log.warning(
                "%s: took over the lock of pid %s on %s, which is no longer running",
                self.path,
                self.previous_owner.get("pid", "?"),
                self.previous_owner.get("host", "?"),
            )

    def release(self, *, failed: bool = False) -> None:
        """Unlock. A folder this lock created goes away again when the run left nothing in it, or when it
        ``failed`` before its first checkpoint (its config and logs would describe weights that do not exist)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked, so no later run can lock the removed file
        os.close(self._fd)
        self._fd = None
        if not self._created_folder:
            return
        folder = self.path.parent
        if failed and not any(folder.glob("*.pth")):
            shutil.rmtree(folder, ignore_errors=True)
            return
        try:
            folder.rmdir()
        except OSError:  # not empty: the run wrote something
            pass


def _read_owner(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        owner = json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _write_owner(fd: int) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(owner).encode() + b"\n")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
