"""What the MLflow UI shows of a planned run: a name that tells the table rows apart, and a description.

The name carries what distinguishes the run's first row — teacher → student, then the method or the
settings the row varies, as each method writes its own (`Method.name_parts`: "CaiT-S24→DeiT-Tiny ·
L_ci+L_cp", "… · k=384", "… · blocks {3,4,9,10}", "… · soft · τ=3 λ=0.1 kl/elements · class token"); the
description (`mlflow.note.content`, Markdown) lists every table row the run stands for, as the paper
prints it, and what the run trains.
"""

from __future__ import annotations

from orchestrator.grid import AblationRow, AblationTable, method_label
from trainer import methods


def _model(name: str | None) -> str:
    from trainer.models import DISPLAY

    return DISPLAY.get(name, name) if name else "-"


def distinguishing(row: AblationRow) -> list[str]:
    """The settings a row sets beyond teacher, student and method, each method in its own notation
    (`Method.name_parts`); a method that names nothing of a combined row is named by itself."""
    names = methods.split_row_method(row.method or "none")
    parts = {name: methods.row_methods()[name].name_parts(name, row) for name in names}
    if not any(parts.values()):
        return []
    return [p for name in names for p in (parts[name] or [name])]


def run_name(row: AblationRow, seed: int) -> str:
    pair = f"{_model(row.teacher)}→{_model(row.student)}" if row.teacher else _model(row.student)
    what = distinguishing(row) or [method_label(row.method).lower()]
    return " · ".join([pair, *what] + ([f"seed {seed}"] if seed else []))


def teacher_name(paper_model: str, seed: int) -> str:
    return f"teacher · {_model(paper_model)}" + (f" · seed {seed}" if seed else "")


def row_line(table: AblationTable, index: int) -> str:
    row = table.rows[index]
    cells = " | ".join(
        f"{c.header}: {row.display(c.field, c.format)}" for c in table.columns if c.field != "paper_acc1"
    )
    acc = f"; paper Acc1 {row.paper_acc1:.2f}" if row.paper_acc1 is not None else ""
    label = f"Figure 4, curve {row.curve}" if table.table == "fig4" else f"Table {table.table}, row {index + 1}"
    return f"- {label} (`{table.row_key(index)}`): {cells}{acc}"


def description(uses: list[tuple[AblationTable, int]], trains: str, seed: int, recipe: str | None) -> str:
    lines = [f"**Stands for {len(uses)} table row{'s' if len(uses) != 1 else ''}** (one run, trained once):", ""]
    lines += [row_line(t, i) for t, i in uses]
    lines += ["", f"**Trains:** {trains}; seed {seed}" + (f"; recipe `{recipe}`" if recipe else "") + "."]
    return "\n".join(lines)


def teacher_description(paper_model: str, tables: str, trains: str) -> str:
    return (
        f"**Teacher** {_model(paper_model)} for the rows of tables {tables} that distil from it "
        f"(trained in the grid at this scale, before its students).\n\n**Trains:** {trains}."
    )
