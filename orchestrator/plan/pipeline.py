"""make_plan as a pipeline of named steps: the requested tables -> the full grid loaded -> every row's
spec (seed 0) -> rows x seeds, deduplicated by content hash -> the requested rows' student runs, named
and tagged -> the teachers they need, as dependencies -> the Plan.

Which rows use a run (the `kdgrid.tables` / `kdgrid.rows` tags) is computed over the full grid and only
then filtered to the requested tables, so a run's tags never depend on `--tables`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import run_names
from orchestrator.grid import (
    TABLE_IDS,
    AblationRow,
    AblationTable,
    GridError,
    display_path,
    get_recipe,
    is_path_ref,
    load_recipes,
    load_scale,
    load_table,
    table_files,
    table_path,
)
from orchestrator.grid.files import table_id, unknown_table
from orchestrator.plan.describe import describe
from orchestrator.plan.devices import on_devices
from orchestrator.plan.model import Plan, PlannedRun, RowRef
from orchestrator.plan.specs import Context, Resolver, uses_recipe
from trainer import tracking
from trainer.spec import ExperimentSpec

Row = tuple[str, int]  # (table id, row index)


def requested_tables(tables: str | list[str] | None) -> list[str | Path]:
    """`--tables` as table ids and paths: None or "all" the paper's, "2,5", ["2", "5"], YAML paths."""
    if tables is None:
        return list(TABLE_IDS)
    items = tables.split(",") if isinstance(tables, str) else [str(t) for t in tables]
    out: list[str | Path] = []
    for item in (s.strip() for s in items if s.strip()):
        if item.lower() == "all":
            out.extend(TABLE_IDS)
        elif is_path_ref(item):
            out.append(Path(item))
        elif table_path(item) is None:
            raise GridError([unknown_table(item, " (or give a path to a table YAML)")])
        else:
            out.append(table_id(item))
    if not out:
        raise GridError([("", "--tables", "no table requested")])
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Grid:
    """Every table of the grid (so tags never depend on --tables), tables given by path replacing those of
    the same id, and the ids requested, in order."""

    tables: dict[str, tuple[AblationTable, str]]  # id -> (table, its file as shown), file order
    wanted: list[str]

    def order(self, tid: str) -> int:
        return list(self.tables).index(tid) if tid in self.tables else 99


def load_grid(requested: list[str | Path]) -> Grid:
    loaded: dict[str, tuple[AblationTable, str]] = {}
    errors: list = []
    for ref in list(table_files()) + [r for r in requested if isinstance(r, Path)]:
        try:
            t = load_table(ref)
        except GridError as err:
            errors.extend(err.entries)
            continue
        loaded[t.table] = (t, display_path(ref if isinstance(ref, Path) else table_path(ref)))
    if errors:
        raise GridError(errors)
    by_src = {src: tid for tid, (_, src) in loaded.items()}
    wanted = [ref if isinstance(ref, str) else by_src[display_path(ref)] for ref in requested]
    return Grid(loaded, list(dict.fromkeys(wanted)))


def resolve_rows(grid: Grid, res: Resolver) -> dict[Row, ExperimentSpec]:
    """Every row's run at seed 0; GridError with every problem of the grid."""
    base: dict[Row, ExperimentSpec] = {}
    for tid, (t, src) in grid.tables.items():
        first_of: dict[tuple[str, str | None], int] = {}
        for i, row in enumerate(t.rows):
            spec = res.student(src, i, row, t)
            if spec is None:
                continue
            key = (spec.content_hash(), row.head)  # rows reading different heads of one run: that run read twice
            if key in first_of:
                reason = (
                    f"resolves to the same run as rows[{first_of[key]}] (hash {key[0][:8]}): "
                    "each row of a table must differ"
                )
                res.problems.append((src, f"rows[{i}]", reason))
            first_of.setdefault(key, i)
            base[(tid, i)] = spec
    if res.problems:
        raise GridError(res.problems)
    return base


@dataclass
class Runs:
    """Every (row, seed) of the full grid, deduplicated by content hash."""

    specs: dict[str, ExperimentSpec] = field(default_factory=dict)  # hash -> spec, first row's order
    usage: dict[str, list[tuple[str, int, str]]] = field(default_factory=dict)  # hash -> (table, index, key)
    first_row: dict[str, AblationRow] = field(default_factory=dict)  # hash -> the first row it stands for
    row_hashes: dict[Row, list[str]] = field(default_factory=dict)  # row -> its runs, one per seed


def expand_seeds(grid: Grid, base: dict[Row, ExperimentSpec], seeds: int, row_seeds: dict[str, int]) -> Runs:
    """Seeds 0..N-1 of every row (more where `row_seeds` asks for the row's seed-0 run), merged by hash."""
    runs = Runs()
    for (tid, i), spec0 in sorted(base.items(), key=lambda kv: (grid.order(kv[0][0]), kv[0][1])):
        t = grid.tables[tid][0]
        for s in range(max(seeds, row_seeds.get(spec0.content_hash(), 0))):
            spec = spec0 if s == 0 else spec0.model_copy(update={"seed": s})
            h = spec.content_hash()
            runs.usage.setdefault(h, []).append((tid, i, t.row_key(i)))
            runs.specs.setdefault(h, spec)
            runs.first_row.setdefault(h, t.rows[i])
            runs.row_hashes.setdefault((tid, i), []).append(h)
    return runs


def _tables_tag(grid: Grid, tids) -> str:
    return ",".join(sorted(set(tids), key=grid.order))


def student_run(grid: Grid, runs: Runs, ctx: Context, h: str) -> PlannedRun:
    """A student run as planned: its rows in the requested tables, its name, tags and description, and its
    recipe on the launcher's devices."""
    spec, row, usage = runs.specs[h], runs.first_row[h], runs.usage[h]
    tags = {
        tracking.ROLE: "student",
        tracking.TABLES: _tables_tag(grid, (u[0] for u in usage)),
        tracking.ROWS: ",".join(u[2] for u in usage),
        tracking.SEED: str(spec.seed),
    }
    recipe_name = ctx.recipe_name if uses_recipe(row.method) else row.method  # hard / none / vitkd ...
    sc = ctx.scale
    placed = spec.model_copy(
        update=dict(
            name=run_names.run_name(row, spec.seed),
            scale=sc.scale,
            recipe_name=recipe_name,
            tags=tags,
            recipe=on_devices(spec.recipe, sc.launch.resources, ctx.scale_src, "student.recipe", "launch.resources"),
        )
    )
    deps = [spec.teacher.run] if spec.teacher is not None and spec.teacher.source == "run" else []
    uses = [RowRef(ut, ui, key) for ut, ui, key in usage if ut in grid.wanted]
    run = PlannedRun(h, placed, "student", uses, deps, spec.seed)
    teacher, student, method, settings = describe(run)
    tags[tracking.NOTE] = run_names.description(
        [(grid.tables[ut][0], ui) for ut, ui, _ in usage],
        f"{student} from {teacher}, {method}: {settings}",
        spec.seed,
        recipe_name,
    )
    return run


def student_runs(grid: Grid, runs: Runs, ctx: Context) -> list[PlannedRun]:
    """The students of the requested tables, in requested-table order, each once."""
    hashes = [h for tid in grid.wanted for i in range(len(grid.tables[tid][0].rows)) for h in runs.row_hashes[(tid, i)]]
    return [student_run(grid, runs, ctx, h) for h in dict.fromkeys(hashes)]


def teacher_runs(grid: Grid, runs: Runs, res: Resolver, students: list[PlannedRun]) -> list[PlannedRun]:
    """The teacher-training runs the students depend on, each once, tagged with the tables it serves."""
    paper_of = {run[0]: paper for paper, run in res.teacher_runs.items() if run is not None}
    sc, out = res.ctx.scale, []
    for th in dict.fromkeys(d for r in students for d in r.deps):
        paper = paper_of[th]
        spec = res.teacher_runs[paper][1]
        dependents = [h for h, s in runs.specs.items() if s.teacher is not None and s.teacher.run == th]
        tags = {
            tracking.ROLE: "teacher",
            tracking.TABLES: _tables_tag(grid, (u[0] for h in dependents for u in runs.usage[h])),
            tracking.ROWS: "",
            tracking.SEED: str(spec.seed),
        }
        recipe = on_devices(
            spec.recipe,
            sc.launch.teacher_resources,
            res.ctx.scale_src,
            f"teachers.{paper}.recipe",
            "launch.teacher_resources",
        )
        spec = spec.model_copy(
            update=dict(
                name=run_names.teacher_name(paper, spec.seed),
                scale=sc.scale,
                recipe_name="teacher",
                tags=tags,
                recipe=recipe,
            )
        )
        run = PlannedRun(th, spec, "teacher", [], [], spec.seed)
        tags[tracking.NOTE] = run_names.teacher_description(paper, tags[tracking.TABLES], describe(run)[3])
        out.append(run)
    return out


def make_plan(
    scale: str = "mini",
    tables: str | list[str] | None = None,
    seeds: int = 1,
    recipe: str | None = None,
    overrides: list[str] = (),
    row_seeds: dict[str, int] | None = None,
) -> Plan:
    """Resolve, validate and deduplicate the grid; raise GridError (file, field path, reason) on any problem.

    scale: a name in experiments/ or a path to a scale YAML; tables: "all"/None (2-7 + fig4), "2,5",
    ["2", "5"], or paths to table YAMLs (which replace the paper's table of the same id); recipe: a name
    or alias in experiments/recipes.yaml (None: its `default`), kept as the canonical name.
    row_seeds: {seed-0 hash of a row: seeds} gives those rows more than `seeds` seeds (what
    `reproduce --resolve` adds); keyed by the row's seed-0 run, so every row standing for that run gets them.
    """
    if not isinstance(seeds, int) or seeds < 1:
        raise GridError([("", "--seeds", f"{seeds!r}: at least one seed")])
    overrides = list(overrides or ())
    requested = requested_tables(tables)
    sc, scale_file = load_scale(scale, overrides)
    book = load_recipes()
    recipe = book.canonical(book.default if recipe is None else recipe)
    get_recipe(book, recipe)
    grid = load_grid(requested)
    res = Resolver(Context.of(sc, scale_file, book, recipe, overrides))
    runs = expand_seeds(grid, resolve_rows(grid, res), seeds, dict(row_seeds or {}))
    students = student_runs(grid, runs, res.ctx)
    teachers = teacher_runs(grid, runs, res, students)
    row_hashes = {k: v for k, v in runs.row_hashes.items() if k[0] in grid.wanted}
    return Plan(
        scale=sc.scale,
        recipe=recipe,
        seeds=seeds,
        tables=[grid.tables[tid][0] for tid in grid.wanted],
        runs=teachers + students,
        rows_before_dedup=sum(map(len, row_hashes.values())) + len(teachers),  # row x seed pairs + teachers
        launch=sc.launch.model_dump(exclude_unset=True),
        row_hashes=row_hashes,
        row_keys={grid.tables[t][0].row_key(i): hs[0] for (t, i), hs in runs.row_hashes.items()},
    )
