"""SIGTERM / SIGUSR1 -> checkpoint, then exit.

Cluster schedulers (SLURM pre-emption, Kubernetes, torchrun's own shutdown) send SIGTERM or SIGUSR1 before they
kill a job. The handler only sets a flag; the step loop sees it at the next step boundary, writes ``last.pth``
and leaves with :class:`StopRequested`, so a restart resumes from exactly that step.
"""
from __future__ import annotations

import signal
from typing import Optional

import torch

from .distributed import all_reduce_max_, is_initialized

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequested(Exception):
    """Raised by the loop after it checkpointed on a stop signal; ``exit_code`` = 128 + signal number."""

    def __init__(self, signum: int, step: int):
        self.signum = signum
        self.step = step
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint written")


class StopSignal:
    """Context manager installing the handlers; restores the previous ones on exit."""

    def __init__(self, signals=HANDLED_SIGNALS):
        self.signals = tuple(signals)
        self.received: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> "StopSignal":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, device: torch.device) -> Optional[int]:
        """The received signal number, agreed over all ranks (a collective when distributed), or None."""
        if not is_initialized():
            return self.received
        flag = torch.tensor([self.received or 0], device=device)
        value = int(all_reduce_max_(flag)[0])
        return value or None
