"""Work items: what every launcher schedules, grouped once here for all of them.

A work item is a cohort (see `trainer.engine.cohort_key`): runs that share teacher, data, data order and
batch size, trained in one process with one teacher forward per batch feeding every student.
`work_items` groups the plan's missing runs by cohort key, caps a cohort at `max_cohort` runs (and at what
fits the memory budget), and splits the largest so the work spreads over the workers (a cohort of 16 on 2
workers becomes two of 8); an item's deps are the items holding its runs' teachers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.launch.options import LaunchOptions


@dataclass
class WorkItem:
    """One process's work: a cohort (or part of one) of planned runs."""

    id: str
    runs: list  # PlannedRun, in plan order
    deps: list[str] = field(default_factory=list)  # ids of the items that must finish first
    key: str = ""  # what grouped the runs: their cohort key (with cohorts=False, the run's hash)
    level: int = 0  # dependency depth: 0 for items that need nothing, 1 for students of level-0 teachers, ...

    @property
    def hashes(self) -> list[str]:
        return [r.hash for r in self.runs]

    @property
    def role(self) -> str:
        return "teacher" if any(r.role == "teacher" for r in self.runs) else "student"

    def payload(self) -> dict[str, Any]:
        """What a worker needs, as plain JSON-able data (no pickled pydantic objects cross processes)."""
        return {
            "id": self.id,
            "specs": [r.spec.model_dump(mode="json") for r in self.runs],
            "hashes": self.hashes,
            "deps": {r.hash: list(r.deps) for r in self.runs},
            "scale": self.runs[0].spec.scale,
        }


def devices_per_run(runs) -> int:
    """The most devices any of these planned runs trains on (its recipe's world size: one DDP job)."""
    return max([r.spec.recipe.world_size or 1 for r in runs] or [1])


def payload_world_size(payload: dict) -> int:
    """The DDP world size an item's payload asks for (its specs' planned world size)."""
    return max(int(s["recipe"].get("world_size") or 1) for s in payload["specs"])


# ---------------------------------------------------------------------------------------------------
# Grouping
# ---------------------------------------------------------------------------------------------------
def _even_chunks(seq: list, parts: int) -> list[list]:
    """`seq` cut into `parts` consecutive chunks whose sizes differ by at most one."""
    parts = max(1, min(parts, len(seq)))
    size, extra = divmod(len(seq), parts)
    out, i = [], 0
    for p in range(parts):
        n = size + (p < extra)
        out.append(seq[i : i + n])
        i += n
    return out


def _levels(runs: Sequence) -> dict[str, int]:
    """Dependency depth of each run, counting only deps among `runs` (others are already finished)."""
    by_hash = {r.hash: r for r in runs}
    level: dict[str, int] = {}

    def depth(h: str, seen: tuple[str, ...] = ()) -> int:
        if h in level:
            return level[h]
        if h in seen:
            raise ValueError(f"dependency cycle through run {h}")
        deps = [d for d in by_hash[h].deps if d in by_hash]
        level[h] = 1 + max((depth(d, seen + (h,)) for d in deps), default=-1)
        return level[h]

    for r in runs:
        depth(r.hash)
    return level


def _fit_memory(chunk: list, budget: int) -> list[list]:
    """`chunk` in the fewest even parts whose estimated peak (one teacher forward plus every student's
    step, trainer.footprint) fits `budget` bytes; a run too large alone still gets a part of its own."""
    from trainer.footprint import cohort_bytes

    for parts in range(1, len(chunk) + 1):
        split = _even_chunks(chunk, parts)
        if all(cohort_bytes([r.spec for r in c]) <= budget for c in split):
            return split
    return [[r] for r in chunk]


Parts = list[tuple[str, list]]  # (grouping key, runs) in order


def _capped(members: list, key: str, max_cohort: int | None, memory_budget: int | None) -> Parts:
    """One cohort cut to at most `max_cohort` runs a part, each part cut again until it fits the memory."""
    out: Parts = []
    for c in _even_chunks(members, math.ceil(len(members) / (max_cohort or len(members)))):
        out += [(key, f) for f in (_fit_memory(c, memory_budget) if memory_budget else [c])]
    return out


def _spread(parts: Parts, workers: int) -> Parts:
    """A level's parts spread over the workers: any part larger than the fair share, ceil(runs / workers),
    cut in even parts; then, while workers would stay idle, the largest part (of 2+ runs) halved.
    Splitting costs a teacher forward per part."""
    share = math.ceil(sum(len(c) for _, c in parts) / max(1, workers))
    out = [(key, c) for key, chunk in parts for c in _even_chunks(chunk, math.ceil(len(chunk) / max(1, share)))]
    while len(out) < workers:
        i = max(range(len(out)), key=lambda j: len(out[j][1]))
        key, chunk = out[i]
        if len(chunk) < 2:
            break
        out[i : i + 1] = [(key, c) for c in _even_chunks(chunk, 2)]
    return out


def _named(parts: Parts, level: int) -> list[WorkItem]:
    """Items named by role and key; the parts of one key numbered `-1of3`, `-2of3`, ..."""
    count: dict[str, int] = {}
    for key, _ in parts:
        count[key] = count.get(key, 0) + 1
    seen: dict[str, int] = {}
    items = []
    for key, chunk in parts:
        seen[key] = seen.get(key, 0) + 1
        role = "teacher" if any(r.role == "teacher" for r in chunk) else "student"
        name = f"{role}-{key[:10]}" + (f"-{seen[key]}of{count[key]}" if count[key] > 1 else "")
        items.append(WorkItem(id=name, runs=chunk, key=key, level=level))
    return items


def _link(items: list[WorkItem]) -> None:
    """Each item's deps: the items holding its runs' deps, in item order."""
    holder = {h: it.id for it in items for h in it.hashes}
    order = [i.id for i in items]
    for it in items:
        deps = {holder[d] for r in it.runs for d in r.deps if d in holder}
        if it.id in deps:
            raise ValueError(f"item {it.id} holds a run and a run it depends on")
        it.deps = sorted(deps, key=order.index)


def work_items(
    plan_runs: Sequence,
    *,
    max_cohort: int | None = None,
    workers: int = 1,
    cohorts: bool = True,
    memory_budget: int | None = None,
    balance: bool = True,
) -> list[WorkItem]:
    """Group planned runs into work items, deps first.

    Runs with equal `cohort_key` form one item (each run alone with `cohorts=False`), capped at
    `max_cohort` runs (None: no cap) and at what fits `memory_budget` bytes; then, level by level
    (teachers, their students, ...), spread over `workers` (`_spread`). `balance=False` skips the
    spreading: the cost-aware scheduler (launch/scheduler.py) cuts items by cost when it starts them.
    Deps on runs not in `plan_runs` are taken as satisfied (the caller drops finished runs).
    """
    from trainer.engine import cohort_key

    runs = list(plan_runs)
    if max_cohort is not None and max_cohort < 1:
        raise ValueError(f"max_cohort must be at least 1, not {max_cohort}")
    level = _levels(runs)
    groups: dict[tuple[int, str], list] = {}
    for r in runs:
        key = cohort_key(r.spec) if cohorts else r.hash
        groups.setdefault((level[r.hash], key), []).append(r)  # a key has one level: its teacher fixes it
    items: list[WorkItem] = []
    for lvl in sorted({lv for lv, _ in groups}):
        parts = [p for (lv, key), m in groups.items() if lv == lvl for p in _capped(m, key, max_cohort, memory_budget)]
        items += _named(_spread(parts, workers) if balance else parts, lvl)
    _link(items)
    return items


def stages(items: Sequence[WorkItem]) -> list[list[WorkItem]]:
    """Items by dependency level: every item of a stage needs only items of earlier stages."""
    out: dict[int, list[WorkItem]] = {}
    for it in items:
        out.setdefault(it.level, []).append(it)
    return [out[k] for k in sorted(out)]


# ---------------------------------------------------------------------------------------------------
# What a launcher is given
# ---------------------------------------------------------------------------------------------------
def log_path(work: str | Path, item_id: str, rank: int = 0) -> Path:
    suffix = f".rank{rank}" if rank else ""
    return Path(work).expanduser().resolve() / "logs" / f"{item_id}{suffix}.log"


@dataclass
class LaunchContext:
    """What a launcher is given besides its items: the plan, the options (resolved), and what `execute`
    worked out (parallelism, the cost model's rates); `item_of` records which part trained each run."""

    plan: Any  # orchestrator.plan.Plan
    options: LaunchOptions
    console: Any = None  # rich Console
    workers: int = 1  # parallel training processes / trials / jobs at a time
    rates: dict[str, float] | None = None  # CPU-s per unit of work (launch/costs.py), calibrated on the store
    item_of: dict[str, str] = field(default_factory=dict)  # run hash -> the item (part) that trained it

    @property
    def work(self) -> Path:
        return Path(self.options.workdir)

    @property
    def tracking_uri(self) -> str:
        return str(self.options.tracking_uri)

    @property
    def threads(self) -> int:
        return self.options.threads

    @property
    def wait(self) -> bool:
        return self.options.wait

    @property
    def schedule(self) -> str:
        return self.options.schedule

    @property
    def hints(self) -> dict[str, Any]:
        """The scale's `launch:` hints (max_cohort, workers, resources, teacher_resources, ray, slurm)."""
        return getattr(self.plan, "launch", None) or {}

    @property
    def names(self) -> dict[str, str]:
        return {r.hash: r.spec.name or r.spec.student.name for r in self.plan.runs}

    def log(self, item_id: str) -> Path:
        return log_path(self.work, item_id)
