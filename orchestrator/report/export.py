"""The report's tables as data: one record per table row, numbers as numbers, for CSV, JSON and MLflow.

`kdgrid report --format csv` prints every row of every table (a `table` column tells them apart);
`--format json` prints the tables with their rows, the claims and the counts. The grid's MLflow run gets
the same per table (tables/table3.csv, and tables/table3.json through mlflow.log_table).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from orchestrator.report.build import Report
from orchestrator.report.tables import TableModel


def _stat(s, prefix: str) -> dict[str, Any]:
    return {f"{prefix}_mean": s.mean if s else None, f"{prefix}_std": s.std if s else None}


def table_records(t: TableModel) -> list[dict[str, Any]]:
    out = []
    for r in t.rows:
        rec: dict[str, Any] = {"table": t.table, "row": r.index + 1, "key": r.key}
        rec.update({header: r.cells.get(f, "") for header, f in t.columns})
        rec["paper_acc1"] = r.paper_acc1
        rec.update(_stat(r.last, "top1_last"))
        rec.update(_stat(r.best, "top1_best"))
        rec.update(
            {
                "delta_last_paper": r.delta,
                "rank_grid": r.rank_grid,
                "rank_paper": r.rank_paper,
                "seeds_done": r.seeds_done,
                "seeds_planned": len(r.runs),
                "complete": r.complete,
                "status": r.status,
                "run_ids": " ".join(x.run_id or "-" for x in r.runs),
            }
        )
        if t.has_teacher_acc:
            rec["teacher_acc1_paper"] = r.teacher_paper
            rec["teacher_acc1_grid"] = r.teacher_grid.mean if r.teacher_grid else None
        out.append(rec)
    return out


def all_tables(report: Report) -> list[TableModel]:
    return [*report.tables, *([report.fig4] if report.fig4 is not None else [])]


def _csv(records: list[dict[str, Any]]) -> str:
    fields: list[str] = []
    for rec in records:
        fields += [k for k in rec if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow({k: "" if v is None else v for k, v in rec.items()})
    return buf.getvalue()


def table_csv(t: TableModel) -> str:
    return _csv(table_records(t))


def to_csv(report: Report) -> str:
    """Every row of every table, in one CSV (columns are the union; a table's own columns are blank elsewhere)."""
    return _csv([rec for t in all_tables(report) for rec in table_records(t)])


def to_json(report: Report) -> str:
    return json.dumps(
        {
            "scale": report.scale,
            "recipe": report.recipe,
            "seeds": report.seeds,
            "generated": report.generated,
            "counts": dict(report.counts),
            "complete": report.complete,
            "command": report.command,
            "tables": [{"table": t.table, "heading": t.heading, "rows": table_records(t)} for t in all_tables(report)],
            "claims": [
                {"id": c.id, "table": c.table, "claim": c.text, "verdict": c.verdict, "note": c.note}
                for c in report.claims
            ],
        },
        indent=1,
        default=str,
    )
