"""The protocol audit: every setting of every planned run of a scale beside the value its source states
(`experiments/sources.yaml`: the paper, the released code, DeiT, cls_KD), cited to file:line or section, as
data (JSON) and as Markdown.

A setting is one hashed field of the run's spec (the run's identity), plus four derived ones (`effective.*`:
the lr at the global batch, the precision on CUDA, the weights evaluated, how the manifold loss meets the
block pairs). Each is judged: `matches` its source, `differs (recorded)` or `not in the source (recorded)`
with the reason kdgrid gives, `unused` in that run, `set by the row` (the table as printed), `not audited`
(seeds, the CPU scales' fields), or, where nothing in the sources accounts for it, `UNRECORDED` /
`NO SOURCE`: a paper-scale value that changed without its source entry (tests/test_audit.py).

`audit(scale, tables) -> rows` plans the grid and judges it; `audit_plan` is the pure part; `markdown` and
`to_json` render. `kdgrid audit --scale paper --out DIR` writes audit.md and audit.json.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.grid.sources import Case, Sources, load_sources

MATCHES = "matches"
DIFFERS = "differs (recorded)"
SILENT = "not in the source (recorded)"
UNUSED = "unused"
ROW = "set by the row"
NOT_AUDITED = "not audited"
UNRECORDED = "UNRECORDED"  # a value no case accounts for: the test fails
NO_SOURCE = "NO SOURCE"  # a setting no protocol lists: the test fails
FAILING = (UNRECORDED, NO_SOURCE)
ROW_NAMES = {"student.name": "student", "teacher.name": "teacher"}
# A manifold row that names its terms drops the weights of those it leaves out (the spec zeroes them).
DROPPED = {"distillation.manifold.alpha": "cp", "distillation.manifold.beta": "rs", "distillation.manifold.k": "rs"}
PAPER_TABLES = "the paper's"


@dataclass(frozen=True)
class Entry:
    """One setting of one planned run, judged."""

    protocol: str
    setting: str
    kdgrid: Any  # the planned value (JSON types)
    status: str
    source_value: Any = None  # what the source states (None where it states none)
    states: bool = False  # whether it states a value
    source: str = ""  # the citation
    why: str = ""  # kdgrid's reason, `unused`'s, `not audited`'s, or a case's note
    row: str = ""  # "t2.r9"
    recipe: str = ""  # the plan's recipe, for rows that take one


@dataclass
class AuditRow:
    """Entries that say the same thing, with the rows they hold for."""

    protocol: str
    setting: str
    kdgrid: Any
    status: str
    source_value: Any
    states: bool
    source: str
    why: str
    rows: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TeacherRow:
    """A hub teacher: the weights loaded, the accuracy the paper quotes for it, the accuracy they reach."""

    teacher: str  # the paper's model
    weights: str  # timm's name with its pretrained tag
    paper_acc1: float | None
    expected_acc1: float | None
    source: str
    rows: tuple[str, ...]


@dataclass
class Audit:
    scale: str
    recipes: list[str]
    rows: list[AuditRow]
    teachers: list[TeacherRow]
    references: list[dict]
    sources: Sources
    protocols: dict[str, list[str]]  # protocol -> its runs' row labels

    @property
    def failing(self) -> list[AuditRow]:
        return [r for r in self.rows if r.status in FAILING]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.status] = out.get(r.status, 0) + 1
        return out


# ---- a run's settings ------------------------------------------------------------------------------
def _leaves(value: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in value.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v and not path.endswith("kwargs"):
            yield from _leaves(v, path + ".")
        else:
            yield path, v


def _at(value: dict, path: str) -> Any:
    for part in path.split("."):
        value = value[part]
    return value


def run_settings(spec) -> dict[str, Any]:
    """The run's settings: every field of its identity (its content hash), displayed as its spec says it,
    and the derived `effective.*`."""
    from trainer.precision import effective
    from trainer.spec import _hashed

    shown = spec.model_dump(mode="json")
    out = {path: _at(shown, path) for path, _ in _leaves(_hashed(spec))}
    r = spec.recipe
    world = r.world_size or 1
    out["effective.lr"] = r.lr * r.global_batch_at(world) / r.lr_scale_batch if r.lr_scale_batch else r.lr
    out["effective.precision"] = effective(r.precision, r.amp, "cuda")
    out["effective.eval_weights"] = r.eval_weights or "model"
    if spec.distillation.manifold is not None:
        out["effective.manifold_layers"] = spec.distillation.manifold.layer_reduce
    return out


def same(a: Any, b: Any) -> bool:
    """Values equal as YAML states them: numbers to 1e-9 relative, sequences element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


# ---- judging -------------------------------------------------------------------------------------
def judge(value: Any, cases: Sequence[Case], row, recipe: str, src: Sources) -> dict[str, Any]:
    """The first case that holds for the row, and what it says of `value`."""
    case = next((c for c in cases if c.matches(row.student, row.teacher, row.method, recipe)), None)
    if case is None:
        return dict(status=NO_SOURCE, why="no case of this setting holds for the row")
    if case.unused is not None:
        return dict(status=UNUSED, why=case.unused)
    out = dict(source_value=case.value, states=case.states, source=src.cite(case.source, case.at), why="")
    if case.states and same(value, case.value):
        return out | dict(status=MATCHES, why=case.note or "")
    if case.differs and same(value, case.kdgrid):
        return out | dict(status=DIFFERS if case.states else SILENT, why=case.why or "")
    expected = case.kdgrid if case.differs else case.value
    return out | dict(status=UNRECORDED, why=f"the sources account for {json.dumps(expected)}")


def row_sets(row, path: str) -> bool:
    """Whether the row (the table as printed) sets this setting: its models, or a method field it names."""
    if path in ROW_NAMES:
        return True
    named = set(row.overrides()) - {"teacher", "student", "method"}
    return path.startswith("distillation.") and path.rsplit(".", 1)[-1] in named


def audit_plan(plan, src: Sources) -> list[tuple[str, Entry]]:
    """(run hash, entry) for every setting of every row's seed-0 run of `plan`. Pure: the plan and the
    sources in, the judgements out."""
    from orchestrator.plan.specs import uses_recipe

    out = []
    for t in plan.tables:
        table_source = t.source or f"Jia et al., {'Figure 4' if t.table == 'fig4' else f'Table {t.table}'}"
        for i, row in enumerate(t.rows):
            run = plan.row_runs(t.table, i)[0]
            recipe_row = uses_recipe(row.method)
            protocol = src.protocol_of(t.table, recipe_row, plan.recipe) or "(none)"
            cases = src.settings(protocol) if protocol in src.protocols else {}
            for path, value in run_settings(run.spec).items():
                base = dict(protocol=protocol, setting=path, kdgrid=value, row=t.row_key(i))
                base["recipe"] = plan.recipe if recipe_row else ""
                if path in DROPPED and row.terms is not None and DROPPED[path] not in row.terms:
                    entry = Entry(**base, status=UNUSED, why=f"the row's terms leave out L_{DROPPED[path]}")
                elif row_sets(row, path):
                    entry = Entry(**base, status=ROW, source=table_source)
                elif path in cases:
                    entry = Entry(**base, **judge(value, cases[path], row, plan.recipe, src))
                elif path in src.not_audited:
                    entry = Entry(**base, status=NOT_AUDITED, why=src.not_audited[path])
                else:
                    entry = Entry(**base, status=NO_SOURCE, why=f"protocol {protocol!r} lists no {path}")
                out.append((run.hash, entry))
    return out


def label(row: str, recipes: Sequence[str]) -> str:
    """'t2.r9', or 't2.r9 [paper-sum, paper-mean]' for a row that takes a recipe."""
    return f"{row} [{', '.join(recipes)}]" if recipes else row


def group(entries: Iterable[Entry], rows_of: Callable[[Entry], list[str]] | None = None) -> list[AuditRow]:
    """Entries saying the same thing merged, with their rows (`rows_of`: every row an entry's run stands
    for; default: its own); in first-seen order."""
    rows: dict[tuple, AuditRow] = {}
    for e in entries:
        key = (e.protocol, e.setting, e.status, json.dumps(e.kdgrid), json.dumps(e.source_value), e.source, e.why)
        r = rows.setdefault(
            key, AuditRow(e.protocol, e.setting, e.kdgrid, e.status, e.source_value, e.states, e.source, e.why)
        )
        for name in rows_of(e) if rows_of else [label(e.row, [e.recipe] if e.recipe else [])]:
            if name not in r.rows:
                r.rows.append(name)
    return list(rows.values())


def teacher_rows(plans: Iterable, src: Sources) -> list[TeacherRow]:
    """Each hub teacher of the plans: its weights, the paper's number for it, the weights' expected top-1."""
    seen: dict[tuple[str, str], dict] = {}
    for plan in plans:
        for t in plan.tables:
            for i, row in enumerate(t.rows):
                teacher = plan.row_runs(t.table, i)[0].spec.teacher
                if teacher is None or teacher.source != "hub":
                    continue
                cell = seen.setdefault((row.teacher, teacher.name), {"paper": None, "rows": []})
                cell["paper"] = cell["paper"] if row.teacher_acc1 is None else row.teacher_acc1
                if t.row_key(i) not in cell["rows"]:
                    cell["rows"].append(t.row_key(i))
    out = []
    for (paper, weights), cell in seen.items():
        w = src.weights.get(weights)
        out.append(
            TeacherRow(
                paper,
                weights,
                cell["paper"],
                w.acc1 if w else None,
                src.cite(w.source, w.at) if w else "",
                tuple(cell["rows"]),
            )
        )
    return out


def audit(
    scale: str = "paper",
    tables: str | list[str] | None = None,
    recipes: str | None = "all",
    overrides: Sequence[str] = (),
    sources: str | Path | None = None,
) -> Audit:
    """Plan `tables` (None: every table of ablations/) at `scale` under each of `recipes` ("all", "a,b" or
    None for the default) and judge every setting of every row's run against the sources."""
    from orchestrator.grid import load_recipes, recipe_names, table_files
    from orchestrator.plan import make_plan

    src = load_sources(sources)
    names = recipe_names(load_recipes(), recipes)
    tables = tables if tables is not None else ",".join(table_files())
    plans = [make_plan(scale, tables, 1, recipe, list(overrides)) for recipe in names]
    # A run is judged once, and stands for every row (under every recipe) that resolves to it.
    judged: dict[tuple[str, str], tuple[str, Entry]] = {}
    stands_for: dict[str, dict[str, list[str]]] = {}  # run hash -> row -> the recipes it takes
    for plan in plans:
        for h, e in audit_plan(plan, src):
            judged.setdefault((h, e.setting), (h, e))
            recipes = stands_for.setdefault(h, {}).setdefault(e.row, [])
            if e.recipe and e.recipe not in recipes:
                recipes.append(e.recipe)
    labels = {h: [label(row, recipes) for row, recipes in rows.items()] for h, rows in stands_for.items()}
    hash_of = {id(e): h for h, e in judged.values()}
    rows = group((e for _, e in judged.values()), lambda e: labels[hash_of[id(e)]])
    protocols: dict[str, list[str]] = {}
    for h, e in judged.values():
        for name in labels[h]:
            if name not in protocols.setdefault(e.protocol, []):
                protocols[e.protocol].append(name)
    references = [r.model_dump() | {"cited": src.cite(r.source, r.at)} for r in src.references if r.recipe in names]
    return Audit(plans[0].scale, names, rows, teacher_rows(plans, src), references, src, protocols)


# ---- rendering -----------------------------------------------------------------------------------
def compact(rows: Sequence[str], everything: Sequence[str] = ()) -> str:
    """'t2.r1-r4, r9; fig4.none' ('all' when the rows are every row of their protocol)."""
    if everything and set(rows) == set(everything):
        return "all"
    by_table: dict[tuple[str, str], list] = {}
    for r in rows:
        key, _, tag = r.partition(" ")
        label, _, name = key.partition(".")
        by_table.setdefault((label, tag), []).append(name)
    parts = []
    for (label, tag), names in by_table.items():
        nums = sorted(int(n[1:]) for n in names if re.fullmatch(r"r\d+", n))
        runs, start = [], None
        for j, n in enumerate(nums):
            start = n if start is None else start
            if j + 1 == len(nums) or nums[j + 1] != n + 1:
                runs.append(f"r{start}" if start == n else f"r{start}-r{n}")
                start = None
        others = [n for n in names if not re.fullmatch(r"r\d+", n)]
        parts.append(f"{label}.{', '.join(runs + others)}" + (f" {tag}" if tag else ""))
    return "; ".join(parts)


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return "{}" if v == {} else str(v)


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown(a: Audit) -> str:
    counts = a.counts()
    out = [
        f"# Protocol audit — scale `{a.scale}`",
        "",
        f"Every setting of every planned run (each table's rows at seed 0, under {', '.join(a.recipes)}) "
        "beside the value its source states, from `experiments/sources.yaml`; "
        f"`kdgrid audit --scale {a.scale}` writes it. A row's recipe is in brackets "
        "for the rows that take one.",
        "",
        "Statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".",
        "",
    ]
    if a.failing:
        out += [f"**{len(a.failing)} settings are not accounted for by the sources ({', '.join(FAILING)}).**", ""]
    out += ["## Sources", "", "| id | what | version read |", "|---|---|---|"]
    out += [f"| `{k}` | {_md(d.title)} | {_md(d.ref)} |" for k, d in a.sources.documents.items()]
    out.append("")
    for name, rows_of in a.protocols.items():
        p = a.sources.protocols.get(name)
        out += [f"## Protocol `{name}`", ""]
        if p is not None:
            out += [_md(p.description), ""]
        out += [f"Runs: {compact(rows_of)}.", ""]
        out += [
            "| setting | kdgrid | source states | source | status | rows | why / note |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sorted((r for r in a.rows if r.protocol == name), key=lambda r: (r.setting, r.rows[0])):
            states = _value(r.source_value) if r.states else ("—" if r.status not in (ROW, UNUSED, NOT_AUDITED) else "")
            cells = [f"`{r.setting}`", f"`{_value(r.kdgrid)}`", states, r.source, r.status, compact(r.rows, rows_of)]
            out.append("| " + " | ".join(_md(c) for c in cells + [r.why]) + " |")
        out.append("")
    if a.teachers:
        out += [
            "## Teachers",
            "",
            "The weights each hub teacher loads, the accuracy the paper quotes for it, and the top-1 those "
            "weights reach in timm's own validation (the report adds the grid's measurement).",
            "",
            "| teacher | weights | paper | weights' top-1 | source | rows |",
            "|---|---|---|---|---|---|",
        ]
        for t in a.teachers:
            paper = f"{t.paper_acc1:g}" if t.paper_acc1 is not None else "—"
            expected = f"{t.expected_acc1:g}" if t.expected_acc1 is not None else "not recorded"
            out.append(f"| {t.teacher} | `{t.weights}` | {paper} | {expected} | {_md(t.source)} | {compact(t.rows)} |")
        out.append("")
    if a.references:
        out += ["## References", "", "The accuracy a recipe's run is judged against where it is not the paper's.", ""]
        out += ["| recipe | row (and every row that is the same run) | Acc1 | source | note |", "|---|---|---|---|---|"]
        out += [
            f"| `{r['recipe']}` | {r['row']} | {r['acc1']:g} | {_md(r['cited'])} | {_md(r['note'])} |"
            for r in a.references
        ]
        out.append("")
    return "\n".join(out)


def to_json(a: Audit) -> str:
    doc = {
        "scale": a.scale,
        "recipes": a.recipes,
        "counts": a.counts(),
        "settings": [asdict(r) for r in a.rows],
        "teachers": [asdict(t) for t in a.teachers],
        "references": a.references,
        "documents": {k: d.model_dump() for k, d in a.sources.documents.items()},
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


# ---- the command ---------------------------------------------------------------------------------
