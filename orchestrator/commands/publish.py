"""The last steps of the commands that report: the report written (once), printed, and published on the
grid's MLflow run, so the UI holds what the folder holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.report import export, render, write_reports
from orchestrator.report.build import Report
from orchestrator.tracking import grid_run

FORMATS = ("md", "html", "latex")  # what `reproduce` writes into --out


def deliver(plan: Any, uri: str, report: Report, out: Path, command: str, console, extra=None) -> None:
    """Write the report into `out` (with `extra` files already there: {name: path}), print it, and
    publish the very files written on the grid's run."""
    files = write_reports(plan, uri, out, formats=FORMATS, report=report)
    print(render.markdown(report))
    console.print("report written: " + ", ".join(str(p) for p in files.values()), highlight=False)
    if report.error is None:
        publish(plan, uri, report, files | dict(extra or {}), command, console)


def published(report: Report, files: dict[str, Path]) -> grid_run.Published:
    """The report as the grid's run keeps it: the files written, every table as CSV and records, a summary."""
    return grid_run.Published(
        files=files,
        tables=[
            grid_run.Table(str(t.table), export.table_csv(t), export.table_records(t))
            for t in export.all_tables(report)
        ],
        summary_json=export.to_json(report),
        runs=report.total,
        finished=report.counts.get("finished", 0),
    )


def publish(plan: Any, uri: str, report: Report, files: dict[str, Path], command: str, console) -> None:
    """Log the report on the grid's run. The runs are trained and the report is on disk: a store that
    refuses an artifact fails nothing, it is said."""
    try:
        parent, _ = grid_run.publish(plan, uri, published(report, files), command=command)
    except Exception as err:
        console.print(
            f"report not logged on the grid's MLflow run: {type(err).__name__}: {err}", highlight=False, markup=False
        )
        return
    console.print(f"report logged on the grid's MLflow run {parent}", highlight=False)
