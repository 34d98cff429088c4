"""How a run is doing while it trains, as engine callbacks (trainer.engine.Callback): `LogLines`, a line per
report for logs (a worker's log under kdgrid_runs/logs/, a Slurm job's, `kdgrid train SPEC | tee`), and
`RichProgress`, a bar per run for a terminal.

The engine reports every `recipe.log_every` optimizer steps, or after `interval_s()` seconds
(KDGRID_PROGRESS_S, default 30; 0: steps only) if that comes first, and at an epoch's last step. A line
reads as DeiT's MetricLogger's does:

    2026-01-05 14:03:12 3f9c1a2b epoch 1/3 step 40/156 loss 2.3012 (ce 1.9410 manifold 0.3602) lr 1.00e-03 \
images/s 512 eta 0:00:45 run eta 0:03:10

(`eta`: the epoch's training steps left; `run eta`: the run's, its evaluations included, at the pace so far).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta

PROGRESS_ENV = "KDGRID_PROGRESS_S"
DEFAULT_S = 30.0
NOT_TERMS = ("loss", "lr", "step_time_s", "images_per_s")  # what a report carries besides the loss terms


def interval_s(environ=None) -> float:
    """Seconds between reports when `recipe.log_every` steps take longer (KDGRID_PROGRESS_S; 0 or less:
    never, steps only)."""
    value = (os.environ if environ is None else environ).get(PROGRESS_ENV, "").strip()
    seconds = float(value) if value else DEFAULT_S
    return seconds if seconds > 0 else math.inf


def clock(seconds: float) -> str:
    """0:01:05, as DeiT prints an ETA (whole seconds; '?' before there is a pace to go by)."""
    return str(timedelta(seconds=round(seconds))) if math.isfinite(seconds) and seconds >= 0 else "?"


def progress_line(run: str, epoch: int, epochs: int, step: int, steps: int, metrics: dict, eta: float, run_eta: float):
    """One report of a run (epoch 0-based, step 1-based), as a log line without its time stamp."""
    terms = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k not in NOT_TERMS)
    parts = [f"{run} epoch {epoch + 1}/{epochs} step {step}/{steps}"]
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.4f}" + (f" ({terms})" if terms else ""))
    if "lr" in metrics:
        parts.append(f"lr {metrics['lr']:.2e}")
    if "images_per_s" in metrics:
        parts.append(f"images/s {metrics['images_per_s']:.0f}")
    parts.append(f"eta {clock(eta)} run eta {clock(run_eta)}")
    return " ".join(parts)


@dataclass
class _Run:
    epochs: int
    steps: int
    start_epoch: int
    t0: float = field(default_factory=time.monotonic)

    def etas(self, epoch: int, step: int, step_time_s: float | None) -> tuple[float, float]:
        """(the epoch's steps left, the run's), at this epoch's pace and at the run's so far."""
        done = (epoch - self.start_epoch) * self.steps + step  # steps trained by this process
        left = self.epochs * self.steps - (epoch * self.steps + step)
        per_step = (time.monotonic() - self.t0) / done if done > 0 else math.nan
        eta = (self.steps - step) * (step_time_s if step_time_s is not None else per_step)
        return eta, left * per_step


class LogLines:
    """An engine callback that prints how each run is doing, a line at a time, flushed: for logs and pipes."""

    def __init__(self, out=None) -> None:
        self.out = out  # a text stream; None: this process's stdout at the time (a worker redirects it)
        self.runs: dict[str, _Run] = {}

    def _print(self, text: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", file=self.out or sys.stdout, flush=True)

    def on_start(self, run_hash, spec, start_epoch, steps) -> None:
        self.runs[run_hash] = _Run(spec.recipe.epochs, steps, start_epoch)
        resumed = f", resumed after epoch {start_epoch}" if start_epoch else ""
        self._print(
            f"{run_hash[:8]} start {spec.name or spec.student.name}: {spec.recipe.epochs} epoch(s) of {steps} "
            f"step(s){resumed}"
        )

    def on_progress(self, run_hash, epoch, step, metrics) -> None:
        r = self.runs[run_hash]
        eta, run_eta = r.etas(epoch, step, metrics.get("step_time_s"))
        self._print(progress_line(run_hash[:8], epoch, r.epochs, step, r.steps, metrics, eta, run_eta))

    def on_epoch(self, run_hash, epoch, metrics) -> None:
        r = self.runs[run_hash]
        _, run_eta = r.etas(epoch + 1, 0, None)
        self._print(
            f"{run_hash[:8]} epoch {epoch + 1}/{r.epochs} done: val top1 {metrics['val.top1']:.2f} "
            f"(best {metrics['val.best_top1']:.2f}) train loss {metrics.get('train.loss', math.nan):.4f} "
            f"run eta {clock(run_eta)}"
        )

    def on_end(self, run_hash, status, reason) -> None:
        self._print(f"{run_hash[:8]} {status}" + (f": {reason}" if reason else ""))


class RichProgress:
    """An engine callback (see trainer.engine.Callback) drawing a bar per run, with its last metrics."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.tasks: dict[str, int] = {}
        self.steps: dict[str, int] = {}

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def on_start(self, run_hash, spec, start_epoch, steps) -> None:
        self.steps[run_hash] = steps
        name = spec.name or spec.student.name
        self.tasks[run_hash] = self.progress.add_task(
            f"{run_hash[:8]} {name}",
            total=spec.recipe.epochs * steps,
            completed=start_epoch * steps,
            info=f"epoch {start_epoch}/{spec.recipe.epochs}",
        )

    def on_progress(self, run_hash, epoch, step, metrics) -> None:
        task = self.tasks[run_hash]
        self.progress.update(
            task,
            completed=epoch * self.steps[run_hash] + step,
            info=f"epoch {epoch + 1} loss {metrics.get('loss', float('nan')):.3f}",
        )

    def on_epoch(self, run_hash, epoch, metrics) -> None:
        self.progress.update(
            self.tasks[run_hash],
            info=f"epoch {epoch + 1} top1 {metrics['val.top1']:.2f} (best {metrics['val.best_top1']:.2f})",
        )

    def on_end(self, run_hash, status, reason) -> None:
        self.progress.update(self.tasks[run_hash], info=status if not reason else f"{status}: {reason}")
