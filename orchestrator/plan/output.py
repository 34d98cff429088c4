"""A plan shown (a table of its runs with their status) and written out (a spec per run and plan.yaml)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.plan.describe import batch_line, describe
from orchestrator.plan.model import Plan
from trainer import tracking

STATE_STYLE = {"finished": "green", "partial": "yellow", "missing": "dim"}


def print_plan(plan: Plan, states: dict[str, str], note: str | None = None, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=220)
    tables = ",".join(t.table for t in plan.tables)
    pairs = plan.rows_before_dedup - len(plan.teachers)
    title = (
        f"kdgrid plan · scale {plan.scale} · recipe {plan.recipe} · tables {tables} · "
        f"{plan.seeds} seed{'s' if plan.seeds > 1 else ''}"
    )
    table = Table(title=title, show_lines=False, header_style="bold")
    for col in ("id", "rows", "seed", "teacher", "student", "method", "settings", "status"):
        table.add_column(col, overflow="fold")
    for r in plan.runs:
        teacher, student, method, settings = describe(r)
        uses = (
            ",".join(u.key for u in r.uses)
            if r.role == "student"
            else f"teacher of {r.spec.tags.get(tracking.TABLES, '')}"
        )
        state = states.get(r.hash, "missing")
        table.add_row(
            r.hash[:8], uses, str(r.seed), teacher, student, method, settings, f"[{STATE_STYLE[state]}]{state}[/]"
        )
    console.print(table)
    counts = {k: sum(1 for r in plan.runs if states.get(r.hash, "missing") == k) for k in STATE_STYLE}
    merged = plan.rows_before_dedup - len(plan.runs)

    def n(k: int, what: str) -> str:
        return f"{k} {what}{'' if k == 1 else 's'}"

    console.print(
        f"{plan.rows_before_dedup} runs before deduplication ({n(pairs, 'row×seed pair')} + "
        f"{n(len(plan.teachers), 'teacher run')}) → {len(plan.runs)} unique runs after deduplication "
        f"({n(len(plan.students), 'student')}, {n(len(plan.teachers), 'teacher')}; {merged} merged)",
        highlight=False,
    )
    for role, runs in (("students", plan.students), ("teachers", plan.teachers)):
        batches = dict.fromkeys(batch_line(r.spec.recipe) for r in runs)
        if batches:
            console.print(f"batch of the {role}: " + "; ".join(batches), highlight=False)
    console.print("status: " + ", ".join(f"{counts[k]} {k}" for k in STATE_STYLE), highlight=False)
    if note:
        console.print(f"[dim]{note}[/]")


def dump_plan(plan: Plan, out: str | Path) -> Path:
    """Each planned run's resolved spec as DIR/<hash>.yaml (what `kdgrid train` reads), and DIR/plan.yaml."""
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for r in plan.runs:
        path = out / f"{r.hash}.yaml"
        path.write_text(r.spec.to_yaml())
        index.append(
            dict(
                hash=r.hash,
                role=r.role,
                name=r.spec.name,
                seed=r.seed,
                uses=[u.key for u in r.uses],
                deps=r.deps,
                spec=path.name,
            )
        )
    doc = dict(
        scale=plan.scale,
        recipe=plan.recipe,
        seeds=plan.seeds,
        tables=[t.table for t in plan.tables],
        rows_before_dedup=plan.rows_before_dedup,
        launch=plan.launch,
        runs=index,
    )
    (out / "plan.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return out
