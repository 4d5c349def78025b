"""Rank-0 run logging: a JSON-lines metrics file, TensorBoard scalars and a tqdm progress bar.

The progress bar shows images/s and how the wall time splits into waiting for data and computing, so a slow
input pipeline shows up at once. Other ranks get a logger whose methods do nothing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tqdm import tqdm

METRICS_NAME = "metrics.jsonl"


class StepTimer:
    """Accumulates data-wait and compute wall time between log lines."""

    def __init__(self):
        self.data_time = 0.0
        self.compute_time = 0.0
        self.images = 0
        self._mark = time.perf_counter()

    def data_ready(self) -> None:
        now = time.perf_counter()
        self.data_time += now - self._mark
        self._mark = now

    def step_done(self, images: int) -> None:
        now = time.perf_counter()
        self.compute_time += now - self._mark
        self._mark = now
        self.images += images

    def exclude_since_last_mark(self) -> None:
        self._mark = time.perf_counter()

    def summary(self) -> dict:
        """Rates since the last summary; resets the counters."""
        total = self.data_time + self.compute_time
        stats = {
            "img_per_s": self.images / total if total > 0 else 0.0,
            "data_time_s": self.data_time,
            "compute_time_s": self.compute_time,
            "data_fraction": self.data_time / total if total > 0 else 0.0,
        }
        self.data_time = self.compute_time = 0.0
        self.images = 0
        return stats


class RunLogger:
    """Writes metrics as ``{"step": ..., "name": value, ...}`` lines and TensorBoard scalars (main process only)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        total_steps: int,
        tensorboard: bool = True,
        progress: bool = True,
    ):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / METRICS_NAME
        self.total_steps = total_steps
        self.use_tensorboard = tensorboard
        self.use_progress = progress
        self._file = None
        self._writer = None
        self._bar = None

    def open(self, initial_step: int) -> None:
        """Start (or continue, after a resume at ``initial_step``) the metrics file, TensorBoard and the bar."""
        if not self.enabled or self._file is not None:
            return
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(initial_step)
        self._file = open(self.metrics_path, "a", buffering=1)
        if self.use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=initial_step)
        if self.use_progress:
            self._bar = tqdm(total=self.total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` by an earlier attempt of this run, so resumed curves do not overlap."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill; the resumed run rewrites that step
            if record.get("step", -1) <= step:
                kept.append(line)
        self.metrics_path.write_text("".join(f"{line}\n" for line in kept))

    def log(self, step: int, metrics: dict[str, float], *, prefix: str = "train") -> None:
        if not self.enabled:
            return
        self.open(step)
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        if self._writer is not None:
            for name, value in metrics.items():
                self._writer.add_scalar(f"{prefix}/{name}", float(value), step)

    def progress(self, step: int, postfix: dict[str, float]) -> None:
        """Advance the bar to ``step`` and show ``postfix`` (loss, img/s, data share)."""
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        self._bar = self._writer = self._file = None


def read_metrics(path: Path) -> list[dict]:
    """All complete records of a metrics.jsonl file."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
