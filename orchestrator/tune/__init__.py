"""`kdgrid tune`: search spec fields with Ray Tune (random search, ASHA over per-epoch top-1), then re-run
the best configurations over seeds and report where the paper's choice lands.

- `space.py`: the search file (YAML beside the ablation tables), parsed and checked before anything starts;
- `search.py`: trials as kdgrid runs, the teacher first, ASHA and the budget, resume with Tune's restore;
- `report.py`: the re-runs and the report (markdown, CSV, a plot per searched field), from MLflow.
"""

from __future__ import annotations

from pathlib import Path


def cmd_tune(args) -> int:
    from rich.console import Console

    from orchestrator.launch import absolute_uri
    from orchestrator.tune import report
    from orchestrator.tune.search import Options, experiment_dir, prepare, run_search

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
    budget = [f"{args.trials} trials"]
    if args.budget_cpu_hours is not None:
        budget.append(f"{args.budget_cpu_hours:g} CPU-hours")
    if args.budget_gpu_hours is not None:
        budget.append(f"{args.budget_gpu_hours:g} GPU-hours")
    if args.time_budget_s is not None:
        budget.append(f"{args.time_budget_s:g} s wall")
    out = args.out or str(Path("reports") / f"search-{setup.search.search}-{setup.plan.scale}")
    paths = report.write(
        setup,
        uri,
        out,
        args.rerun_top,
        args.seeds,
        "Budget: " + ", ".join(budget) + f"; Tune experiment `{experiment.name}`.",
        experiment,
    )
    print(paths["md"].read_text())
    console.print("search report written: " + ", ".join(str(p) for p in paths.values()), highlight=False)
    return 0
