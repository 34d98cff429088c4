"""`kdgrid tune`: search spec fields with Ray Tune (random search, ASHA over per-epoch top-1), re-run the
best configurations over seeds, and report where the paper's choice lands."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from orchestrator.tune import report
from orchestrator.tune.search import Options, experiment_dir, prepare, run_search
from trainer.tracking import absolute_uri


def run(args) -> int:
    console = Console(soft_wrap=True)
    setup = prepare(args.search, args.scale, args.recipe, tuple(args.overrides))
    uri = absolute_uri(args.tracking_uri)
    work = Path(args.workdir).expanduser().resolve()
    opts = Options(
        trials=args.trials,
        workers=args.workers,
        threads=args.threads,
        budget_cpu_hours=args.budget_cpu_hours,
        budget_gpu_hours=args.budget_gpu_hours,
        time_budget_s=args.time_budget_s,
        ray_address=args.ray_address,
    )
    experiment = experiment_dir(setup, work, args.trials)
    if not args.report_only:
        run_search(setup, uri, work, opts, console)
        if args.rerun_top > 0 and args.seeds > 0:
            report.rerun(setup, uri, work, args.rerun_top, args.seeds, args.workers, console, experiment)
    out = args.out or str(Path("reports") / f"search-{setup.search.search}-{setup.plan.scale}")
    note = f"Budget: {budget(args)}; Tune experiment `{experiment.name}`."
    paths = report.write(setup, uri, out, args.rerun_top, args.seeds, note, experiment)
    print(paths["md"].read_text())
    console.print("search report written: " + ", ".join(str(p) for p in paths.values()), highlight=False)
    return 0


def budget(args) -> str:
    parts = [f"{args.trials} trials"]
    if args.budget_cpu_hours is not None:
        parts.append(f"{args.budget_cpu_hours:g} CPU-hours")
    if args.budget_gpu_hours is not None:
        parts.append(f"{args.budget_gpu_hours:g} GPU-hours")
    if args.time_budget_s is not None:
        parts.append(f"{args.time_budget_s:g} s wall")
    return ", ".join(parts)
