"""The launchers' side of cost-aware scheduling: estimates for the items, what to start now, the grid's ETA.

`Scheduler` holds the work items (cohorts, already capped by `max_cohort` and memory), prices their runs
with `costs` (rates calibrated on the store), and asks `schedule.place` what each idle worker should train:
it is asked again whenever an item ends, so a cohort whose teacher just finished is cut over the workers
that are free then (and those about to be), by cost. Estimates are CPU-seconds; a factor learnt from the
items that ended (their wall time over their estimate) turns them into wall seconds, so the ETA follows
the machine as it is (a loaded machine, a slower model than the store knew).

With `mode="order"` items start in plan order, whole, each on the first idle worker once its deps ended
(items then come from `work_items` with its count-based balancing).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from orchestrator.launch import costs, schedule
from orchestrator.launch.items import WorkItem
from orchestrator.launch.options import schedule_name


@dataclass
class _Part:
    item: WorkItem
    group: str
    started: float
    estimate: float  # CPU-seconds


class Scheduler:
    def __init__(
        self,
        items: Sequence[WorkItem],
        workers: int,
        rates: dict[str, float] | None = None,
        mode: str = "cost",
        lookahead: int = 1,
    ):
        self.mode, self.workers, self.lookahead = schedule_name(mode), workers, lookahead
        self.rates = rates if rates is not None else costs.fit_rates([])
        self.groups = {it.id: it for it in items}
        self.order = [it.id for it in items]
        self.left = {it.id: list(it.runs) for it in items}  # members not started yet
        self.cost = {r.hash: costs.member_cost(r.spec, self.rates) for it in items for r in it.runs}
        self.shared = {it.id: costs.shared_cost([r.spec for r in it.runs], self.rates) for it in items}
        self.holder = {r.hash: it.id for it in items for r in it.runs}
        self.running: dict[str, _Part] = {}
        self.ended: set[str] = set()  # groups with every part ended (or dropped)
        self.ended_runs: set[str] = set()  # deps are per run: a group cut in parts frees each part's students
        self.parts: dict[str, int] = {}
        self.wall, self.est = 0.0, 0.0  # of ended parts: wall seconds and estimated CPU-seconds

    # ---- estimates ------------------------------------------------------------------------------
    @property
    def factor(self) -> float:
        """Wall seconds per estimated CPU-second, from the parts that ended (1 before any)."""
        return min(10.0, max(0.1, self.wall / self.est)) if self.est > 0 and self.wall > 0 else 1.0

    def estimate(self, runs: Sequence, group: str) -> float:
        return self.shared[group] + sum(self.cost[r.hash] for r in runs)

    def _remaining(self, part: _Part, now: float, progress: Callable[[list[str]], float | None] | None) -> float:
        """Wall seconds a running part has left: its estimate, then more and more what its pace so far says."""
        total, elapsed = part.estimate * self.factor, now - part.started
        done = progress(part.item.hashes) if progress else None
        if done is not None and done > 0:
            return max(1.0, (1 - done) * ((1 - done) * total + done * elapsed / done))
        return max(1.0, total - elapsed)  # still running: not over yet, whatever the estimate said

    def _deps(self, gid: str) -> frozenset[str]:
        """What a group waits for: the running parts and the groups that hold its runs' deps."""
        out = set()
        for r in self.left[gid]:
            for d in r.deps:
                if d in self.ended_runs or d not in self.holder:
                    continue
                part = next((pid for pid, p in self.running.items() if d in p.item.hashes), None)
                out.add(part or self.holder[d])
        return frozenset(out)

    def _jobs(self) -> list[schedule.Job]:
        f = self.factor
        jobs = []
        for gid in self.order:
            if gid in self.ended or not self.left[gid]:
                continue
            jobs.append(
                schedule.Job(
                    id=gid,
                    members=tuple((r.hash, self.cost[r.hash] * f) for r in self.left[gid]),
                    shared=self.shared[gid] * f,
                    deps=self._deps(gid),
                    split=self.mode == "cost",
                )
            )
        return jobs

    def _state(self, now: float, busy: dict[int, str], progress) -> tuple[list[int], list[float], dict]:
        wids = sorted(set(range(self.workers)) | set(busy))
        free = [now + self._remaining(self.running[busy[w]], now, progress) if w in busy else now for w in wids]
        done: dict[str, float] = {}
        for pid in self.running:
            w = next(w for w, p in busy.items() if p == pid)
            done[pid] = free[wids.index(w)]
        return wids, free, done

    def eta(self, now: float, busy: dict[int, str], progress=None) -> float:
        """Seconds until the whole grid should be done."""
        wids, free, done = self._state(now, busy, progress)
        jobs = self._jobs()
        if not jobs:
            return max(free) - now
        return schedule.makespan(schedule.place(jobs, free, done, lookahead=self.lookahead), free) - now

    # ---- decisions ------------------------------------------------------------------------------
    def ready(self, gid: str) -> bool:
        return all(d in self.ended_runs or d not in self.holder for r in self.left[gid] for d in r.deps)

    def prune(self, gid: str, keep: Callable[[WorkItem], WorkItem | None]) -> None:
        """Drop the members `keep` rejects (a teacher that did not finish) from a ready group."""
        part = keep(replace(self.groups[gid], runs=list(self.left[gid])))
        kept = {r.hash for r in part.runs} if part is not None else set()
        self.ended_runs |= {r.hash for r in self.left[gid] if r.hash not in kept}  # never to run
        self.left[gid] = [r for r in self.left[gid] if r.hash in kept]
        if not self.left[gid] and not any(p.group == gid for p in self.running.values()):
            self.ended.add(gid)

    def assign(
        self, idle: Sequence[int], busy: dict[int, str], now: float | None = None, progress=None
    ) -> list[tuple[int, WorkItem]]:
        """(worker, part) to start now on the idle workers. Groups must be pruned once ready."""
        now = time.monotonic() if now is None else now
        if self.mode == "order":
            out = []
            free = sorted(idle)
            for gid in self.order:
                if free and self.left[gid] and self.ready(gid) and gid not in self.ended:
                    out.append((free.pop(0), self._start(gid, self.left[gid], now)))
            return out
        wids, free, done = self._state(now, busy, progress)
        jobs = self._jobs()
        if not jobs:
            return []
        placed = schedule.place(jobs, free, done, lookahead=self.lookahead)
        out = []
        for p in sorted(placed, key=lambda p: (p.start, p.worker)):
            w = wids[p.worker]
            # the placement may expect a running teacher to end now: its students start only once it has
            if w in idle and p.start <= now + 1e-6 and w not in {x for x, _ in out} and self.ready(p.job):
                members = [r for r in self.left[p.job] if r.hash in set(p.members)]
                out.append((w, self._start(p.job, members, now)))
        if not out and not busy and any(self.left[g] for g in self.order if self.ready(g)):
            gid = next(g for g in self.order if self.left[g] and self.ready(g))  # never idle everything
            out.append((min(idle), self._start(gid, self.left[gid], now)))
        return out

    def start_all(self, now: float = 0.0) -> tuple[list[WorkItem], float]:
        """Every part at once, in the order the placement starts them, and its makespan: for a launcher
        that hands a whole stage over (Ray Tune starts its trials in the order given)."""
        jobs = self._jobs()
        if not jobs:
            return [], 0.0
        free = [now] * self.workers
        placed = (
            schedule.place(jobs, free, lookahead=self.lookahead)
            if self.mode == "cost"
            else [schedule.Placement(j.id, tuple(m for m, _ in j.members), 0, now, now + j.cost) for j in jobs]
        )
        parts = []
        for p in sorted(placed, key=lambda p: (p.start, p.worker)):
            members = [r for r in self.left[p.job] if r.hash in set(p.members)]
            parts.append(self._start(p.job, members, now))
        span = (
            schedule.makespan(placed, free)
            if self.mode == "cost"
            else schedule.makespan(schedule.place(jobs, free, lookahead=0), free)
        )
        return parts, span - now

    def _start(self, gid: str, members: list, now: float) -> WorkItem:
        group = self.groups[gid]
        whole = len(members) == len(group.runs) and gid not in self.parts
        self.parts[gid] = self.parts.get(gid, 0) + 1
        part = replace(group, id=gid if whole else f"{gid}-p{self.parts[gid]}", runs=list(members))
        chosen = {r.hash for r in members}
        self.left[gid] = [r for r in self.left[gid] if r.hash not in chosen]
        self.running[part.id] = _Part(part, gid, now, self.estimate(members, gid))
        return part

    def finish(self, part_id: str, now: float | None = None, counted: bool = True) -> None:
        """A part ended; `counted`: its wall time teaches the ETA (not when its worker died)."""
        now = time.monotonic() if now is None else now
        part = self.running.pop(part_id)
        self.ended_runs |= set(part.item.hashes)
        if counted:
            self.wall += now - part.started
            self.est += part.estimate
        if not self.left[part.group] and not any(p.group == part.group for p in self.running.values()):
            self.ended.add(part.group)
