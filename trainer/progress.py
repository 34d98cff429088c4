"""A terminal progress view for `kdgrid train`: one bar per run of the cohort (rich)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichProgress:
    """An engine callback (see trainer.engine.Callback) drawing a bar per run, with its last metrics."""

    def __init__(self) -> None:
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
