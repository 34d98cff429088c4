"""Work items: what every launcher schedules, and the worker body every launcher runs.

A work item is a cohort (see `trainer.engine.cohort_key`): runs that share teacher, data, data order and
batch size, trained in one process with one teacher forward per batch feeding every student. The plan's
missing runs are grouped here, in one place, for the local pool, Ray Tune and Slurm alike:

- `work_items` groups by cohort key, caps a cohort at `max_cohort` runs, and splits the largest cohorts
  so the work spreads over the available workers (a cohort of 16 on 2 workers becomes two of 8);
- an item's deps are the items holding its runs' deps (teachers before the students that need them);
- `run_item` is the body of a worker, whoever started it: it re-checks each run's teachers in MLflow
  (a student whose teacher did not finish is *blocked*, never trained), sends the item's output to
  `<workdir>/logs/<item>.log`, and trains through `trainer.run.train_specs`.

Run outcomes are plain strings, as the engine returns them ("finished", "failed: reason", "locked: ...")
plus the launchers' own ("blocked: ...", "skipped: ...", "submitted: ..."), sorted by `kind`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------
# Grouping
# ---------------------------------------------------------------------------------------------------
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

    @property
    def run_deps(self) -> dict[str, list[str]]:
        """Each run's own deps (hashes of the runs that must finish first)."""
        return {r.hash: list(r.deps) for r in self.runs}

    def payload(self) -> dict[str, Any]:
        """What a worker needs, as plain JSON-able data (no pickled pydantic objects cross processes)."""
        return {
            "id": self.id,
            "specs": [r.spec.model_dump(mode="json") for r in self.runs],
            "hashes": self.hashes,
            "deps": self.run_deps,
            "scale": self.runs[0].spec.scale,
        }


def devices_per_run(runs) -> int:
    """The most devices any of these planned runs trains on (its recipe's world size: one DDP job)."""
    return max([r.spec.recipe.world_size or 1 for r in runs] or [1])


def payload_world_size(payload: dict) -> int:
    """The DDP world size an item's payload asks for (its specs' planned world size)."""
    return max(int(s["recipe"].get("world_size") or 1) for s in payload["specs"])


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

    Runs with equal `cohort_key` form one item (each run alone with `cohorts=False`); an item holds at
    most `max_cohort` runs (None: no cap); then, level by level (teachers, their students, ...), any item
    larger than that level's fair share, ceil(runs / workers), is split into even parts (a cohort of 16 on 2
    workers trains as two cohorts of 8 rather than one of 16 beside an idle worker), and while a level has
    fewer items than workers its largest item is halved. Splitting costs a teacher forward per part.
    With `memory_budget` (bytes a worker may use), a cohort whose estimated peak exceeds it is first
    split into the fewest even parts that fit. `balance=False` skips the count-based spreading over the
    workers: the cost-aware scheduler (launch/planner.py) cuts the items by cost when it starts them.
    Deps on runs not in `plan_runs` are taken as satisfied (the caller drops finished runs).
    """
    from trainer.engine import cohort_key

    runs = list(plan_runs)
    if not runs:
        return []
    if max_cohort is not None and max_cohort < 1:
        raise ValueError(f"max_cohort must be at least 1, not {max_cohort}")
    level = _levels(runs)
    groups: dict[tuple[int, str], list] = {}
    for r in runs:
        key = cohort_key(r.spec) if cohorts else r.hash
        groups.setdefault((level[r.hash], key), []).append(r)  # a key has one level: its teacher fixes it

    items: list[WorkItem] = []
    for lvl in sorted({lv for lv, _ in groups}):
        parts: list[tuple[str, list]] = []
        for (lv, key), members in groups.items():
            if lv != lvl:
                continue
            cap = max_cohort or len(members)
            for c in _even_chunks(members, math.ceil(len(members) / cap)):
                parts += [(key, f) for f in (_fit_memory(c, memory_budget) if memory_budget else [c])]
        share = math.ceil(sum(len(c) for _, c in parts) / max(1, workers))
        balanced = []
        for key, chunk in parts:
            balanced += [(key, c) for c in _even_chunks(chunk, math.ceil(len(chunk) / max(1, share)))]
        if not balance:
            balanced = parts
        while balance and len(balanced) < workers:  # idle workers left: halve the largest item while it has 2+ runs
            i = max(range(len(balanced)), key=lambda j: len(balanced[j][1]))
            key, chunk = balanced[i]
            if len(chunk) < 2:
                break
            balanced[i : i + 1] = [(key, c) for c in _even_chunks(chunk, 2)]
        count: dict[str, int] = {}
        for key, _ in balanced:
            count[key] = count.get(key, 0) + 1
        seen: dict[str, int] = {}
        for key, chunk in balanced:
            seen[key] = seen.get(key, 0) + 1
            role = "teacher" if any(r.role == "teacher" for r in chunk) else "student"
            name = f"{role}-{key[:10]}"
            if count[key] > 1:
                name += f"-{seen[key]}of{count[key]}"
            items.append(WorkItem(id=name, runs=chunk, key=key, level=lvl))

    holder = {h: it.id for it in items for h in it.hashes}
    for it in items:
        deps = {holder[d] for r in it.runs for d in r.deps if d in holder}
        if it.id in deps:
            raise ValueError(f"item {it.id} holds a run and a run it depends on")
        it.deps = sorted(deps, key=[i.id for i in items].index)
    return items


def stages(items: Sequence[WorkItem]) -> list[list[WorkItem]]:
    """Items by dependency level: every item of a stage needs only items of earlier stages."""
    out: dict[int, list[WorkItem]] = {}
    for it in items:
        out.setdefault(it.level, []).append(it)
    return [out[k] for k in sorted(out)]


@dataclass
class LaunchContext:
    """What a launcher is given besides its items."""

    plan: Any  # orchestrator.plan.Plan
    work: Path  # absolute work directory (checkpoints, locks, logs)
    tracking_uri: str  # absolute MLflow URI
    threads: int = 1  # torch threads per training process
    workers: int = 1  # parallel training processes / trials / jobs at a time
    wait: bool = True  # reproduce waits; launch returns once the work is handed over
    console: Any = None  # rich Console
    ray_address: str | None = None
    slurm_config: str | None = None
    schedule: str = "cost"  # cost: critical path, cohorts cut by cost (launch/planner.py); plan: plan order
    rates: dict[str, float] | None = None  # CPU-s per unit of work (launch/costs.py), calibrated on the store
    item_of: dict[str, str] = field(default_factory=dict)  # run hash -> the item (part) that trained it

    @property
    def hints(self) -> dict[str, Any]:
        """The scale's `launch:` hints (max_cohort, workers, resources, teacher_resources, ray, slurm)."""
        return getattr(self.plan, "launch", None) or {}

    @property
    def names(self) -> dict[str, str]:
        return {r.hash: r.spec.name or r.spec.student.name for r in self.plan.runs}

    def log(self, item_id: str) -> Path:
        return log_path(self.work, item_id)


# ---------------------------------------------------------------------------------------------------
# Outcomes
# ---------------------------------------------------------------------------------------------------
def kind(outcome: str) -> str:
    """finished | skipped | running elsewhere | deferred | failed | blocked | submitted | queued | running.

    "running elsewhere": another launch holds the run's lock; "deferred": its teacher is running elsewhere.
    Neither is a failure: the same command run again later picks them up."""
    head = outcome.split(":", 1)[0].strip()
    return {"locked": "running elsewhere"}.get(head, head)


def is_bad(outcome: str) -> bool:
    return kind(outcome) in ("failed", "blocked")


def blocked_by(run, outcomes: dict[str, str], names: dict[str, str] | None = None) -> str | None:
    """Why a run cannot start: a dep ended without finishing, or another launch has it (None: it may start)."""
    for d in run.deps:
        o = outcomes.get(d)
        if o is None or kind(o) in ("finished", "skipped"):
            continue
        who = f"{d[:8]}" + (f" ({names[d]})" if names and d in names else "")
        if kind(o) == "running elsewhere":
            return f"deferred: teacher {who} is being trained by another launch; run again once it finishes"
        return f"blocked: teacher {who} did not finish ({o})"
    return None


def runnable(item: WorkItem, outcomes: dict[str, str], names: dict[str, str] | None = None) -> WorkItem | None:
    """The part of `item` whose deps all finished; its other runs get a 'blocked:'/'deferred:' outcome."""
    from dataclasses import replace

    ok = []
    for r in item.runs:
        why = blocked_by(r, outcomes, names)
        if why:
            outcomes[r.hash] = why
        else:
            ok.append(r)
    return replace(item, runs=ok) if ok else None


def mark_abandoned(ctx: LaunchContext, hashes: Iterable[str], reason: str) -> None:
    """Runs left RUNNING in MLflow by a process that died (its lock is stale): FAILED, with the reason."""
    from trainer import tracking, workdir

    try:
        c = tracking.client(ctx.tracking_uri)
        for h, run in tracking.runs_by_hash(c, ctx.plan.scale, hashes).items():
            lock = workdir.RunLock(workdir.run_dir(ctx.work, h))
            if run.info.status == "RUNNING" and not lock.held():
                tracking.RunLog(c, run.info.run_id).finish("FAILED", reason)
    except Exception as err:  # the launcher's summary reports the failure all the same
        print(f"could not mark runs failed in MLflow: {err}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# The worker body
# ---------------------------------------------------------------------------------------------------
def log_path(work: str | Path, item_id: str, rank: int = 0) -> Path:
    suffix = f".rank{rank}" if rank else ""
    return Path(work).expanduser().resolve() / "logs" / f"{item_id}{suffix}.log"


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C and child output too) to
    `path`, appended; restore them afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1), os.dup2(fd, 2)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def teacher_problems(payload: dict, tracking_uri: str) -> dict[str, str]:
    """Runs of the item whose teachers have not finished in MLflow -> 'blocked: ...'."""
    from trainer import tracking

    deps = {d for ds in payload["deps"].values() for d in ds}
    if not deps:
        return {}
    found = tracking.runs_by_hash(tracking.client(tracking_uri), payload["scale"], deps)
    out = {}
    for h, ds in payload["deps"].items():
        for d in ds:
            run = found.get(d)
            if run is not None and run.info.status == "FINISHED":
                continue
            why = (
                "never started"
                if run is None
                else (run.data.tags.get(tracking.FAILURE) or f"its MLflow run is {run.info.status}")
            )
            out[h] = f"blocked: teacher {d[:8]} has not finished ({why})"
            break
    return out


def wait_for_locks(work: str | Path, hashes: list[str], timeout_s: float) -> None:
    """Wait (at most `timeout_s`) while a live owner holds any of these runs' locks."""
    from trainer import workdir

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = []
        for h in hashes:
            lock = workdir.RunLock(workdir.run_dir(work, h))
            if lock.held():
                held.append(h)
        if not held:
            return
        print(f"waiting for the lock of {len(held)} run(s) held elsewhere: {' '.join(held)}", flush=True)
        time.sleep(min(20.0, max(1.0, deadline - time.monotonic())))


def run_item(
    payload: dict,
    *,
    work: str | Path,
    tracking_uri: str,
    threads: int | None = None,
    device: str | None = None,
    callbacks: Iterable = (),
    rank: int = 0,
    lock_wait_s: float = 0.0,
) -> dict[str, str]:
    """Train one work item; never raises for a run's failure: returns {hash: outcome} for every run.

    Output goes to `<work>/logs/<item>.log` (`<item>.rank<k>.log` for rank k > 0). With `lock_wait_s`, rank 0
    first waits that long for runs whose lock a live owner holds: a requeued Slurm job may start on another
    node before its previous incarnation's lock has gone stale.
    """
    from trainer.run import train_specs
    from trainer.spec import parse_experiment

    path = log_path(work, payload["id"], rank)
    results: dict[str, str] = {}
    with output_to(path):
        print(
            f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} item {payload['id']} on {socket.gethostname()} "
            f"pid {os.getpid()} rank {rank}: {len(payload['hashes'])} run(s) {' '.join(payload['hashes'])}",
            flush=True,
        )
        try:
            specs = []
            for h, data in zip(payload["hashes"], payload["specs"]):
                spec = parse_experiment(data, f"item {payload['id']}")
                if spec.content_hash() != h:
                    raise RuntimeError(
                        f"spec of run {h} hashes to {spec.content_hash()} in the worker: "
                        "the worker's kdgrid differs from the launcher's"
                    )
                specs.append(spec)
            results.update(teacher_problems(payload, tracking_uri))  # every rank: they must agree
            todo = [s for s, h in zip(specs, payload["hashes"]) if h not in results]
            if todo and rank == 0 and lock_wait_s > 0:
                wait_for_locks(work, [s.content_hash() for s in todo], lock_wait_s)
            if todo:
                results.update(
                    train_specs(
                        todo,
                        work=work,
                        tracking_uri=tracking_uri,
                        threads=threads,
                        device=device,
                        callbacks=tuple(callbacks),
                    )
                )
        except Exception as err:
            traceback.print_exc()
            for h in payload["hashes"]:
                results.setdefault(h, f"failed: {type(err).__name__}: {err}".strip())
        except BaseException as err:  # preempted (submitit's SystemExit), interrupted: not a failure
            traceback.print_exc()
            print(
                f"=== interrupted ({type(err).__name__}: {err}): the runs resume from their checkpoints next time",
                flush=True,
            )
            raise
        for h in payload["hashes"]:
            results.setdefault(h, "failed: the trainer returned no result for this run")
        print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} item {payload['id']} done: {json.dumps(results)}", flush=True)
    return results
