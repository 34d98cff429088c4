"""The bookkeeping every launcher that starts its items through the scheduler shares, written once:
before a cohort starts, its runs whose teacher did not finish are dropped (blocked, or deferred when the
teacher is running elsewhere); a part that starts is recorded (which part trains each run); a part that
ends settles its runs' outcomes and frees its students; a part whose process died fails its runs in MLflow;
runs that never started say why. The launcher only moves parts to its workers and results back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from orchestrator.launch.items import LaunchContext, WorkItem
from orchestrator.launch.outcome import Outcome, blocked_by
from orchestrator.launch.scheduler import Scheduler
from orchestrator.launch.worker import mark_abandoned


def runnable(item: WorkItem, outcomes: dict[str, Outcome], names: dict[str, str] | None = None) -> WorkItem | None:
    """The part of `item` whose deps all finished; its other runs get a blocked or deferred outcome."""
    ok = []
    for r in item.runs:
        why = blocked_by(r, outcomes, names)
        if why:
            outcomes[r.hash] = why
        else:
            ok.append(r)
    return replace(item, runs=ok) if ok else None


class Dispatch:
    def __init__(self, items: Sequence[WorkItem], ctx: LaunchContext, outcomes: dict[str, Outcome], view, workers: int):
        self.scheduler = Scheduler(items, workers, rates=ctx.rates, mode=ctx.schedule)
        self.ctx, self.outcomes, self.view = ctx, outcomes, view
        self.names = ctx.names
        self.pruned: set[str] = set()

    @property
    def pending(self) -> bool:
        """Runs are left that have not started."""
        s = self.scheduler
        return any(s.left[g] for g in s.order if g not in s.ended)

    def prune_ready(self) -> None:
        """Groups whose deps have all ended lose the runs whose teacher did not finish (once per group)."""
        s = self.scheduler
        for gid in s.order:
            if gid in s.ended or gid in self.pruned or not s.ready(gid):
                continue
            self.pruned.add(gid)
            s.prune(gid, lambda part: runnable(part, self.outcomes, self.names))
            for h in s.groups[gid].hashes:
                if h in self.outcomes:
                    self.view.set_state(h, self.outcomes[h])

    def assign(self, idle: Sequence[int], busy: dict[int, str]) -> list[tuple[int, WorkItem]]:
        """(worker, part) to start now on the idle workers, recorded as started."""
        self.prune_ready()
        chosen = self.scheduler.assign(sorted(idle), busy, progress=self.view.progress)
        for _, part in chosen:
            self._started(part)
        return chosen

    def start_all(self) -> tuple[list[WorkItem], float]:
        """Every part of these items at once, recorded as started, and the estimated makespan."""
        self.prune_ready()
        parts, span = self.scheduler.start_all()
        for part in parts:
            self._started(part)
        return parts, span

    def eta(self, busy: dict[int, str]) -> float:
        return self.scheduler.eta(time.monotonic(), busy, progress=self.view.progress)

    def _started(self, part: WorkItem) -> None:
        for h in part.hashes:
            self.ctx.item_of[h] = part.id
            self.view.set_item(h, part.id)

    def ended(self, part: WorkItem, results: dict[str, Outcome]) -> None:
        """A part ended with results for its runs."""
        for h, o in results.items():
            self.outcomes[h] = o
            self.view.set_state(h, o)
        self.scheduler.finish(part.id)

    def died(self, part: WorkItem, reason: str) -> None:
        """A part's process ended without results: its runs fail, in MLflow too."""
        mark_abandoned(self.ctx, part.hashes, reason)
        for h in part.hashes:
            self.outcomes.setdefault(h, Outcome("failed", reason))
            self.view.set_state(h, self.outcomes[h])
        self.scheduler.finish(part.id, counted=False)  # its wall time says nothing of the estimates

    def never_started(self) -> None:
        """Runs left over (their teacher's whole group failed): blocked, with why."""
        s = self.scheduler
        for gid in s.order:
            for r in s.left[gid]:
                self.outcomes.setdefault(
                    r.hash, blocked_by(r, self.outcomes, self.names) or Outcome("blocked", "never started")
                )
