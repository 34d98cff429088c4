"""The grid's own MLflow run: one parent per (scale, recipe), with every unique run of the grid as its child.

MLflow nests a run under the run named by its `mlflow.parentRunId` tag, so the UI shows the grid as one
expandable row. The parent is found again by its `kdgrid.grid` tag, so a rerun reuses it. The tag is
handed to the trainer with the planned specs' tags (not hashed), so runs nest as they are created; runs
that exist already (trained before, or by a launcher that does not carry tags) are adopted here. A run
shared by two grids (the hard and no-distillation rows are the same runs under both recipes) stays the
child of the grid that trained it first; the other grid lists it in its description.

`kdgrid reproduce` and `kdgrid report` publish the report on the parent (`publish`): the files they wrote
(md, html, tex, figure), and every table (CSV; JSON through `mlflow.log_table`) with a summary, handed over
as `Published` so that this module knows MLflow and nothing of how a report is built.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.grid import TABLE_IDS, load_recipes
from trainer import tracking

GRID = "kdgrid.grid"  # on the parent: "<scale>/<recipe>"
GRID_ROLE = "grid"
# A saved view of the run list (MLflow's shared view state, an experiment tag): the columns that tell runs
# apart. Open it with `#/experiments/<id>/runs?viewStateShareKey=kdgrid`.
VIEW_KEY = "kdgrid"
VIEW = {
    "selectedColumns": [
        "attributes.`Source`",
        "attributes.`Dataset`",
        "metrics.`last_top1`",
        "metrics.`best_top1`",
        "tags.`kdgrid.seed`",
        "tags.`kdgrid.recipe`",
        "tags.`kdgrid.tables`",
        "tags.`kdgrid.rows`",
        "metrics.`throughput.images_per_s`",
    ],
}


def view_url(base_url: str, experiment_id: str) -> str:
    return f"{base_url}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"


def grid_key(plan: Any) -> str:
    return f"{plan.scale}/{plan.recipe}"


def source_command(command: str, plan: Any) -> str:
    """The kdgrid command, for MLflow's Source column (no paths: the UI shows what follows the last '/')."""
    args = ["kdgrid", command, "--scale", str(plan.scale)]
    tables = [str(t.table) for t in plan.tables]
    if sorted(tables) != sorted(TABLE_IDS):
        args += ["--tables", ",".join(tables)]
    if plan.seeds != 1:
        args += ["--seeds", str(plan.seeds)]
    book = load_recipes()
    if plan.recipe != book.canonical(book.default):  # the default recipe goes without saying
        args += ["--recipe", str(plan.recipe)]
    return shlex.join(args)


def _note(plan: Any, found: dict, parent_id: str) -> str:
    elsewhere = [
        r
        for r in plan.runs
        if r.hash in found and found[r.hash].data.tags.get(tracking.PARENT) not in (None, parent_id)
    ]
    lines = [
        f"**The {plan.scale} grid, recipe `{plan.recipe}`**: the paper's tables rebuilt at scale "
        f"'{plan.scale}'. Each child run is one unique training run; a run that several table rows share "
        f"is trained once (its description lists the rows).",
        "",
        f"Last planned: {len(plan.runs)} runs ({len(plan.teachers)} teachers, {len(plan.students)} students) "
        f"for tables {', '.join(str(t.table) for t in plan.tables)}, {plan.seeds} seed(s).",
        "",
        "The report is in this run's artifacts (`report/`: md, html, tex, Figure 4; `tables/`: CSV and JSON).",
    ]
    if elsewhere:
        lines += [
            "",
            f"{len(elsewhere)} of its runs were trained first by another grid and are nested there: "
            + ", ".join(f"`{found[r.hash].info.run_name}`" for r in elsewhere[:12])
            + (" …" if len(elsewhere) > 12 else ""),
        ]
    return "\n".join(lines)


def ensure(c, plan: Any, command: str = "reproduce") -> str:
    """The parent run of this plan's grid, created on first use; returns its run id."""
    exp = tracking.experiment_id(c, plan.scale)
    tracking.retry(c.set_experiment_tag, exp, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(VIEW))
    key = grid_key(plan)
    found = tracking.retry(
        c.search_runs,
        [exp],
        filter_string=f"tags.`{GRID}` = '{key}'",
        order_by=["attributes.start_time ASC"],
        max_results=5,
    )
    tags = {
        tracking.ROLE: GRID_ROLE,
        GRID: key,
        tracking.SCALE: plan.scale,
        tracking.RECIPE: plan.recipe,
        tracking.SOURCE: source_command(command, plan),
        tracking.SOURCE_TYPE: "LOCAL",
    }
    if found:
        run_id = found[0].info.run_id
        tracking.RunLog(c, run_id).set_tags(tags)
        return run_id
    run = tracking.retry(c.create_run, exp, tags=tags, run_name=f"grid · {plan.scale} · {plan.recipe} recipe")
    tracking.retry(c.set_terminated, run.info.run_id, "FINISHED")  # the grid's state is its children's
    return run.info.run_id


def attach(c, plan: Any, parent_id: str, command: str = "reproduce") -> dict:
    """Tag the planned specs (so new runs are created as children) and adopt the plan's existing runs that
    have no parent yet. Returns {hash: MLflow run} of the plan's runs found in the store."""
    source = source_command(command, plan)
    for r in plan.runs:
        r.spec.tags[tracking.PARENT] = parent_id
        r.spec.tags[tracking.SOURCE] = source
    found = tracking.runs_by_hash(c, plan.scale, [r.hash for r in plan.runs])
    for r in plan.runs:
        run = found.get(r.hash)
        if run is None or run.data.tags.get(tracking.PARENT):
            continue
        log = tracking.RunLog(c, run.info.run_id)
        log.set_tags({tracking.PARENT: parent_id, tracking.NOTE: r.spec.tags.get(tracking.NOTE, "")})
        if r.spec.name and run.info.run_name != r.spec.name:  # runs named before names told rows apart
            tracking.retry(c.update_run, run.info.run_id, name=r.spec.name)
    tracking.RunLog(c, parent_id).set_tags({tracking.NOTE: _note(plan, found, parent_id)})
    return found


def prepare(plan: Any, tracking_uri: str, command: str = "reproduce") -> str:
    """ensure + attach: what `kdgrid launch/reproduce` does before launching."""
    c = tracking.client(tracking_uri)
    parent = ensure(c, plan, command)
    attach(c, plan, parent, command)
    return parent


def selection_dir(plan: Any) -> str:
    """Where in the parent's artifacts a report goes: `report/` for the whole grid with one seed, else a
    folder named by the selection (`report/tables-3-6-seeds-2/`), so partial reports do not overwrite it."""
    tables = [str(t.table) for t in plan.tables]
    parts = []
    if sorted(tables) != sorted(TABLE_IDS):
        parts.append("tables-" + "-".join(tables))  # MLflow forbids "," in a table's artifact path
    if plan.seeds != 1:
        parts.append(f"seeds-{plan.seeds}")
    return "report" + ("/" + "-".join(parts) if parts else "")


def _log_table(c, run_id: str, records: list[dict], artifact_file: str, existing: set[str]) -> None:
    """mlflow.log_table, which the UI renders; it appends to an existing file, so a rerun rewrites it."""
    import pandas as pd

    df = pd.DataFrame.from_records(records)
    if artifact_file not in existing:
        tracking.retry(c.log_table, run_id, df, artifact_file)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        df.to_json(path, orient="split", index=False, date_format="iso")
        tracking.retry(c.log_artifact, run_id, str(path), str(Path(artifact_file).parent))


def _listing(c, run_id: str, path: str) -> set[str]:
    try:
        return {f.path for f in tracking.retry(c.list_artifacts, run_id, path)}
    except Exception:
        return set()


@dataclass
class Table:
    """One table of the report as data: its id ("2".."7", "fig4"), CSV text and records (column -> value)."""

    table: str
    csv: str
    records: list[dict]

    @property
    def stem(self) -> str:
        return "figure4" if self.table == "fig4" else f"table{self.table}"


@dataclass
class Published:
    """What goes on the grid's run: the report files as written, its tables, and its summary."""

    files: dict[str, Path]  # format -> path (md, html, latex, figure)
    tables: list[Table] = field(default_factory=list)
    summary_json: str = "{}"
    runs: int = 0  # planned runs
    finished: int = 0


def log_report(c, parent_id: str, plan: Any, report: Published) -> list[str]:
    """Log the report's files and every table (CSV, and JSON through log_table) on the parent.
    Returns the artifact paths logged."""
    base = selection_dir(plan)
    logged: list[str] = []
    for path in report.files.values():
        tracking.retry(c.log_artifact, parent_id, str(path), base)
        logged.append(f"{base}/{Path(path).name}")
    tables_dir = base.replace("report", "tables", 1)
    existing = _listing(c, parent_id, tables_dir)
    with tempfile.TemporaryDirectory() as tmp:
        for t in report.tables:
            csv_path = Path(tmp) / f"{t.stem}.csv"
            csv_path.write_text(t.csv, encoding="utf-8")
            tracking.retry(c.log_artifact, parent_id, str(csv_path), tables_dir)
            _log_table(c, parent_id, t.records, f"{tables_dir}/{t.stem}.json", existing)
            logged += [f"{tables_dir}/{t.stem}.csv", f"{tables_dir}/{t.stem}.json"]
        summary = Path(tmp) / "report.json"
        summary.write_text(report.summary_json, encoding="utf-8")
        tracking.retry(c.log_artifact, parent_id, str(summary), base)
        logged.append(f"{base}/report.json")
    tracking.RunLog(c, parent_id).log_metrics({"grid.runs": report.runs, "grid.finished": report.finished}, step=0)
    return logged


def publish(plan: Any, tracking_uri: str, report: Published, command: str = "report") -> tuple[str, list[str]]:
    """ensure + attach + log_report. Returns (parent id, artifacts)."""
    c = tracking.client(tracking_uri)
    parent = ensure(c, plan, command)
    attach(c, plan, parent, command)
    logged = log_report(c, parent, plan, report)
    tracking.retry(c.set_terminated, parent, "FINISHED")  # its duration: from the grid's start to this report
    return parent, logged


def children(c, experiment_id: str, parent_id: str) -> list:
    return list(
        tracking.retry(
            c.search_runs, [experiment_id], filter_string=f"tags.`{tracking.PARENT}` = '{parent_id}'", max_results=1000
        )
    )
