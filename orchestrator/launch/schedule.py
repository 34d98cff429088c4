"""Cost-aware scheduling of work items: critical path first, cohorts split so that workers finish together.

Pure functions on made-up or estimated costs (seconds); no launcher, no torch. A `Job` is a cohort still
to train: members with their own cost and a `shared` cost paid once per part it is cut into (the
teacher's forward for every batch, the process set-up), so cutting a cohort in two costs one more
teacher pass and is worth it only when it keeps a worker from idling.

`place` is list scheduling (Graham) with HEFT-style priorities: whenever a worker frees, the ready job
with the longest remaining path below it starts there (a teacher whose students carry the most work
first; for jobs with nothing below them, longest first). Before placing a job, `place` tries cutting it
over the 1..k workers that free first, members assigned longest-first to the part that ends first (LPT),
and keeps the cut whose whole remaining schedule (simulated once more, one level less deep) ends
soonest, the fewest parts on ties. The local launcher places again whenever an item ends, so the same logic
cuts a cohort over the workers that are free when its teacher finishes; the makespan of the placement is
the grid's ETA.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

EPS = 1e-9


@dataclass(frozen=True)
class Job:
    """A cohort to train: (member id, own cost) pairs, a cost paid once per part, the jobs it needs."""

    id: str
    members: tuple[tuple[str, float], ...]
    shared: float = 0.0
    deps: frozenset[str] = field(default_factory=frozenset)
    split: bool = True  # may be cut into parts
    max_parts: int | None = None

    @property
    def cost(self) -> float:
        return self.shared + sum(c for _, c in self.members)


@dataclass(frozen=True)
class Placement:
    job: str
    members: tuple[str, ...]
    worker: int  # index into the `free_at` given to `place`
    start: float
    end: float


def priorities(jobs: Sequence[Job], workers: int) -> dict[str, float]:
    """Bottom level of each job: its cost plus the longer of its longest chain of dependants and the work
    of all its dependants spread over the workers (a lower bound on the time left once it starts)."""
    by_id = {j.id: j for j in jobs}
    children: dict[str, list[str]] = {j.id: [] for j in jobs}
    for j in jobs:
        for d in j.deps:
            if d in children:
                children[d].append(j.id)
    memo: dict[str, tuple[float, set[str]]] = {}

    def below(i: str, path: tuple = ()) -> tuple[float, set[str]]:  # (longest chain from i, i and all below)
        if i in path:
            raise ValueError("dependency cycle among jobs " + ", ".join(sorted(path)))
        if i not in memo:
            chain, seen = 0.0, {i}
            for c in children[i]:
                c_chain, c_seen = below(c, path + (i,))
                chain, seen = max(chain, c_chain), seen | c_seen
            memo[i] = (by_id[i].cost + chain, seen)
        return memo[i]

    out = {}
    for j in jobs:
        chain, seen = below(j.id)
        spread = sum(by_id[s].cost for s in seen if s != j.id) / max(1, workers)
        out[j.id] = j.cost + max(chain - j.cost, spread)
    return out


def lpt(members: Sequence[tuple[str, float]], starts: Sequence[float], shared: float) -> list[tuple[int, list]]:
    """Members over parts that start at `starts`: longest first, each to the part that would end first.
    Returns (index into starts, members) for the parts that got any."""
    parts: list[list] = [[] for _ in starts]
    ends = [s + shared for s in starts]
    for m in sorted(members, key=lambda m: (-m[1], m[0])):
        i = min(range(len(ends)), key=lambda k: (ends[k], k))
        parts[i].append(m)
        ends[i] += m[1]
    return [(i, p) for i, p in enumerate(parts) if p]


def place(
    jobs: Sequence[Job], free_at: Sequence[float], done: Mapping[str, float] | None = None, *, lookahead: int = 1
) -> list[Placement]:
    """Place every job on the workers (free from `free_at`); `done` gives the end time of jobs not in
    `jobs` that others need (running ones; deps found in neither are taken as finished at time 0)."""
    if not free_at:
        raise ValueError("place needs at least one worker")
    prio = priorities(jobs, len(free_at))
    return _place(list(jobs), list(free_at), dict(done or {}), prio, lookahead)


def makespan(placements: Sequence[Placement], free_at: Sequence[float] = (0.0,)) -> float:
    return max([p.end for p in placements] + list(free_at))


def _place(
    jobs: list[Job], free: list[float], done: dict[str, float], prio: dict[str, float], lookahead: int
) -> list[Placement]:
    ids = {j.id for j in jobs}
    out: list[Placement] = []
    todo = list(jobs)
    while todo:
        eligible = [j for j in todo if not (j.deps & ids - done.keys())]
        if not eligible:
            raise ValueError("dependency cycle among jobs " + ", ".join(sorted(j.id for j in todo)))
        t = min(free)
        ready = {j.id: max([done.get(d, 0.0) for d in j.deps], default=0.0) for j in eligible}
        now = [j for j in eligible if ready[j.id] <= t + EPS]
        if now:
            job = max(now, key=lambda j: (prio[j.id], -todo.index(j)))
        else:
            job = min(eligible, key=lambda j: (ready[j.id], -prio[j.id], todo.index(j)))
        todo.remove(job)
        cuts = list(_cuts(job, free, ready[job.id], cut=lookahead > 0))
        best = None
        for parts in cuts:
            trial_free = list(free)
            for p in parts:
                trial_free[p.worker] = p.end
            score = 0.0
            if len(cuts) > 1:  # judge a cut by when everything left would end, placed without cuts
                rest_done = dict(done, **{job.id: max(p.end for p in parts)})
                score = makespan(_place(todo, trial_free, rest_done, prio, lookahead - 1), trial_free)
            key = (round(score, 6), len(parts))
            if best is None or key < best[0]:
                best = (key, parts, trial_free)
        _, parts, free = best
        done[job.id] = max(p.end for p in parts)
        out += parts
    return out


def _cuts(job: Job, free: list[float], ready: float, cut: bool):
    """The job as 1..k parts on the k workers that free first, members balanced by LPT."""
    order = sorted(range(len(free)), key=lambda w: (free[w], w))
    n = len(job.members)
    widest = min(len(free), n, job.max_parts or n) if job.split and cut else 1
    for k in range(1, max(1, widest) + 1):
        workers = order[:k]
        starts = [max(free[w], ready) for w in workers]
        if not job.members:
            yield [Placement(job.id, (), workers[0], starts[0], starts[0] + job.shared)]
            return
        parts = []
        for i, members in lpt(job.members, starts, job.shared):
            end = starts[i] + job.shared + sum(c for _, c in members)
            parts.append(Placement(job.id, tuple(m for m, _ in members), workers[i], starts[i], end))
        yield parts
