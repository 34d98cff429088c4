"""The launchers' live view: one row per run with its state, epoch, accuracy and ETA.

Fed by the training processes' events (launch/events.py) and by the launcher's outcomes (`set_state`:
queued, running, submitted, blocked, skipped, ...). On a terminal it is a rich Live table; elsewhere (CI
logs, a detached launch) it prints one line per state change and per epoch. The launcher also gives it the
grid's ETA (`set_eta`, from the scheduler's estimates): in the table's title, and as a line of its own in a
log whenever the estimate is renewed (an item ended).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.launch.events import EpochEnded, RunEnded, RunEvent, RunProgress, RunStarted
from orchestrator.launch.outcome import Outcome

STYLE = {
    "queued": "dim",
    "submitted": "dim",
    "running": "cyan",
    "finished": "green",
    "skipped": "green",
    "failed": "bold red",
    "blocked": "red",
    "running elsewhere": "yellow",
    "deferred": "yellow",
}


@dataclass
class Row:
    name: str
    item: str
    state: str = "queued"
    detail: str = ""
    epoch: int = 0  # epochs done
    epochs: int = 0
    steps: int = 0
    step: int = 0
    step_time: float | None = None
    eval_time: float = 0.0
    top1: float | None = None
    best: float | None = None
    loss: float | None = None
    seen: dict = field(default_factory=dict)

    def eta(self) -> float | None:
        if self.state != "running" or self.step_time is None or not self.steps:
            return None
        left_steps = max(0, (self.epochs - self.epoch) * self.steps - self.step)
        return left_steps * self.step_time + (self.epochs - self.epoch) * self.eval_time


def _fmt_time(s: float | None) -> str:
    if s is None:
        return ""
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class RunView:
    def __init__(self, runs, item_of: dict[str, str], console: Console | None = None, title: str = "kdgrid"):
        self.console = console or Console()
        self.rows = {
            r.hash: Row(
                name=r.spec.name or r.spec.student.name, item=item_of.get(r.hash, ""), epochs=r.spec.recipe.epochs
            )
            for r in runs
        }
        self.title = title
        self.live: Live | None = None
        self.t0 = time.monotonic()
        self.eta_at: float | None = None  # monotonic time the grid should be done

    # ---- display --------------------------------------------------------------------------------
    def __enter__(self) -> RunView:
        if self.console.is_terminal:
            self.live = Live(self, console=self.console, refresh_per_second=2, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _line(self, h: str, text: str) -> None:
        if self.live is None:
            r = self.rows[h]
            self.console.print(
                f"[{_fmt_time(time.monotonic() - self.t0)}] {h[:8]} {r.name} ({r.item}): {text}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    def __rich__(self) -> Table:
        counts: dict[str, int] = {}
        for r in self.rows.values():
            counts[r.state] = counts.get(r.state, 0) + 1
        eta = "" if self.eta_at is None else f" - grid ETA {_fmt_time(max(0.0, self.eta_at - time.monotonic()))}"
        t = Table(
            title=f"{self.title} - " + ", ".join(f"{n} {s}" for s, n in counts.items()) + eta,
            title_justify="left",
            expand=False,
        )
        for col in ("run", "name", "item", "state", "epoch", "top1", "best", "loss", "ETA"):
            t.add_column(
                col,
                justify="right" if col in ("epoch", "top1", "best", "loss", "ETA") else "left",
                no_wrap=col != "state",
                overflow="fold",
            )
        for h, r in self.rows.items():
            ep = (
                f"{r.epoch}/{r.epochs}"
                if not (r.state == "running" and r.steps)
                else f"{r.epoch}/{r.epochs} {100 * r.step // r.steps}%"
            )
            state = r.state + (f": {r.detail}" if r.detail and r.state in ("failed", "blocked") else "")
            t.add_row(
                h[:8],
                r.name,
                r.item,
                f"[{STYLE.get(r.state, '')}]{state}[/]",
                ep,
                "" if r.top1 is None else f"{r.top1:.2f}",
                "" if r.best is None else f"{r.best:.2f}",
                "" if r.loss is None else f"{r.loss:.3f}",
                _fmt_time(r.eta()),
            )
        return t

    # ---- updates --------------------------------------------------------------------------------
    def set_item(self, h: str, item: str) -> None:
        if h in self.rows:
            self.rows[h].item = item

    def set_eta(self, seconds: float, running: int = 0) -> None:
        """The whole grid's remaining time, as estimated now."""
        self.eta_at = time.monotonic() + max(0.0, seconds)
        if self.live is None:
            done = sum(r.state in ("finished", "skipped", "failed", "blocked") for r in self.rows.values())
            finish = time.strftime("%H:%M:%S", time.localtime(time.time() + max(0.0, seconds)))
            self.console.print(
                f"[{_fmt_time(time.monotonic() - self.t0)}] grid: {done}/{len(self.rows)} runs "
                f"ended, {running} item(s) training, ETA {_fmt_time(seconds)} (about {finish})",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    def progress(self, hashes) -> float | None:
        """Fraction of these runs' steps done (None before any of them reported steps)."""
        rows = [self.rows[h] for h in hashes if h in self.rows]
        if not rows or not any(r.steps for r in rows):
            return None
        done = sum(
            1.0
            if r.state in ("finished", "failed")
            else (r.epoch * r.steps + r.step) / max(1, r.epochs * r.steps)
            if r.steps
            else 0.0
            for r in rows
        )
        return min(1.0, done / len(rows))

    def set_state(self, h: str, outcome: Outcome, quiet: bool = False) -> None:
        r = self.rows.get(h)
        if r is None or (r.state, r.detail) == (outcome.kind, outcome.detail):
            return
        r.state, r.detail = outcome.kind, outcome.detail
        if outcome.kind in ("finished", "skipped"):
            r.step, r.epoch = 0, r.epochs
        if not quiet:
            self._line(h, str(outcome))

    def handle(self, event: RunEvent) -> None:
        r = self.rows.get(event.run)
        if r is None:
            return
        if isinstance(event, RunStarted):
            r.epoch, r.steps, r.epochs, r.step = event.start_epoch, event.steps, event.epochs, 0
            self.set_state(event.run, Outcome("running"), quiet=True)
            resumed = " (resumed)" if event.start_epoch else ""
            self._line(event.run, f"running from epoch {event.start_epoch}/{event.epochs}{resumed}")
        elif isinstance(event, RunProgress):
            r.epoch, r.step = event.epoch, event.step
            r.loss = event.metrics.get("loss", r.loss)
            r.step_time = event.metrics.get("step_time_s", r.step_time)
        elif isinstance(event, EpochEnded):
            self._epoch(event.run, r, event)
        elif isinstance(event, RunEnded):
            self.set_state(event.run, event.outcome)

    def _epoch(self, h: str, r: Row, event: EpochEnded) -> None:
        m = event.metrics
        r.epoch, r.step = event.epoch + 1, 0
        r.top1, r.best = m.get("val.top1", r.top1), m.get("val.best_top1", r.best)
        r.loss, r.eval_time = m.get("train.loss", r.loss), m.get("eval_time_s", r.eval_time)
        if r.top1 is not None and r.loss is not None:
            self._line(h, f"epoch {r.epoch}/{r.epochs} top1 {r.top1:.2f} loss {r.loss:.3f}")
        else:
            self._line(h, f"epoch {r.epoch}/{r.epochs}")
