"""Errors raised by mdp_hub and the training code, and how every command-line entry point reports them.

An *expected* error is one the user can act on: a bad config, dataset spec, path, sample or weights file, a full or
read-only disk, an interrupt. Entry points wrapped with :func:`command` print it as one line naming the thing and
what to do, and exit non-zero without a traceback; anything else is a bug and keeps its traceback. ``--debug`` on
any entry point (or ``MDP_HUB_DEBUG=1``) shows the traceback of expected errors too.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

DEBUG_FLAG = "--debug"
DEBUG_ENV = "MDP_HUB_DEBUG"
EXIT_INTERRUPTED = 128 + signal.SIGINT


class UserError(Exception):
    """Base of the errors the user can fix; the message names the file or value and what to do.

    ``exit_code``: what an entry point exits with (2: the input is wrong, like argparse's usage errors).
    """

    exit_code = 2


class CheckpointError(UserError, ValueError):
    """A weights file exists but cannot be used: unsafe pickle, corrupt, or wrong tensors for the model."""


class WeightsNotAvailableError(UserError, FileNotFoundError):
    """Pretrained weights for a tag are neither in the local cache nor reachable on the Hugging Face Hub."""

    def __str__(self) -> str:
        # FileNotFoundError would otherwise format a single argument as "(errno) message".
        return str(self.args[0]) if self.args else ""


class PrototypesNotFoundError(UserError, FileNotFoundError):
    """An export folder or repository has no ``mdp_prototypes.safetensors`` (backbone-only export)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class WriteError(UserError, OSError):
    """Writing ``filename`` failed (disk full, read-only folder, I/O error, interrupt).

    The message names the file, the free space on its disk and ``left``: what the failed write left behind (for
    a checkpoint: the previous one, unchanged). ``errno`` is the underlying error's.
    """

    def __init__(self, path: str | os.PathLike, cause: BaseException, left: str = ""):
        interrupted = isinstance(cause, KeyboardInterrupt)
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        reason = "interrupted" if interrupted else reason
        super().__init__(getattr(cause, "errno", None), reason, str(path))
        self.left = left
        self.exit_code = EXIT_INTERRUPTED if interrupted else UserError.exit_code

    def __str__(self) -> str:
        text = f"could not write {self.filename}: {self.strerror} ({free_space(self.filename)} free on its disk)"
        if self.errno in (errno.ENOSPC, errno.EDQUOT):
            text += "; free some space, then run the same command again"
        return text + (f"; {self.left}" if self.left else "")


def write_error(path: str | os.PathLike, error: BaseException, left: str = "") -> WriteError:
    """The :class:`WriteError` for a failed write of ``path``, with the real cause dug out of wrappers."""
    return WriteError(path, failure_cause(error) or error, left)


def failure_cause(error: BaseException) -> OSError | KeyboardInterrupt | None:
    """The ``OSError`` or ``KeyboardInterrupt`` in ``error``'s cause/context chain (``error`` itself included), or
    None. torch reports a failed write as ``RuntimeError("... unexpected pos ...")`` with the OSError as context."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (OSError, KeyboardInterrupt)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def free_space(path: str | os.PathLike | None) -> str:
    """Free space on the disk holding ``path`` (its nearest existing parent), e.g. ``"1.2 GB"``; ``"?"`` if unknown."""
    if path is None:
        return "?"
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if free < 1024 or unit == "GB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "?"


def describe(error: BaseException) -> str:
    """One line for an expected error: its message, or for an ``OSError`` the file and what went wrong."""
    if isinstance(error, KeyboardInterrupt):
        text = str(error) or "interrupted"
    elif isinstance(error, OSError) and not isinstance(error, UserError) and error.filename is not None:
        text = f"{error.filename}: {error.strerror or error}"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            text += f" ({free_space(error.filename)} free on its disk); free some space, then run the same command"
        elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            text += "; check its permissions or choose another location"
    elif isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    else:
        text = str(error) or type(error).__name__
    return shortened(" ".join(unwrapped_worker_message(text).split()))


def unwrapped_worker_message(text: str) -> str:
    """The original message of an error re-raised from a DataLoader worker, whose text torch replaces with
    "Caught X in DataLoader worker process N" and the worker's traceback; other texts are returned unchanged."""
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    lines = text.rstrip().splitlines()
    last = max(i for i, line in enumerate(lines) if line and not line[0].isspace())
    name, _, message = "\n".join(lines[last:]).partition(": ")
    worker = lines[0].partition(" in ")[2].rstrip(".")
    return f"{message or name} (in {worker})" if worker else message or name


MAX_ERROR_CHARS = 600  # an error line a person reads; the full text is one --debug away


def shortened(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` if it fits ``limit`` characters, else its start and end around a note of what was left out."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 2 // 3], text[-(limit // 4) :]
    left_out = len(text) - len(head) - len(tail)
    return f"{head} [... {left_out} characters left out; --debug shows the whole message ...] {tail}"


def exit_code(error: BaseException) -> int:
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return getattr(error, "exit_code", 2)


def command(prog: str, expected: tuple[type[BaseException], ...] = ()) -> Callable:
    """Decorator for an entry point ``main(argv=None) -> int``: expected errors (``UserError``, ``OSError``,
    ``KeyboardInterrupt`` and ``expected``) become one line on stderr, ``prog: error: ...``, and the exit code.

    ``--debug`` in ``argv`` (removed before ``main`` sees it) or ``MDP_HUB_DEBUG=1`` re-raises them instead.
    """
    handled = (UserError, OSError, KeyboardInterrupt, *expected)

    def decorate(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            argv = list(sys.argv[1:] if argv is None else argv)
            debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
            argv = [arg for arg in argv if arg != DEBUG_FLAG]
            try:
                return main(argv) or 0
            except handled as error:
                if debug:
                    raise
                print(f"{prog}: error: {describe(error)}", file=sys.stderr)
                return exit_code(error)

        return run

    return decorate
