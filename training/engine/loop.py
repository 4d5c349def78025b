"""The step loop shared by pretraining and fine-tuning.

A trainer hands :class:`Trainer` a module whose ``forward(batch)`` returns a dict with a scalar ``"loss"`` (plus any
other scalar tensors to log), an optimizer, a learning-rate function of the global step and a way to iterate one
epoch from a given batch. The loop owns everything else: device transfer, autocast, backward with scaling and
clipping, the post-step hook (EMA), the non-finite guard, logging, checkpoints, auto-resume and stop signals.

Nothing in the per-step path reads a tensor on the host; the guard, the averages for logging and the stop flag are
looked at only on log/checkpoint boundaries.
"""

from __future__ import annotations

import bisect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

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
)
from training.engine.logger import RunLogger, StepTimer
from training.engine.numerics import NonFiniteGuard, autocast, group_gradient_norms, optimizer_step
from training.engine.optim import set_lr
from training.engine.signals import StopRequested, StopSignal


@dataclass
class LoopConfig:
    total_steps: int
    epoch_lengths: list[int]  # steps of each epoch, in order (all stages of a sequential run)
    amp: str = "none"
    clip_grad_norm: float = 0.0
    channels_last: bool = False
    log_every: int = 20
    checkpoint_every: int = 500
    snapshot_every: int = 0  # 0 = a snapshot at the end of every epoch
    keep_snapshots: int = 3
    probe_every: int = 0  # steps between learning-dynamics probes (0 = never); also at step 0


class EpochSchedule:
    """Maps a global step to (epoch, batch offset inside the epoch) from the list of epoch lengths."""

    def __init__(self, epoch_lengths: list[int]):
        if not epoch_lengths or min(epoch_lengths) <= 0:
            raise ValueError(f"every epoch needs at least one step, got lengths {epoch_lengths}")
        self.starts = [0]
        for length in epoch_lengths:
            self.starts.append(self.starts[-1] + length)

    @property
    def total_steps(self) -> int:
        return self.starts[-1]

    def locate(self, step: int) -> tuple[int, int]:
        epoch = bisect.bisect_right(self.starts, step) - 1
        return epoch, step - self.starts[epoch]

    def epochs_completed(self, step: int) -> int:
        """Whole epochs done after ``step`` steps."""
        return bisect.bisect_right(self.starts, step) - 1

    def is_epoch_end(self, step: int) -> bool:
        """True when ``step`` steps complete an epoch."""
        return step in self.starts[1:]


def move_batch(batch: dict, device: torch.device, channels_last: bool) -> dict:
    """Move a collated sample dict to ``device``; 4-D float tensors (images) optionally to channels_last."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.ndim == 4 and value.is_floating_point():
                value = value.contiguous(memory_format=torch.channels_last)
        moved[key] = value
    return moved


class Trainer:
    """Runs ``forward -> loss -> backward -> step -> after_step`` with checkpoints, resume, logging and guards.

    ``module`` is the unwrapped model (its ``state_dict`` is checkpointed); ``model`` is what is called (the same
    module, or a DDP/compiled wrapper of it). ``iterate_epoch(epoch, skip)`` returns the batches of ``epoch``
    without its first ``skip`` batches, deterministically, so a resumed run sees the same data as an uninterrupted
    one. ``checkpoint_extras()`` returns the run-specific entries of the checkpoint (kind, arch, config, ...).
    ``counters()`` gives this process's running counts (``skipped_samples``), logged summed over ranks.
    ``after_step(step)`` runs after each optimizer step (EMA); ``after_checkpoint(step)`` after the step's checkpoint
    (if one is due) is written, so work such as validation never runs ahead of the last saved state.
    """

    def __init__(
        self,
        *,
        module: nn.Module,
        model: Callable[[dict], dict],
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        lr_at: Callable[[int], float],
        iterate_epoch: Callable[[int, int], Iterator[dict]],
        config: LoopConfig,
        run_dir: Path,
        dist_info: distributed.DistInfo,
        checkpoint_extras: Callable[[], dict],
        after_step: Callable[[int], None] | None = None,
        after_checkpoint: Callable[[int], None] | None = None,
        logger: RunLogger | None = None,
        probe: Callable[[int], dict] | None = None,
        gradient_groups: dict[str, list[nn.Parameter]] | None = None,
        counters: Callable[[], dict[str, float]] | None = None,
    ):
        self.module = module
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.lr_at = lr_at
        self.iterate_epoch = iterate_epoch
        self.config = config
        self.run_dir = Path(run_dir)
        self.dist = dist_info
        self.checkpoint_extras = checkpoint_extras
        self.after_step = after_step
        self.after_checkpoint = after_checkpoint
        self.schedule = EpochSchedule(config.epoch_lengths)
        if config.total_steps > self.schedule.total_steps:
            raise ValueError(
                f"total_steps={config.total_steps} exceeds the {self.schedule.total_steps} steps of the epochs"
            )
        self.checkpoints = CheckpointManager(self.run_dir, config.keep_snapshots)
        self.logger = logger
        self.step = 0
        self._term_names: list[str] | None = None
        self._guard: NonFiniteGuard | None = None
        self._term_sums: torch.Tensor | None = None
        self._terms_seen = 0
        self.probe = probe
        self.gradient_groups = gradient_groups or {}
        self._gradient_norms: dict[str, float] = {}
        self.counters = counters

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        rng = capture_rng_state()
        rng_per_rank = distributed.all_gather_object(rng)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **self.checkpoint_extras(),
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": self.step,
            "epoch": self.schedule.locate(min(self.step, self.schedule.total_steps - 1))[0],
            "progress": self.progress(),
            "rng": rng,
            "rng_per_rank": rng_per_rank,
        }

    def progress(self) -> dict:
        """How much of the schedule ran: what an export reads to say whether the recipe was completed.

        ``schedule_steps`` / ``schedule_epochs`` are the full schedule of the configured epochs; ``run_steps`` is
        where this run stops (smaller when ``max_steps`` caps it).
        """
        return {
            "steps_done": self.step,
            "epochs_completed": self.schedule.epochs_completed(self.step),
            "run_steps": self.config.total_steps,
            "schedule_steps": self.schedule.total_steps,
            "schedule_epochs": len(self.config.epoch_lengths),
        }

    def save(self, *, snapshot: bool = False) -> Path:
        """Write ``last.pth`` (and a snapshot) on the main process; every rank must call it (RNG gather)."""
        state = self.state_dict()
        if self.dist.is_main:
            self.checkpoints.save(state, snapshot=snapshot)
        distributed.barrier()
        return self.checkpoints.last_path

    def resume(self, path: Path | None = None, *, expected: dict | None = None) -> int:
        """Load ``path`` (default: ``last.pth`` of the run folder if present) and return the step to continue from.

        ``expected`` entries (e.g. ``{"kind": "pretrain", "arch": "resnet50"}``) must match the checkpoint.
        """
        path = path or self.checkpoints.resume_path()
        if path is None:
            return 0
        state = load_checkpoint(path, map_location="cpu")
        check_compatible(state, path=path, expected=expected or {})
        try:
            self.module.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"{path} does not fit this model/optimizer: {error}") from error
        if self.scaler.is_enabled() and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) == self.dist.world_size:
            restore_rng_state(per_rank[self.dist.rank])
        else:
            # The world size changed (elastic resume on another number of GPUs): the old ranks' streams do not
            # map onto the new ones. Every rank derives a fresh, distinct and reproducible stream (torch, numpy,
            # python and its CUDA device) from the checkpoint's rank-0 state instead.
            warnings.warn(
                f"{path} was written by {len(per_rank)} process(es), this run has {self.dist.world_size}: random "
                "streams are derived afresh per rank from rank 0's, so random draws differ from an uninterrupted run",
                RuntimeWarning,
                stacklevel=2,
            )
            restore_rng_state({**state["rng"], "cuda": []})  # the CUDA streams are reseeded below
            distributed.seed_everything(int(torch.randint(0, 2**31, ())), self.dist.rank)
        self.step = int(state["step"])
        if self.step > self.config.total_steps:
            raise CheckpointError(f"{path} is at step {self.step}, beyond this run's {self.config.total_steps} steps")
        return self.step

    # ------------------------------------------------------------ the loop

    def _record_terms(self, out: dict) -> None:
        if "loss" not in out:
            raise KeyError(f"the model's output has no 'loss' entry (keys: {sorted(out)})")
        if self._term_names is None:
            names = ["loss"] + sorted(k for k, v in out.items() if k != "loss" and _is_scalar(v))
            self._term_names = names
            self._guard = NonFiniteGuard(names, self.dist.device)
            self._term_sums = torch.zeros(len(names), dtype=torch.float64, device=self.dist.device)
        try:
            terms = torch.stack([out[name].detach().float() for name in self._term_names])
        except KeyError as error:
            raise KeyError(f"the model's output lost the term {error} it returned at the first step") from None
        self._guard.update(self.step, terms)
        self._term_sums += terms
        self._terms_seen += 1

    def _measure_gradients(self) -> None:
        """Gradient norm of each named parameter group (one host sync; only on the step before a log)."""
        self._gradient_norms = group_gradient_norms(self.gradient_groups)

    def _probe_due(self, step: int) -> bool:
        every = self.config.probe_every
        return self.probe is not None and every > 0 and (step % every == 0 or step == self.config.total_steps)

    def _log(self, timer: StepTimer, extra: dict | None = None) -> None:
        # Averaged over ranks as well, so the logged loss is the global batch's (one small all_reduce per log).
        sums = distributed.all_reduce_sum_(self._term_sums.clone()) / self.dist.world_size
        averages = (sums / max(1, self._terms_seen)).tolist()
        self._term_sums.zero_()
        self._terms_seen = 0
        metrics = dict(zip(self._term_names, averages))
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics.update(timer.summary())
        metrics["img_per_s"] *= self.dist.world_size
        metrics.update(self._gradient_norms)
        self._gradient_norms = {}
        metrics.update(self._counted())
        metrics.update(extra or {})
        if self.logger is not None:
            self.logger.log(self.step, metrics)
            self.logger.progress(
                self.step,
                {"loss": metrics["loss"], "img/s": metrics["img_per_s"], "data": metrics["data_fraction"]},
            )

    def _counted(self) -> dict[str, float]:
        """``counters()`` summed over ranks (one small all_reduce, at log time only)."""
        if self.counters is None:
            return {}
        counts = self.counters()
        totals = distributed.all_reduce_sum_(torch.tensor(list(counts.values()), dtype=torch.float64))
        return dict(zip(counts, totals.tolist()))

    def _checkpoint_due(self, step: int) -> tuple[bool, bool]:
        cfg = self.config
        end = step == cfg.total_steps
        epoch_end = self.schedule.is_epoch_end(step)
        snapshot = (step % cfg.snapshot_every == 0) if cfg.snapshot_every > 0 else epoch_end
        save = end or epoch_end or snapshot or (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0)
        return save, snapshot or end

    def run(self) -> int:
        """Train from ``self.step`` to ``total_steps``. Returns the final step.

        Raises :class:`StopRequested` after checkpointing when SIGTERM/SIGUSR1 arrived, and
        :class:`~training.engine.numerics.NonFiniteLossError` (without overwriting the last good checkpoint).
        """
        cfg = self.config
        parameters = [p for p in self.module.parameters() if p.requires_grad]
        timer = StepTimer()
        if self.logger is not None:
            self.logger.open(self.step)
        if self.step == 0 and self._probe_due(0) and self.logger is not None:
            self.logger.log(0, self.probe(0))  # the random-init reference every later probe compares with
        with StopSignal() as stop:
            while self.step < cfg.total_steps:
                epoch, skip = self.schedule.locate(self.step)
                epoch_start = self.step - skip
                for batch in self.iterate_epoch(epoch, skip):
                    timer.data_ready()
                    self._train_step(batch, parameters, timer)
                    self._after_step(timer, stop)
                    if self.step >= cfg.total_steps or self.schedule.is_epoch_end(self.step):
                        break
                else:
                    if self.step < cfg.total_steps:
                        expected = cfg.epoch_lengths[epoch]
                        raise RuntimeError(
                            f"epoch {epoch} ended after {self.step - epoch_start} batches but the schedule expects "
                            f"{expected}; the data iterator and epoch_lengths disagree"
                        )
        skipped = self._counted().get("skipped_samples", 0)
        if skipped and self.logger is not None:
            self.logger.message(
                f"skipped {int(skipped)} bad samples over the run (data.skip_bad_samples): each is named in the "
                "warnings above, and metrics.jsonl counts them at every log step (skipped_samples)"
            )
        return self.step

    def _train_step(self, batch: dict, parameters: list[torch.nn.Parameter], timer: StepTimer) -> None:
        """Forward, backward and optimizer step on one batch; advances ``self.step``."""
        cfg = self.config
        batch = move_batch(batch, self.dist.device, cfg.channels_last)
        set_lr(self.optimizer, self.lr_at(self.step))
        with autocast(cfg.amp, self.dist.device):
            out = self.model(batch)
        self._record_terms(out)
        before_log = (self.step + 1) % cfg.log_every == 0 or self.step + 1 == cfg.total_steps
        optimizer_step(
            out["loss"],
            self.optimizer,
            self.scaler,
            parameters,
            cfg.clip_grad_norm,
            self._measure_gradients if before_log and self.gradient_groups else None,
        )
        if self.after_step is not None:
            self.after_step(self.step)
        self.step += 1
        timer.step_done(int(batch["image"].shape[0]))

    def _after_step(self, timer: StepTimer, stop: StopSignal) -> None:
        """Guard, probe, log and checkpoint when due; checkpoint and raise :class:`StopRequested` on a signal."""
        cfg = self.config
        boundary = self.step % cfg.log_every == 0 or self.step == cfg.total_steps
        save, snapshot = self._checkpoint_due(self.step)
        if boundary or save:
            self._guard.check(checkpoint=str(self.checkpoints.resume_path() or "none"))
        probed = self.probe(self.step) if self._probe_due(self.step) else None
        if probed is not None:
            timer.exclude_since_last_mark()  # probing is neither data nor training compute
        if boundary:
            self._log(timer, probed)
        elif probed is not None and self.logger is not None:
            self.logger.log(self.step, probed)
        if save:
            self.save(snapshot=snapshot)
        if self.after_checkpoint is not None:
            self.after_checkpoint(self.step)
        if save or self.after_checkpoint is not None:
            timer.exclude_since_last_mark()  # checkpoint I/O and validation are neither data nor compute
        # One-process runs look at the flag every step (free); distributed runs agree on it at log
        # boundaries, because stopping must happen at the same step on every rank.
        if boundary or not self.dist.distributed:
            signum = stop.agreed(self.dist.device)
            if signum:
                self._guard.check(checkpoint=str(self.checkpoints.resume_path() or "none"))
                if not save:
                    self.save()
                raise StopRequested(signum, self.step)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 0 and value.is_floating_point()
