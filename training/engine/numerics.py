"""Mixed precision, gradient clipping and the non-finite loss guard.

The guard keeps everything on the device: each step folds "is any loss term non-finite" into two small tensors
(first bad step, which terms), and the host looks at them only at log/checkpoint boundaries. A checkpoint is never
written after a non-finite step, so ``last.pth`` always holds the last good state.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch

from mdp_hub.errors import UserError
from training.engine.distributed import all_reduce_max_

AMP_MODES = ("none", "bf16", "fp16")


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN/Inf loss; carries the step and the offending terms."""

    exit_code = 1  # the run failed, its input may be fine

    def __init__(self, step: int, terms: list[str], checkpoint: str | None = None):
        self.step = step
        self.terms = terms
        where = f"; the last good checkpoint is {checkpoint}" if checkpoint else ""
        super().__init__(f"non-finite loss at step {step} in term(s) {', '.join(terms)}{where}")


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for ``amp`` ("none" | "bf16" | "fp16") on ``device``."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp 'fp16' needs a CUDA device; use 'bf16' or 'none' on CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is only enabled for fp16 (bf16 and fp32 need no loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    parameters: Iterable[torch.nn.Parameter],
    clip_grad_norm: float = 0.0,
    inspect_gradients: Callable[[], None] | None = None,
) -> torch.Tensor | None:
    """backward -> (unscale -> inspect -> clip) -> step -> scaler update. Returns the pre-clip norm when clipping.

    ``inspect_gradients`` (optional) sees the true, unclipped gradients before the step.
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    grad_norm = None
    if inspect_gradients is not None or clip_grad_norm > 0:
        scaler.unscale_(optimizer)  # inspect and clip the true gradients, not the scaled ones
    if inspect_gradients is not None:
        inspect_gradients()
    if clip_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return grad_norm


def group_gradient_norms(groups: dict[str, list[torch.nn.Parameter]]) -> dict[str, float]:
    """``{"grad_norm_<name>": L2 norm of the group's gradients}`` (0 without gradients); one host sync."""
    norms = {}
    for name, parameters in groups.items():
        grads = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
        norms[f"grad_norm_{name}"] = float(torch.stack(grads).norm()) if grads else 0.0
    return norms


class NonFiniteGuard:
    """Device-side record of the first step at which any of the named loss terms was NaN/Inf."""

    def __init__(self, term_names: list[str], device: torch.device):
        self.term_names = list(term_names)
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_terms = torch.zeros(len(term_names), dtype=torch.bool, device=device)

    def update(self, step: int, terms: torch.Tensor) -> None:
        """``terms``: ``[T]`` detached loss terms of this step, in ``term_names`` order."""
        bad = ~torch.isfinite(terms)
        first = (self.first_bad_step < 0) & bad.any()
        self.first_bad_step = torch.where(first, torch.full_like(self.first_bad_step, step), self.first_bad_step)
        self.bad_terms = torch.where(first, bad, self.bad_terms)

    def check(self, checkpoint: str | None = None) -> None:
        """Host sync: raise :class:`NonFiniteLossError` if a non-finite step was seen on any rank.

        Every rank must call this at the same step (it is a collective under torch.distributed), so that all
        ranks stop together instead of leaving the others waiting in the next all_reduce.
        """
        summary = all_reduce_max_(torch.cat([self.first_bad_step.view(1), self.bad_terms.long()]))
        step, *flags = summary.tolist()
        if step >= 0:
            names = [n for n, is_bad in zip(self.term_names, flags) if is_bad]
            raise NonFiniteLossError(step, names, checkpoint)
