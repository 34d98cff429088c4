"""`kdgrid launch` / `kdgrid reproduce`: get every missing run of the grid done, on what the user has.

`reproduce` waits, summarises, writes the report and publishes it on the grid's MLflow run. `launch`
returns once the work is handed over: a launcher that detaches (Slurm) submits and returns; otherwise the
same `reproduce` runs in the background, its output in a log file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from orchestrator.commands.options import GridOptions, claim_options, grid_options, launch_options
from orchestrator.commands.publish import deliver
from orchestrator.launch import registry
from orchestrator.launch.execution import execute, missing, summarize
from orchestrator.launch.options import LaunchOptions
from orchestrator.launch.worker import REPO_ROOT
from orchestrator.tracking import grid_run


def run(args) -> int:
    wait = args.command == "reproduce"
    console = Console(soft_wrap=True)  # long lines stay whole in logs
    grid, opts = grid_options(args), launch_options(args, wait)
    plan = grid.plan()
    if not wait and not registry.get(opts.launcher).detaches:
        return detach(plan, grid, opts, console)
    grid_run.prepare(plan, opts.tracking_uri, args.command)  # the grid's run: new runs nest under it
    launched = execute(plan, opts, console)
    code = summarize(launched)
    if wait:
        report = claim_options(args).report(plan, opts.tracking_uri, grid.overrides)
        deliver(plan, opts.tracking_uri, report, Path(args.out), "reproduce", console)
    return code


def detach(plan, grid: GridOptions, opts: LaunchOptions, console) -> int:
    """`launch` with a launcher that trains in this process's children: a `reproduce` in its own session,
    output to a log file."""
    todo, _, _ = missing(plan, opts.tracking_uri)
    if not todo:
        console.print(
            f"nothing to launch: every one of the {len(plan.runs)} planned run(s) is finished", highlight=False
        )
        return 0
    log = Path(opts.workdir) / "logs" / f"launch-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "orchestrator.cli", "reproduce", *grid.argv(), *launch_argv(opts)]
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    with open(log, "ab") as f:
        p = subprocess.Popen(
            argv,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=path),
            start_new_session=True,
        )
    console.print(
        f"launched in the background (pid {p.pid}): {' '.join(argv[3:])}\n"
        f"  follow it: tail -f {log}\n  see it in MLflow: kdgrid ui --tracking-uri {opts.tracking_uri}",
        highlight=False,
    )
    return 0


def launch_argv(opts: LaunchOptions) -> list[str]:
    """Resolved launch options on a command line (what a background `reproduce` is given)."""
    argv = ["--tracking-uri", str(opts.tracking_uri), "--workdir", str(opts.workdir), "--launcher", opts.launcher]
    argv += ["--threads", str(opts.threads), "--schedule", opts.schedule]
    for flag, value in (
        ("--workers", opts.workers),
        ("--max-cohort", opts.max_cohort),
        ("--ray-address", opts.ray_address),
        ("--slurm-config", opts.slurm_config),
        ("--cost-store", opts.cost_store),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv + ([] if opts.cohorts else ["--no-cohorts"])
