"""`kdgrid report`: Tables 2-7 and Figure 4 rebuilt from MLflow beside the paper's numbers, printed or
written, and published on the grid's MLflow run; with several recipes (`--recipe all`, `a,b`), the
recipes side by side in one Markdown document."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from orchestrator.commands.options import claim_options, grid_options
from orchestrator.commands.publish import publish
from orchestrator.grid import load_recipes, recipe_names
from orchestrator.report import export, render, write_reports
from orchestrator.report import recipes as side_by_side
from orchestrator.report.build import Report
from orchestrator.report.seeds import added_seeds
from trainer import atomic
from trainer.tracking import OUTAGE_S, default_uri

DATA = {"csv": export.to_csv, "json": export.to_json}  # every table row as data
TEXT = {"md": render.markdown, "latex": render.latex, "html": render.html, **DATA}
MAX_ADDED_SEEDS = 20  # how far `--added-seeds` looks for seeds `--resolve` added


def run(args) -> int:
    uri = args.tracking_uri or default_uri()
    # An unreachable server fails in seconds, not after MLflow's default minutes of retries, nor after the
    # outage a training process waits out (trainer.tracking.retry): a reader has nothing to lose.
    for var, value in (
        (OUTAGE_S, "0"),
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"),
    ):
        os.environ.setdefault(var, value)
    names = recipe_names(load_recipes(), args.recipe)  # "all" or "a,b": the recipes side by side
    if len(names) > 1:
        return run_recipes(args, names, uri)
    plan, report = load(args, names[0], uri)
    if report.error:  # every row would read "missing": say what is wrong instead
        return _unreadable(uri, report)
    if args.out:
        paths = _write(args, plan, uri, report)
        for kind, path in paths.items():
            print(f"{kind}: {path}")
        print(report.summary() + ".")
    else:
        sys.stdout.write(TEXT[args.format](report))
    if report.total > report.counts.get("missing", 0):  # something was trained: the report goes on the grid's run
        with tempfile.TemporaryDirectory() as tmp:
            publish(plan, uri, report, write_reports(plan, uri, tmp, report=report), "report", Console(stderr=True))
    if not report.complete:
        _missing(report, sys.stderr if not args.out else sys.stdout)
    return 0


def load(args, recipe: str, uri: str):
    """The report's plan and the report; with --added-seeds, the rows `reproduce --resolve` gave more seeds
    keep them."""
    grid = grid_options(args, recipe)
    row_seeds = None
    if args.added_seeds:
        row_seeds = added_seeds(grid.plan(seeds=MAX_ADDED_SEEDS), uri, grid.seeds)
    plan = grid.plan(row_seeds=row_seeds)
    return plan, claim_options(args).report(plan, uri, grid.overrides)


def _write(args, plan, uri: str, report: Report) -> dict[str, Path]:
    """The requested format into --out: the report (with its figure), or the tables as data."""
    if args.format not in DATA:
        return write_reports(plan, uri, args.out, formats=(args.format,), report=report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"tables.{args.format}"
    atomic.write_text(path, DATA[args.format](report))
    return {args.format: path}


def run_recipes(args, names: list[str], uri: str) -> int:
    """Several recipes side by side, in Markdown."""
    if args.format != "md":
        print(
            f"error: --format {args.format}: several recipes are reported side by side in Markdown only "
            "(report one recipe at a time for LaTeX or HTML)",
            file=sys.stderr,
        )
        return 2
    reports = {n: load(args, n, uri)[1] for n in names}
    for r in reports.values():
        if r.error:
            return _unreadable(uri, r)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        figures = {}
        for n, r in reports.items():
            if png := r.figure_png():
                atomic.write_bytes(out / f"figure4-{n}.png", png)
                figures[n] = f"figure4-{n}.png"
        atomic.write_text(out / "report.md", side_by_side.markdown(reports, figures))
        print(f"md: {out / 'report.md'}")
    else:
        sys.stdout.write(side_by_side.markdown(reports))
    for n, r in reports.items():
        if not r.complete:
            _missing(r, sys.stderr if not args.out else sys.stdout, f"recipe {n}: ")
    return 0


def _unreadable(uri: str, report: Report) -> int:
    print(
        f"error: the MLflow store at {uri} could not be read: {report.error}\n"
        f"(check --tracking-uri / $MLFLOW_TRACKING_URI; `kdgrid ui` serves a local store)",
        file=sys.stderr,
    )
    return 1


def _missing(report: Report, stream, prefix: str = "") -> None:
    missing = report.total - report.counts.get("finished", 0)
    print(
        f"\n{prefix}{missing} of {report.total} planned runs have no final result yet. To train them:\n"
        f"  {report.command}",
        file=stream,
    )
