"""`kdgrid launch` / `kdgrid reproduce`: get every missing run of a planned grid done, on what the user has.

plan (orchestrator.plan) -> what MLflow lacks (by content hash) -> work items (items.work_items: cohorts,
split to spread over the workers, deps first) -> a launcher:

- local (default): a pool of spawned worker processes with a live view (launch/local.py);
- ray: Ray Tune trials, one per item, stage by stage (launch/ray.py);
- slurm: submitit jobs, one per item or job arrays, students held by `--dependency` (launch/slurm.py).

Finished runs are never launched again; interrupted ones resume from their checkpoints (the trainer
reopens their MLflow run); a run another launch is training is reported "running elsewhere". A failed
run is reported with its reason and log, and the runs that needed it as teacher are reported blocked;
the others go on. `reproduce` waits and ends with the report; `launch` returns once the work is handed
over (Slurm: submitted; local and Ray: a detached `reproduce` whose output goes to a log file).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.launch.items import LaunchContext, WorkItem, is_bad, kind, log_path, run_item, stages, work_items

__all__ = [
    "cmd_launch",
    "execute",
    "absolute_uri",
    "missing",
    "work_items",
    "WorkItem",
    "LaunchContext",
    "run_item",
    "stages",
    "summarize",
]

LAUNCHERS = ("local", "ray", "slurm")


def absolute_uri(uri: str | None) -> str:
    """The MLflow URI every worker, trial and job can use: a SQLite or file store made absolute."""
    from trainer import tracking

    uri = uri or tracking.default_uri()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if not path.startswith("/"):
            uri = f"sqlite:///{Path(path).resolve()}"
    elif "://" not in uri:  # a plain path: MLflow's file store
        uri = str(Path(uri).expanduser().resolve())
    elif uri.startswith("file:") and not uri.startswith("file:///"):
        uri = Path(uri[len("file:") :]).expanduser().resolve().as_uri()
    return uri


def missing(plan, tracking_uri: str) -> tuple[list, dict[str, str], dict]:
    """(runs to train, {hash: 'skipped: ...'} for finished ones, {hash: MLflow run} found)."""
    from trainer import tracking

    found = tracking.runs_by_hash(tracking.client(tracking_uri), plan.scale, [r.hash for r in plan.runs])
    todo, done = [], {}
    for r in plan.runs:
        if tracking.run_state(found.get(r.hash)) == "finished":
            done[r.hash] = "skipped: finished in MLflow"
        else:
            todo.append(r)
    return todo, done, found


def _launcher_module(name: str):
    if name == "local":
        from orchestrator.launch import local as mod
    elif name == "ray":
        from orchestrator.launch import ray as mod
    elif name == "slurm":
        from orchestrator.launch import slurm as mod
    else:
        raise ValueError(f"unknown launcher {name!r}: one of {', '.join(LAUNCHERS)}")
    return mod


def execute(
    plan,
    *,
    launcher: str = "local",
    work: str | Path = "kdgrid_runs",
    tracking_uri: str | None = None,
    workers: int | None = None,
    threads: int = 1,
    max_cohort: int | None = None,
    cohorts: bool = True,
    wait: bool = True,
    ray_address: str | None = None,
    slurm_config: str | None = None,
    console=None,
    schedule: str = "cost",
    cost_store: str | None = None,
) -> tuple[dict[str, str], LaunchContext, list[WorkItem]]:
    """Launch the plan's missing runs; returns ({hash: outcome} for every planned run, context, items)."""
    from rich.console import Console

    console = console or Console(soft_wrap=True)
    uri = absolute_uri(tracking_uri)
    ctx = LaunchContext(
        plan=plan,
        work=Path(work).expanduser().resolve(),
        tracking_uri=uri,
        threads=threads,
        workers=1,
        wait=wait,
        console=console,
        ray_address=ray_address,
        slurm_config=slurm_config,
        schedule=schedule,
    )
    mod = _launcher_module(launcher)
    todo, outcomes, found = missing(plan, uri)
    resumable = sum(1 for r in todo if r.hash in found)
    console.print(
        f"plan {plan.scale}: {len(plan.runs)} run(s) ({getattr(plan, 'rows_before_dedup', '?')} rows "
        f"before deduplication); {len(outcomes)} finished in MLflow, {len(todo)} to train"
        + (f" ({resumable} started before: they resume from their checkpoints)" if resumable else ""),
        highlight=False,
    )
    if not todo:
        console.print("nothing to launch: every planned run is finished", highlight=False)
        return outcomes, ctx, []
    ctx.workers = max(1, workers or mod.default_parallelism(ctx))
    cap = max_cohort if max_cohort is not None else ctx.hints.get("max_cohort")
    budget = getattr(mod, "memory_budget", lambda _ctx: None)(ctx)
    by_cost = schedule == "cost" and launcher in ("local", "ray")
    items = work_items(
        todo, max_cohort=cap, workers=ctx.workers, cohorts=cohorts, memory_budget=budget, balance=not by_cost
    )
    how = "plan order"
    if launcher in ("local", "ray"):
        from orchestrator.launch.costs import calibrate

        ctx.rates, seen = calibrate(absolute_uri(cost_store) if cost_store else uri, plan.scale)
        if by_cost:
            how = (
                f"critical path first, cohorts cut by cost (rates fitted to {seen} logged process-epoch(s) "
                "and set-up(s))"
                if seen
                else "critical path first, cohorts cut by cost (default rates: nothing logged in this store yet)"
            )
    console.print(
        f"{len(items)} work item(s) over {len(stages(items))} stage(s), {ctx.workers} at a time "
        f"({launcher} launcher, {how}); logs in {ctx.work / 'logs'}",
        highlight=False,
    )
    mod.launch(items, ctx, outcomes)
    return outcomes, ctx, items


def summarize(outcomes: dict[str, str], ctx: LaunchContext, items: list[WorkItem]) -> int:
    """Print what became of every run; 0 when nothing failed or is blocked, else 1."""
    names = ctx.names
    item_of = {h: it.id for it in items for h in it.hashes} | ctx.item_of  # parts the scheduler cut
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[kind(o)] = counts.get(kind(o), 0) + 1
    out = ctx.console
    out.print("runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), highlight=False)
    order = {"failed": 0, "blocked": 1, "running elsewhere": 2, "deferred": 3, "submitted": 4}
    for h, o in sorted(outcomes.items(), key=lambda kv: order.get(kind(kv[1]), 9)):
        k = kind(o)
        if k not in order:
            continue
        out.print(
            f"  {k.upper():<17} {h[:8]} {names.get(h, '')}: {o.split(':', 1)[1].strip() if ':' in o else o}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        if k == "failed" and h in item_of:
            out.print(
                f"  {'':<17} log: {log_path(ctx.work, item_of[h])}", highlight=False, markup=False, soft_wrap=True
            )
    if counts.get("running elsewhere") or counts.get("deferred"):
        out.print(
            "runs being trained by another launch were left to it; run the command again once it is done",
            highlight=False,
        )
    return 1 if any(is_bad(o) for o in outcomes.values()) else 0


def _relaunch_argv(args, uri: str, work: Path) -> list[str]:
    argv = [
        "reproduce",
        "--scale",
        args.scale,
        "--tables",
        args.tables,
        "--seeds",
        str(args.seeds),
        "--recipe",
        args.recipe,
        "--tracking-uri",
        uri,
        "--workdir",
        str(work),
        "--launcher",
        args.launcher,
        "--threads",
        str(args.threads),
    ]
    for o in args.overrides:
        argv += ["--set", o]
    for flag, value in (
        ("--workers", args.workers),
        ("--max-cohort", args.max_cohort),
        ("--ray-address", args.ray_address),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if args.no_cohorts:
        argv.append("--no-cohorts")
    if getattr(args, "schedule", "cost") != "cost":
        argv += ["--schedule", args.schedule]
    if getattr(args, "cost_store", None):
        argv += ["--cost-store", absolute_uri(args.cost_store)]
    return argv


def launch_detached(args, uri: str, work: Path, console) -> int:
    """`launch` with the local or Ray launcher: a `reproduce` in its own session, output to a log file."""
    log = work / "logs" / f"launch-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "orchestrator.cli", *_relaunch_argv(args, uri, work)]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")) if p
        ),
    )
    with open(log, "ab") as f:
        p = subprocess.Popen(
            argv,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=os.getcwd(),
            env=env,
            start_new_session=True,
        )
    console.print(
        f"launched in the background (pid {p.pid}): {' '.join(argv[3:])}\n"
        f"  follow it: tail -f {log}\n  see it in MLflow: kdgrid ui --tracking-uri {uri}",
        highlight=False,
    )
    return 0


def _report(plan, uri: str, out_dir: str, console, test: str = "welch", level: float = 0.95, overrides=()) -> None:
    try:
        from orchestrator.report import render, write_reports
        from orchestrator.report.build import build_report
    except ImportError as err:
        console.print(f"report: not written ({err}); the runs are in MLflow at {uri}", highlight=False)
        return
    report = build_report(plan, uri, tuple(overrides), test=test, level=level)
    paths = write_reports(plan, uri, out_dir, formats=("md", "html", "latex"), report=report)
    print(render.markdown(report))
    if paths:
        console.print("report written: " + ", ".join(str(p) for p in paths.values()), highlight=False)
    if report.error is None:
        from orchestrator import parent_run

        try:  # the runs are trained and the report is on disk: a store refusing an artifact fails nothing
            parent, _ = parent_run.publish(plan, uri, report, command="reproduce")
            console.print(f"report logged on the grid's MLflow run {parent}", highlight=False)
        except Exception as err:
            console.print(
                f"report not logged on the grid's MLflow run: {type(err).__name__}: {err}",
                highlight=False,
                markup=False,
            )


def cmd_launch(args, wait: bool) -> int:
    from rich.console import Console

    from orchestrator.plan import make_plan

    console = Console(soft_wrap=True)  # long lines stay whole in logs
    uri = absolute_uri(args.tracking_uri)
    work = Path(args.workdir).expanduser().resolve()
    plan = make_plan(
        scale=args.scale, tables=args.tables, seeds=args.seeds, recipe=args.recipe, overrides=tuple(args.overrides)
    )
    if not wait and args.launcher in ("local", "ray"):
        todo, _, _ = missing(plan, uri)
        if not todo:
            console.print(
                f"nothing to launch: every one of the {len(plan.runs)} planned run(s) is finished", highlight=False
            )
            return 0
        return launch_detached(args, uri, work, console)
    from orchestrator import parent_run

    parent_run.prepare(plan, uri, "reproduce" if wait else "launch")  # the grid's run; new runs nest under it
    outcomes, ctx, items = execute(
        plan,
        launcher=args.launcher,
        work=work,
        tracking_uri=uri,
        workers=args.workers,
        threads=args.threads,
        max_cohort=args.max_cohort,
        cohorts=not args.no_cohorts,
        wait=wait,
        ray_address=args.ray_address,
        slurm_config=args.slurm_config,
        console=console,
        schedule=getattr(args, "schedule", "cost"),
        cost_store=getattr(args, "cost_store", None),
    )
    code = summarize(outcomes, ctx, items)
    if wait:
        _report(
            plan, uri, args.out, console, getattr(args, "test", "welch"), getattr(args, "level", 0.95), args.overrides
        )
    return code
