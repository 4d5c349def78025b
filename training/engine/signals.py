"""SIGTERM / SIGUSR1 / SIGUSR2 / SIGINT (Ctrl-C) -> checkpoint, then exit.

Cluster schedulers (SLURM pre-emption, Kubernetes, torchrun's own shutdown) send SIGTERM or SIGUSR1 before they
kill a job (SIGUSR2 under submitit, which then requeues it: training.submit); a user presses Ctrl-C. The handler
only sets a flag; the step loop sees it at the next step boundary, writes ``last.pth`` and leaves with
:class:`StopRequested`, so a restart resumes from exactly that step. A second Ctrl-C does not wait for the
boundary: it raises ``KeyboardInterrupt`` at once (a checkpoint being written then is abandoned and the previous
one stays, see ``checkpoint.save_atomic``).
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from mdp_hub.errors import UserError
from training.engine.distributed import all_reduce_max_, is_initialized

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


class StopRequested(UserError):
    """Raised by the loop after it checkpointed on a stop signal; ``exit_code`` = 128 + signal number."""

    def __init__(self, signum: int, step: int):
        self.signum = signum
        self.step = step
        self.exit_code = 128 + signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint written: "
            "run the same command again to resume"
        )


class StopSignal:
    """Context manager installing the handlers; restores the previous ones on exit."""

    def __init__(self, signals=HANDLED_SIGNALS):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous = {}
        self._pid = os.getpid()

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked data worker: the main process stops the run, the worker only gets torn down
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt("interrupted by a second Ctrl-C before the checkpoint")
        self.received = signum  # first: a second Ctrl-C may arrive while the message below is being written
        if signum == signal.SIGINT:
            # os.write: the handler may run while the main thread is inside a print to stderr (progress bar)
            os.write(
                sys.stderr.fileno(),
                b"\nCtrl-C: stopping after this step with a checkpoint (press Ctrl-C again to abort without one)\n",
            )

    def __enter__(self) -> "StopSignal":
        self._pid = os.getpid()
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, device: torch.device) -> int | None:
        """The received signal number, agreed over all ranks (a collective when distributed), or None."""
        if not is_initialized():
            return self.received
        flag = torch.tensor([self.received or 0], device=device)
        value = int(all_reduce_max_(flag)[0])
        return value or None
