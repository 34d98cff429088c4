"""`kdgrid report` and `kdgrid ui`: Tables 2-7 and Figure 4 rebuilt from MLflow beside the paper's numbers.

    collect.py  MLflow -> one RunResult per planned run (one paged search; val.top1 histories for Figure 4)
    tables.py   pure: plan's table definitions + results -> table models (mean ± std over seeds, states)
    claims.py   pure: the paper's claims (Sections 4.2-4.3) checked against the table models
    figure.py   Figure 4's curves, drawn with matplotlib (Agg) to PNG
    build.py    the Report: tables, curves, claims, what is missing and the command that trains it
    render.py   Markdown, LaTeX, self-contained HTML

The report reads MLflow only: not the work directory, not checkpoints. The plan supplies the table
definitions (code and data in this repository) and the content hashes to look up.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestrator.report.build import Report, build_report

EXT = {"md": "md", "latex": "tex", "html": "html"}
FIGURE = "figure4.png"


def render_markdown(plan: Any, tracking_uri: str, overrides: Iterable[str] = ()) -> str:
    """The report as Markdown, for the terminal (Figure 4 summarised in words). `overrides`: the plan's
    `--set` options, repeated in the hint that trains what is missing."""
    from orchestrator.report import render

    return render.markdown(build_report(plan, tracking_uri, tuple(overrides)))


def write_reports(
    plan: Any,
    tracking_uri: str,
    out_dir: str | Path,
    formats: Iterable[str] = ("md", "html", "latex"),
    report: Report | None = None,
    overrides: Iterable[str] = (),
) -> dict[str, Path]:
    """Write report.md / report.html / report.tex (and figure4.png beside them) into `out_dir`.
    Returns {format: path}, with "figure" when there was a curve to draw."""
    from orchestrator.report import render

    report = report or build_report(plan, tracking_uri, tuple(overrides))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    png = report.figure_png()
    fig = None
    if png:
        (out / FIGURE).write_bytes(png)
        paths["figure"] = out / FIGURE
        fig = FIGURE
    for fmt in formats:
        if fmt not in EXT:
            raise ValueError(f"unknown report format {fmt!r}: md, latex or html")
        text = {
            "md": lambda: render.markdown(report, fig),
            "latex": lambda: render.latex(report, fig),
            "html": lambda: render.html(report),
        }[fmt]()
        path = out / f"report.{EXT[fmt]}"
        path.write_text(text, encoding="utf-8")
        paths[fmt] = path
    return paths


def cmd_report(args) -> int:
    from orchestrator.report import render
    from trainer.tracking import default_uri

    uri = args.tracking_uri or default_uri()
    # An unreachable server fails in seconds, not after MLflow's default minutes of retries.
    for var, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"),
    ):
        os.environ.setdefault(var, value)
    from orchestrator.grid import load_recipes, recipe_names

    names = recipe_names(load_recipes(), args.recipe)  # "all" or "a,b": the recipes side by side
    if len(names) > 1:
        from orchestrator.report.recipes import cmd_report_recipes

        return cmd_report_recipes(args, names, uri)
    plan = _plan(args, names[0], uri)  # a GridError is printed by the CLI (exit code 2)
    report = build_report(
        plan, uri, tuple(args.overrides), test=getattr(args, "test", "welch"), level=getattr(args, "level", 0.95)
    )
    if report.error:  # every row would read "missing": say what is wrong instead
        print(
            f"error: the MLflow store at {uri} could not be read: {report.error}\n"
            f"(check --tracking-uri / $MLFLOW_TRACKING_URI; `kdgrid ui` serves a local store)",
            file=sys.stderr,
        )
        return 1
    from orchestrator.report import export

    data = {"csv": export.to_csv, "json": export.to_json}
    paths: dict[str, Path] = {}
    if args.out and args.format in data:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {args.format: out / f"tables.{args.format}"}
        paths[args.format].write_text(data[args.format](report), encoding="utf-8")
    elif args.out:
        paths = write_reports(plan, uri, args.out, formats=(args.format,), report=report)
    if args.out:
        for kind, path in paths.items():
            print(f"{kind}: {path}")
        print(report.summary() + ".")
    else:
        text = {"md": render.markdown, "latex": render.latex, "html": render.html, **data}[args.format](report)
        sys.stdout.write(text)
    if report.total > report.counts.get("missing", 0):  # something was trained: the report goes on the grid's run
        from orchestrator import parent_run

        parent, _ = parent_run.publish(plan, uri, report)
        print(f"report logged on the grid's MLflow run {parent}", file=sys.stderr)
    if not report.complete:
        missing = report.total - report.counts.get("finished", 0)
        print(
            f"\n{missing} of {report.total} planned runs have no final result yet. To train them:\n  {report.command}",
            file=sys.stderr if not args.out else sys.stdout,
        )
    return 0


def _plan(args, recipe: str, uri: str):
    """The report's plan; with --added-seeds, the rows `reproduce --resolve` gave more seeds keep them."""
    from orchestrator.plan import make_plan

    row_seeds = None
    if getattr(args, "added_seeds", False):
        from orchestrator.resolve import added_seeds

        row_seeds = added_seeds(args.scale, args.tables, args.seeds, recipe, list(args.overrides), uri)
    return make_plan(
        scale=args.scale,
        tables=args.tables,
        seeds=args.seeds,
        recipe=recipe,
        overrides=list(args.overrides),
        row_seeds=row_seeds,
    )


def cmd_ui(args) -> int:
    from orchestrator.report.ui import serve

    return serve(args.tracking_uri, host=args.host, port=args.port)
