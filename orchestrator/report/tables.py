"""Pure: the plan's table definitions + per-run results -> table models, row by row.

Each row keeps the paper's printed cells and Acc1 beside this grid's numbers over its seeds: the
final-epoch (`last_top1`) and best-epoch (`best_top1`) top-1 as mean ± sample std, the difference to its
reference (the paper's Acc1, or the recipe's own where experiments/sources.yaml gives one: the released
code's README for `--recipe released`), how many seeds finished, the run ids, and, where a seed has no number
yet, what it is doing instead. A teacher column shows the paper's number, the top-1 expected of the weights
loaded (timm's results) and the grid's measurement.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.report.collect import RunResult

ACC_FIELDS = {"acc1", "paper_acc1", "student_acc1"}  # the paper's result column, shown beside ours instead
TEACHER_ACC_FIELDS = {"teacher_acc1", "teacher_acc"}


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds; std is None with fewer than two values."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None

    def fmt(self, digits: int = 2) -> str:
        s = f"{self.mean:.{digits}f}"
        return s if self.std is None else f"{s} ± {self.std:.{digits}f}"


def stat(values: Sequence[float | None]) -> Stat | None:
    vals = tuple(float(v) for v in values if v is not None and math.isfinite(v))
    return Stat(vals) if vals else None


@dataclass
class RowModel:
    index: int
    key: str
    cells: dict[str, str]  # field -> the paper's printed value
    paper_acc1: float | None
    seeds: list[int]
    runs: list[RunResult]  # one per seed, in seed order
    last: Stat | None = None  # over the finished seeds
    best: Stat | None = None
    notes: list[str] = field(default_factory=list)  # "seed 1: running (epoch 3/10)", ...
    short_notes: list[str] = field(default_factory=list)  # the same without failure reasons
    teacher_paper: float | None = None  # Table 2
    teacher_grid: Stat | None = None  # measured by this grid
    teacher_note: str | None = None
    teacher_expected: float | None = None  # timm's top-1 of the hub weights loaded (experiments/sources.yaml)
    reference: Reference | None = None  # the recipe's own reference where it is not the paper's
    curve: str | None = None  # Figure 4: none | hard | manifold
    head: str | None = None  # the head of a distilled student this row reads (DeiT's Table 5): cls | dist | avg
    rank_grid: int | None = None  # within rows of the same student (1 = highest)
    rank_paper: int | None = None

    @property
    def reference_acc1(self) -> float | None:
        """What the row is judged against: its recipe's reference, else the paper's Acc1."""
        return self.reference.acc1 if self.reference is not None else self.paper_acc1

    @property
    def delta(self) -> float | None:
        if self.last is None or self.reference_acc1 is None:
            return None
        return self.last.mean - self.reference_acc1

    @property
    def seeds_done(self) -> int:
        return sum(r.finished for r in self.runs)

    @property
    def complete(self) -> bool:
        return bool(self.runs) and self.seeds_done == len(self.runs)

    @property
    def status(self) -> str:
        """What stands in place of a number while no seed has finished: 'missing', 'running (epoch 3/10)'."""
        if self.last is not None:
            return "ok" if self.complete else "partial"
        return _summary(self.notes)

    @property
    def short_status(self) -> str:
        """`status` without failure reasons, for a table cell: 'seed 0: running (epoch 1/2); seed 1: failed'."""
        return _summary(self.short_notes) if self.last is None else self.status

    @property
    def run_ids(self) -> list[str]:
        return [r.short_id for r in self.runs]


def _summary(notes: list[str]) -> str:
    """One state when every seed is in it, else each seed's."""
    texts = sorted({n.split(": ", 1)[1] for n in notes}) if notes else ["missing"]
    return texts[0] if len(texts) == 1 else "; ".join(notes)


@dataclass
class TableModel:
    table: str  # "2".."7" or "fig4"
    title: str
    caption: str
    columns: list[tuple[str, str]]  # (header, field): the paper's printed columns except Acc1
    rows: list[RowModel]
    source: str = ""  # where the printed Acc1 comes from (the table's `source`; Jia et al. when unset)
    teacher_weights: str = ""  # where the teachers' expected top-1 comes from

    @property
    def label(self) -> str:
        return "Figure 4" if self.table == "fig4" else (f"Table {self.table}" if self.table.isdigit() else self.table)

    @property
    def heading(self) -> str:
        """'Table 3: <title>' (the title may carry the label already; other papers' tables: their title)."""
        if not self.table.isdigit() and self.table != "fig4":
            return self.title
        return self.title if self.title.startswith(self.label) else f"{self.label}: {self.title}"

    @property
    def has_teacher_acc(self) -> bool:
        return any(r.teacher_paper is not None or r.teacher_grid is not None for r in self.rows)

    @property
    def has_reference(self) -> bool:
        """Whether some row is judged against another number than the paper's."""
        return any(r.reference is not None for r in self.rows)

    def reference_line(self) -> str:
        """Which reference the Acc1 and Δ columns use, and where it comes from."""
        paper = f"Acc1 (paper): {self.source or 'Jia et al., arXiv 2107.01378v2'}"
        refs = {}
        for i, r in enumerate(self.rows, 1):
            if r.reference is not None:
                refs.setdefault((r.reference.acc1, r.reference.cited, r.reference.note), []).append(str(i))
        if not refs:
            return f"{paper}; Δ is against it."
        others = "; ".join(
            f"row{'s' if len(rows) > 1 else ''} {', '.join(rows)}: {acc:g}, {cited}" + (f" ({note})" if note else "")
            for (acc, cited, note), rows in refs.items()
        )
        return f"{paper}. Acc1 (reference) and Δ: the paper's, except {others}."

    def row(self, **match: str) -> RowModel | None:
        """The first row whose printed cells contain each given text (case- and space-insensitive)."""
        for r in self.rows:
            if all(_norm(text) in _norm(r.cells.get(f, "")) for f, text in match.items()):
                return r
        return None


def _norm(s: Any) -> str:
    return "".join(str(s).lower().split())


def run_status_text(r: RunResult, deps: Sequence[RunResult] = (), now: float | None = None, reason: bool = True) -> str:
    """One seed's state in words, in place of its number (`reason`: with a failure's reason)."""
    epochs = f"/{r.epochs}" if r.epochs else ""
    if r.status == "missing":
        started = [d for d in deps if not d.finished and d.status != "missing"]
        if started:  # a teacher running or failed: the student cannot start before it finishes
            return f"missing (its teacher is {run_status_text(started[0], reason=reason)})"
        return "missing"
    if r.status == "running":
        text = f"running (epoch {r.epoch or 0}{epochs}"
        if r.updated_ms is not None:
            idle = (now if now is not None else time.time()) - r.updated_ms / 1000
            if idle > 3600:
                text += f", no update for {idle / 3600:.0f} h"
        return text + ")"
    if r.status in ("failed", "killed"):
        at = f" at epoch {r.epoch}{epochs}" if r.epoch else ""
        if not reason:
            return f"{r.status}{at}"
        why = (r.reason or "").strip().splitlines()[0][:120] if r.reason else "no reason recorded"
        return f"{r.status}{at}: {why}"
    if r.status == "finished" and r.last_top1 is None:
        return "finished without last_top1"
    return r.status


def _cells(row: Any, columns: list[tuple[str, str, str | None]]) -> dict[str, str]:
    """The row's printed cells by field (the grid's AblationRow prints itself; dicts are read as they are)."""
    out = {}
    for _, f, fmt in columns:
        if hasattr(row, "display"):
            v = row.display(f, fmt)
        else:
            v = row.get(f, "") if isinstance(row, dict) else getattr(row, f, "")
        out[f] = "" if v is None else str(v)
    return out


def _attr(obj: Any, name: str, default=None):
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _columns(table: Any) -> list[tuple[str, str, str | None]]:
    """(header, field, number format) of each printed column."""
    return [(_attr(c, "header"), _attr(c, "field"), _attr(c, "format")) for c in _attr(table, "columns", [])]


@dataclass(frozen=True)
class Reference:
    """A recipe's own reference for a row (experiments/sources.yaml `references`)."""

    acc1: float
    cited: str  # "huawei-noah/Efficient-Computing@6c74f9a5 Distillation/ManifoldKD README.md:55 (...)"
    note: str = ""


def build_table(
    table: Any,
    row_runs: Callable[[int], Sequence[Any]],
    results: Callable[[str], RunResult],
    now: float | None = None,
    references: Callable[[str], Reference | None] | None = None,
    expected: Callable[[str], float | None] | None = None,
) -> TableModel:
    """One table model. `row_runs(i)`: the planned runs (one per seed) of row i; `results(hash)`;
    `references(seed-0 hash)`: a row's own reference, where not the paper's; `expected(weights)`: the top-1
    expected of a hub teacher's weights (timm name with its tag)."""
    cols = _columns(table)
    shown = [c for c in cols if c[1] not in ACC_FIELDS and c[1] not in TEACHER_ACC_FIELDS]
    teacher_field = next((f for _, f, _ in cols if f in TEACHER_ACC_FIELDS), None)
    rows = []
    for i, row in enumerate(_attr(table, "rows", [])):
        planned = sorted(row_runs(i), key=lambda p: p.seed)
        runs = [results(p.hash) for p in planned]
        head = _attr(row, "head")
        notes, short = [], []
        for p, r in zip(planned, runs):
            if not r.finished:
                deps = [results(d) for d in getattr(p, "deps", [])]
                notes.append(f"seed {p.seed}: {run_status_text(r, deps, now)}")
                short.append(f"seed {p.seed}: {run_status_text(r, deps, now, reason=False)}")
        paper = _attr(row, "paper_acc1")
        m = RowModel(
            index=i,
            key=str(_attr(row, "key", i)),
            cells=_cells(row, shown),
            paper_acc1=float(paper) if paper is not None else None,
            seeds=[p.seed for p in planned],
            runs=runs,
            notes=notes,
            short_notes=short,
            curve=_attr(row, "curve"),
            head=head,
            last=stat([r.top1(head, "last") for r in runs if r.finished]),
            best=stat([r.top1(head, "best") for r in runs if r.finished]),
        )
        if teacher_field is not None:
            t = _attr(row, teacher_field)
            m.teacher_paper = float(t) if t is not None else None
            m.teacher_grid, m.teacher_note = _teacher_acc(planned, runs, results)
            m.teacher_expected = _expected(planned, expected)
        if references is not None and planned:
            m.reference = references(planned[0].hash)
        rows.append(m)
    _rank(rows)
    return TableModel(
        table=str(_attr(table, "table")),
        title=str(_attr(table, "title", "")),
        caption=str(_attr(table, "caption", "")),
        columns=[(h, f) for h, f, _ in shown],
        rows=rows,
        source=str(_attr(table, "source", "") or ""),
    )


def _expected(planned: Sequence[Any], expected: Callable[[str], float | None] | None) -> float | None:
    """The top-1 expected of the row's teacher weights: timm's hub weights only (a file or a grid run has
    no published number)."""
    teacher = getattr(getattr(planned[0], "spec", None), "teacher", None) if planned else None
    if expected is None or teacher is None or getattr(teacher, "source", None) != "hub":
        return None
    return expected(teacher.name)


def _teacher_acc(
    planned: Sequence[Any], runs: Sequence[RunResult], results: Callable[[str], RunResult]
) -> tuple[Stat | None, str | None]:
    """This grid's teacher accuracy: the teacher runs' own `last_top1` when the grid trains them,
    else the `teacher.top1` its students measured at step 0 (the same frozen weights for every seed)."""
    values, notes, seen = [], [], set()
    for p, r in zip(planned, runs):
        teacher = getattr(p.spec, "teacher", None)
        if teacher is not None and getattr(teacher, "source", None) == "run" and teacher.run:
            if teacher.run in seen:
                continue
            seen.add(teacher.run)
            t = results(teacher.run)
            if t.finished:
                values.append(t.last_top1)
            else:
                notes.append(f"teacher {run_status_text(t)}")
        elif r.teacher_top1 is not None:
            key = (getattr(teacher, "name", None), getattr(teacher, "source", None), getattr(teacher, "path", None))
            if key not in seen:  # hub/checkpoint weights are the same for every seed
                seen.add(key)
                values.append(r.teacher_top1)
    s = stat(values)
    return s, (None if s is not None else (notes[0] if notes else "missing"))


def _rank(rows: list[RowModel]) -> None:
    """Rank rows by this grid's final-epoch mean and by the paper, among rows of the same student that
    both have a number: the ordering, not the absolute level, is what carries across scales."""
    groups: dict[str, list[RowModel]] = {}
    for r in rows:
        if r.last is not None and r.paper_acc1 is not None:
            groups.setdefault(_norm(r.cells.get("student", "")), []).append(r)
    for group in groups.values():
        if len(group) < 2:
            continue
        for attr, value in (("rank_grid", lambda r: r.last.mean), ("rank_paper", lambda r: r.paper_acc1)):
            for r in group:  # ties share a rank: 1 + how many rows are strictly higher
                setattr(r, attr, 1 + sum(value(o) > value(r) + 1e-9 for o in group))


def build_tables(
    plan: Any, results: Callable[[str], RunResult], now: float | None = None, sources: Any = None
) -> list[TableModel]:
    """The plan's tables; with `sources` (orchestrator.grid.sources.Sources), each row's reference under the
    plan's recipe and the teachers' expected top-1."""
    references = expected = None
    weights_cited = ""
    if sources is not None:
        by_hash = {
            plan.row_keys[r.row]: Reference(r.acc1, sources.cite(r.source, r.at), r.note)
            for r in sources.references
            if r.recipe == plan.recipe and r.row in getattr(plan, "row_keys", {})
        }
        references = by_hash.get

        def expected(name: str) -> float | None:
            w = sources.weights.get(name)
            return w.acc1 if w is not None else None

        docs = {w.source for w in sources.weights.values()}
        weights_cited = "; ".join(sources.cite(d) for d in sorted(docs))
    out = []
    for t in plan.tables:
        m = build_table(t, lambda i, t=t: plan.row_runs(t.table, i), results, now, references, expected)
        m.teacher_weights = weights_cited
        out.append(m)
    return out
