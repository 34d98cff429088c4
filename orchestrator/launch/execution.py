"""Get every missing run of a planned grid done, on the launcher named in the options.

plan -> what MLflow lacks (by content hash) -> work items (cohorts, split to spread over the workers,
deps first) -> the launcher. Finished runs are never launched again; interrupted ones resume from their
checkpoints (the trainer reopens their MLflow run); a run another launch is training is reported "running
elsewhere". A failed run is reported with its reason and log, the runs that needed it as teacher are
reported blocked, and the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.launch import registry
from orchestrator.launch.costs import calibrate
from orchestrator.launch.items import LaunchContext, WorkItem, log_path, stages, work_items
from orchestrator.launch.options import LaunchOptions
from orchestrator.launch.outcome import Outcome
from trainer import tracking


@dataclass
class Launched:
    """What a launch did: {hash: Outcome} for every planned run, the context it ran in, its work items."""

    outcomes: dict[str, Outcome]
    ctx: LaunchContext
    items: list[WorkItem]


def missing(plan: Any, tracking_uri: str) -> tuple[list, dict[str, Outcome], dict]:
    """(runs to train, {hash: skipped} for finished ones, {hash: MLflow run} found)."""
    found = tracking.runs_by_hash(tracking.client(tracking_uri), plan.scale, [r.hash for r in plan.runs])
    todo, done = [], {}
    for r in plan.runs:
        if tracking.finished(found.get(r.hash)):
            done[r.hash] = Outcome("skipped", "finished in MLflow")
        else:
            todo.append(r)
    return todo, done, found


def _items(todo: list, ctx: LaunchContext, launcher: registry.Launcher) -> list[WorkItem]:
    opts = ctx.options
    return work_items(
        todo,
        max_cohort=opts.max_cohort if opts.max_cohort is not None else ctx.hints.get("max_cohort"),
        workers=ctx.workers,
        cohorts=opts.cohorts,
        memory_budget=launcher.memory_budget(ctx),
        balance=not (launcher.scheduled and opts.schedule == "cost"),  # the scheduler cuts by cost instead
    )


def _how(ctx: LaunchContext, launcher: registry.Launcher) -> str:
    """How items will start; for a scheduled launcher, the cost model's rates are fitted here."""
    if not launcher.scheduled:
        return "items in plan order"
    ctx.rates, seen = calibrate(ctx.options.rates_store, ctx.plan.scale)
    if ctx.schedule != "cost":
        return "items in plan order"
    store = f" of the cost store {ctx.options.cost_store}" if ctx.options.cost_store else ""
    if not seen:
        return f"critical path first, cohorts cut by cost (default rates: nothing logged in the store{store} yet)"
    fitted = f"rates fitted to {seen} logged process-epoch(s) and set-up(s){store}"
    return f"critical path first, cohorts cut by cost ({fitted})"


def execute(plan: Any, options: LaunchOptions, console=None) -> Launched:
    """Launch the plan's missing runs with the launcher `options` name; returns what became of every run."""
    from rich.console import Console

    options = options.resolved()
    launcher = registry.get(options.launcher)
    ctx = LaunchContext(plan, options, console or Console(soft_wrap=True))
    todo, outcomes, found = missing(plan, ctx.tracking_uri)
    resumable = sum(1 for r in todo if r.hash in found)
    ctx.console.print(
        f"plan {plan.scale}: {len(plan.runs)} run(s) ({getattr(plan, 'rows_before_dedup', '?')} rows "
        f"before deduplication); {len(outcomes)} finished in MLflow, {len(todo)} to train"
        + (f" ({resumable} started before: they resume from their checkpoints)" if resumable else ""),
        highlight=False,
    )
    if not todo:
        ctx.console.print("nothing to launch: every planned run is finished", highlight=False)
        return Launched(outcomes, ctx, [])
    ctx.workers = max(1, options.workers or launcher.parallelism(ctx))
    items = _items(todo, ctx, launcher)
    ctx.console.print(
        f"{len(items)} work item(s) over {len(stages(items))} stage(s), {ctx.workers} at a time "
        f"({launcher.name} launcher, {_how(ctx, launcher)}); logs in {ctx.work / 'logs'}",
        highlight=False,
    )
    launcher.launch(items, ctx, outcomes)
    return Launched(outcomes, ctx, items)


ORDER = {"failed": 0, "blocked": 1, "running elsewhere": 2, "deferred": 3, "submitted": 4}  # runs listed by name


def summarize(launched: Launched) -> int:
    """Print what became of every run; 0 when nothing failed or is blocked, else 1."""
    outcomes, ctx = launched.outcomes, launched.ctx
    names = ctx.names
    item_of = {h: it.id for it in launched.items for h in it.hashes} | ctx.item_of  # parts the scheduler cut
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o.kind] = counts.get(o.kind, 0) + 1
    out = ctx.console
    out.print("runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), highlight=False)
    for h, o in sorted(outcomes.items(), key=lambda kv: ORDER.get(kv[1].kind, 9)):
        if o.kind not in ORDER:
            continue
        line = f"  {o.kind.upper():<17} {h[:8]} {names.get(h, '')}: {o.detail or o.kind}"
        out.print(line, highlight=False, markup=False, soft_wrap=True)
        if o.kind == "failed" and h in item_of:
            log = f"  {'':<17} log: {log_path(ctx.work, item_of[h])}"
            out.print(log, highlight=False, markup=False, soft_wrap=True)
    if counts.get("running elsewhere") or counts.get("deferred"):
        out.print(
            "runs being trained by another launch were left to it; run the command again once it is done",
            highlight=False,
        )
    return 1 if any(o.bad for o in outcomes.values()) else 0
