"""The plan: every (table row x seed) of the grid resolved to an ExperimentSpec, deduplicated by content hash.

A student run's spec is the scale's defaults (models, data, student recipe) <- the named recipe (manifold
and embedding rows) <- the row's overrides (terms, alpha, beta, k, blocks); seeds are 0..N-1. Rows of
different tables that resolve to the same spec (same content hash) are trained once: the paper's shared
rows (CaiT-S24 -> DeiT-Tiny manifold in Tables 2-6 and Figure 4, Table 6's k=0 = Table 3's L_ci + L_cp,
Table 7's manifold rows = Table 2's, Figure 4's hard curve = Table 2's row) merge, nothing else does.

Teachers a scale trains (`source: train`) are planned runs too: role teacher, one fixed seed, trained
once and reused by every student and seed; they are the students' `deps`, and a student's teacher is
`source: run, run: <the teacher run's hash>`.

Display metadata (not hashed): `name`, `scale`, `recipe_name` and the tags. `recipe_name` is the named
recipe for manifold and embedding rows, and otherwise what the run is whatever `--recipe` says: "hard"
(DeiT's hard distillation, `hard` in experiments/recipes.yaml), "none" (no distillation) or "teacher".

Which rows use a run (the `kdgrid.tables` / `kdgrid.rows` tags) is computed over the full grid and only
then filtered to the requested tables, so a run's tags never depend on `--tables`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator import run_names
from orchestrator.grid import (
    ABLATIONS,
    EXTRA_TABLES,
    RECIPES_FILE,
    TABLE_ALIASES,
    TABLE_FILES,
    TABLE_IDS,
    AblationRow,
    AblationTable,
    GridError,
    Recipe,
    RecipeBook,
    Scale,
    deep_merge,
    display_path,
    get_recipe,
    is_path_ref,
    load_recipes,
    load_scale,
    load_table,
)
from trainer import methods, tracking
from trainer.spec import ExperimentSpec, RecipeSpec, format_validation_error


@dataclass(frozen=True)
class RowRef:
    """One row of one table."""

    table: str  # "2".."7" or "fig4"
    index: int  # 0-based row index in the YAML
    key: str  # short label, e.g. "t2.r9" or "fig4.manifold"


@dataclass
class PlannedRun:
    hash: str  # spec.content_hash()
    spec: ExperimentSpec  # fully resolved, with name/tags/scale/recipe_name set
    role: str  # "student" | "teacher"
    uses: list[RowRef]  # rows (in the requested tables) that this run stands for
    deps: list[str]  # hashes of runs that must finish first (its teacher run)
    seed: int


@dataclass
class Plan:
    scale: str
    recipe: str
    seeds: int
    tables: list[AblationTable]  # the requested tables (and figure4 when included)
    runs: list[PlannedRun]  # deduplicated, dependencies first (teachers before students)
    rows_before_dedup: int  # (row, seed) pairs + teacher runs, before merging
    launch: dict  # the scale's `launch:` hints (max_cohort, resources...), {} if none
    row_hashes: dict[tuple[str, int], list[str]] = field(default_factory=dict, repr=False)  # (table, index) -> per seed

    def __post_init__(self) -> None:
        self._by_hash = {r.hash: r for r in self.runs}

    def run(self, h: str) -> PlannedRun:
        return self._by_hash[h]

    def row_runs(self, table: str, index: int) -> list[PlannedRun]:
        """The runs of one row, one per seed, in seed order."""
        return [self._by_hash[h] for h in self.row_hashes[(str(table), index)]]

    def table(self, table: str) -> AblationTable:
        return next(t for t in self.tables if t.table == str(table))

    @property
    def students(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.role == "student"]

    @property
    def teachers(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.role == "teacher"]


# ---------------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------------
def _short(name: str | None) -> str:
    """cait_s24_224 / analog_cait_s24 / cait_s24_224.fb_dist_in1k -> cait_s24."""
    if name is None:
        return "-"
    from trainer.models import SHORT

    base = name.split(".")[0]
    if base in SHORT:
        return SHORT[base]
    base = base.removeprefix("analog_").removesuffix("_distilled")
    return SHORT.get(base, base)


class _Resolver:
    """Builds the specs of one scale and recipe, collecting every problem as (file, path, reason)."""

    def __init__(self, scale: Scale, scale_file: Path, book: RecipeBook, recipe_name: str, overrides=()):
        self.scale, self.book, self.recipe_name = scale, book, recipe_name
        self.recipe: Recipe = book.recipes[recipe_name]
        self.scale_src = display_path(scale_file) + (f" (with --set {' '.join(overrides)})" if overrides else "")
        self.recipes_src = display_path(RECIPES_FILE)
        self.problems: list[tuple[str, str, str]] = []
        self.teacher_runs: dict[str, tuple[str, ExperimentSpec] | None] = {}  # paper teacher -> run

    # ---- teachers ------------------------------------------------------------------------------
    def _teacher_run(self, paper: str) -> tuple[str, ExperimentSpec] | None:
        if paper in self.teacher_runs:
            return self.teacher_runs[paper]
        sc, src, m = self.scale, self.scale.teachers[paper], self.scale.models[paper]
        raw = dict(
            seed=src.seed,
            student=dict(name=m.name, kwargs=m.kwargs, drop_path=src.drop_path),
            data=sc.teacher_data(paper).model_dump(),
            recipe=src.recipe.model_dump(),
        )
        out = None
        try:
            spec = ExperimentSpec.model_validate(raw)
            out = (spec.content_hash(), spec)
        except ValidationError as err:
            for path, reason in format_validation_error(err):
                if path.startswith("student.kwargs") or path == "student.name":
                    where = f"models.{paper}" + path.removeprefix("student.name").removeprefix("student")
                elif path.startswith(("data", "recipe")):
                    where = f"teachers.{paper}.{path}"
                else:
                    where = f"teachers.{paper}"
                    reason = f"{path}: {reason}"
                self.problems.append((self.scale_src, where, f"{reason} (training teacher {paper})"))
        self.teacher_runs[paper] = out
        return out

    def _teacher(self, paper: str, where: tuple[str, str]) -> dict | None:
        sc = self.scale
        m = sc.models.get(paper)
        if m is None:
            self.problems.append(
                (*where, f"{paper} has no model at scale {sc.scale!r}: map it under `models:` in {self.scale_src}")
            )
            return None
        src = sc.teachers.get(paper)
        if src is None:
            self.problems.append(
                (
                    self.scale_src,
                    f"teachers.{paper}",
                    f"missing: say how teacher {paper} is obtained (source: train, hub or checkpoint)",
                )
            )
            return None
        spec = dict(name=m.name, kwargs=m.kwargs)
        if src.source == "train":
            run = self._teacher_run(paper)
            return None if run is None else dict(spec, source="run", run=run[0])
        if src.source == "checkpoint":
            return dict(spec, source="checkpoint", path=src.path)
        return dict(spec, source="hub")

    # ---- students -------------------------------------------------------------------------------
    def student(
        self, table_src: str, i: int, row: AblationRow, table: AblationTable | None = None
    ) -> ExperimentSpec | None:
        """A row's run: the scale's student <- the table's settings at this scale <- its methods' settings
        (each registered method resolves its own part from the row, the recipe and DeiT's hard KD)."""
        sc, rec = self.scale, self.recipe
        rp = f"rows[{i}]"
        recipe_row = _uses_recipe(row.method)
        paper_student = rec.student.model(row.student) if recipe_row else row.student
        m = sc.models.get(paper_student)
        if m is None:
            self.problems.append(
                (
                    table_src,
                    f"{rp}.student",
                    f"{paper_student} has no model at scale {sc.scale!r}: map it under `models:` in {self.scale_src}",
                )
            )
            return None
        own = table.scales.get(sc.scale) if table is not None else None
        drop_path = sc.student.drop_path
        recipe = sc.student.recipe.model_dump()
        if own is not None:
            recipe = deep_merge(recipe, own.recipe)
            drop_path = own.drop_path.get(row.student, drop_path)
        if recipe_row:  # the recipe's own batch at this scale (the released script's 64 per GPU)
            recipe.update(rec.student.recipe.get(sc.scale, {}))
        distillation: dict[str, Any] = {}
        for name in methods.split_row_method(row.method):
            method = methods.row_methods()[name]
            distillation = deep_merge(distillation, method.resolve_row(name, row, rec, self.book.hard))
            if method.recipe_rows and rec.student.drop_path is not None:
                drop_path = rec.student.drop_path
        teacher = None
        if row.method != "none":
            teacher = self._teacher(row.teacher, (table_src, f"{rp}.teacher"))
            if teacher is None:
                return None
        raw = dict(
            seed=0,
            student=dict(name=m.name, kwargs=m.kwargs, drop_path=drop_path),
            teacher=teacher,
            data=sc.data.model_dump(),
            recipe=recipe,
            distillation=distillation,
        )
        try:
            return ExperimentSpec.model_validate(raw)
        except ValidationError as err:
            for path, reason in format_validation_error(err):
                self.problems.append(
                    (
                        *self._where(path, table_src, i, row),
                        reason + f" [scale {sc.scale}: {self.scale_src}; recipe {self.recipe_name}]",
                    )
                )
            return None

    def _where(self, path: str, table_src: str, i: int, row: AblationRow) -> tuple[str, str]:
        """The file and field a spec problem comes from: the row, the scale or the recipe."""
        rp = f"rows[{i}]"
        for loss in (m.key for m in methods.REGISTRY.values() if m.key in m.fields):  # methods with a sub-spec
            key = f"distillation.{loss}"
            if path == key:  # patch counts differ: the pairing of this teacher with this student
                return table_src, f"{rp}.teacher"
            if path.startswith(key + "."):
                rest = path[len(key) + 1 :]
                name = re.match(r"\w+", rest).group(0)
                if getattr(row, name, None) is not None:
                    return table_src, f"{rp}.{rest}"
                return self.recipes_src, f"recipes.{self.recipe_name}.{loss}.{rest}"
        if path.startswith("teacher"):
            return table_src, f"{rp}.teacher"
        if path == "student.name":
            return table_src, f"{rp}.student"
        if path.startswith("student.kwargs"):
            return self.scale_src, f"models.{row.student}.{path.removeprefix('student.')}"
        if path.startswith("student."):
            return self.scale_src, path
        if path.startswith("data"):
            return self.scale_src, path
        if path.startswith("recipe"):
            return self.scale_src, f"student.{path}"
        if path.startswith("distillation"):
            if row.method == "hard":
                return self.recipes_src, "hard" + path.removeprefix("distillation")
            return self.recipes_src, f"recipes.{self.recipe_name}.logit" + path.removeprefix("distillation")
        return table_src, f"{rp} (spec {path})" if path else rp


def world_size(resources: dict) -> int:
    """Devices of one run's DDP job from a scale's `launch.resources`: gpus (per node) x nodes, else 1.
    On a machine without GPUs the local launcher runs that many CPU (gloo) processes instead."""
    return max(1, int(resources.get("gpus") or 1)) * max(1, int(resources.get("nodes") or 1))


def _on_devices(recipe: RecipeSpec, resources: dict, src: str, where: str, res_key: str) -> RecipeSpec:
    """The recipe with the launcher's world size and the accumulation that makes up its global batch;
    a protocol the resources cannot meet is refused here, before anything launches."""
    w = world_size(resources)
    try:
        return RecipeSpec.model_validate({**recipe.model_dump(), "world_size": w, "accumulation": None})
    except ValidationError as err:
        reason = "; ".join(r for _, r in format_validation_error(err))
        raise GridError([(src, f"{where}.global_batch / {res_key}.gpus", f"{reason} (world size {w})")]) from None


def _requested(tables: str | list[str] | None) -> list[str | Path]:
    if tables is None:
        return list(TABLE_IDS)
    items = tables.split(",") if isinstance(tables, str) else [str(t) for t in tables]
    out: list[str | Path] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        if item.lower() == "all":
            out.extend(TABLE_IDS)
        elif is_path_ref(item):
            out.append(Path(item))
        else:
            t = TABLE_ALIASES.get(item.lower(), item)
            if t not in TABLE_FILES:
                raise GridError(
                    [
                        (
                            display_path(ABLATIONS / f"table{item}.yaml"),
                            "--tables",
                            f"no table {item!r}: the paper's tables are {', '.join(TABLE_IDS)}, the others "
                            f"{', '.join(EXTRA_TABLES) or 'none'} (or give a path to a table YAML)",
                        )
                    ]
                )
            out.append(t)
    if not out:
        raise GridError([("", "--tables", "no table requested")])
    return list(dict.fromkeys(out))


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
    row_seeds = dict(row_seeds or {})
    requested = _requested(tables)
    sc, scale_file = load_scale(scale, overrides)
    book = load_recipes()
    recipe = book.canonical(book.default if recipe is None else recipe)
    get_recipe(book, recipe)

    # The full grid: the paper's tables and the other tables of ablations/ (so a run's tags never depend on
    # --tables), with tables given by path replacing those of the same id.
    loaded: dict[str, tuple[AblationTable, str]] = {}
    errors: list[tuple[str, str, str]] = []
    for ref in list(TABLE_FILES) + [r for r in requested if isinstance(r, Path)]:
        try:
            t = load_table(ref)
        except GridError as err:
            errors.extend(err.entries)
            continue
        src = display_path(ref if isinstance(ref, Path) else ABLATIONS / TABLE_FILES[ref])
        loaded[t.table] = (t, src)
    if errors:
        raise GridError(errors)
    wanted: list[str] = []
    for ref in requested:
        tid = ref if isinstance(ref, str) else next(k for k, (_, s) in loaded.items() if s == display_path(ref))
        wanted.append(tid)
    wanted = list(dict.fromkeys(wanted))

    # Resolve every row of the full grid (seed 0), then the other seeds.
    res = _Resolver(sc, scale_file, book, recipe, overrides)
    base: dict[tuple[str, int], ExperimentSpec] = {}
    for tid, (t, src) in loaded.items():
        first_of: dict[tuple[str, str | None], int] = {}
        for i, row in enumerate(t.rows):
            spec = res.student(src, i, row, t)
            if spec is None:
                continue
            h = spec.content_hash()
            if (h, row.head) in first_of:  # rows reading different heads of one run are that run read twice
                res.problems.append(
                    (
                        src,
                        f"rows[{i}]",
                        f"resolves to the same run as rows[{first_of[h, row.head]}] "
                        f"(hash {h[:8]}): each row of a table must differ",
                    )
                )
            first_of.setdefault((h, row.head), i)
            base[(tid, i)] = spec
    if res.problems:
        raise GridError(res.problems)

    order = {tid: n for n, tid in enumerate(loaded)}
    usage: dict[str, list[tuple[str, int, str]]] = {}  # hash -> (table, index, key), full grid, table order
    specs: dict[str, ExperimentSpec] = {}
    row_meta: dict[str, tuple[AblationTable, AblationRow]] = {}
    row_hashes: dict[tuple[str, int], list[str]] = {}
    for (tid, i), spec0 in sorted(base.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        t = loaded[tid][0]
        for s in range(max(seeds, row_seeds.get(spec0.content_hash(), 0))):
            spec = spec0 if s == 0 else spec0.model_copy(update={"seed": s})
            h = spec.content_hash()
            usage.setdefault(h, []).append((tid, i, t.row_key(i)))
            specs.setdefault(h, spec)
            row_meta.setdefault(h, (t, t.rows[i]))
            row_hashes.setdefault((tid, i), []).append(h)

    teacher_of: dict[str, tuple[str, str]] = {}  # teacher run hash -> (paper name, hash)
    for paper, run in res.teacher_runs.items():
        if run is not None:
            teacher_of[run[0]] = (paper, run[0])

    def tables_tag(tids) -> str:
        return ",".join(sorted(set(tids), key=lambda x: order.get(x, 99)))

    # Every student shares the scale's recipe: its world size and accumulation, checked once.
    devices = {
        "student": _on_devices(
            sc.student.recipe, sc.launch.resources, res.scale_src, "student.recipe", "launch.resources"
        )
    }

    # Students in the requested tables, in requested-table order; their teachers first.
    students: list[PlannedRun] = []
    placed: set[str] = set()
    for tid in wanted:
        t = loaded[tid][0]
        for i in range(len(t.rows)):
            for h in row_hashes[(tid, i)]:
                if h in placed:
                    continue
                placed.add(h)
                spec = specs[h]
                table0, row0 = row_meta[h]
                uses = [RowRef(ut, ui, key) for ut, ui, key in usage[h] if ut in wanted]
                deps = [spec.teacher.run] if spec.teacher is not None and spec.teacher.source == "run" else []
                name = run_names.run_name(row0, spec.seed)
                tags = {
                    tracking.ROLE: "student",
                    tracking.TABLES: tables_tag(u[0] for u in usage[h]),
                    tracking.ROWS: ",".join(u[2] for u in usage[h]),
                    tracking.SEED: str(spec.seed),
                }
                recipe_name = recipe if _uses_recipe(row0.method) else row0.method  # hard / none / vitkd ...
                spec = spec.model_copy(
                    update=dict(
                        name=name,
                        scale=sc.scale,
                        recipe_name=recipe_name,
                        tags=tags,
                        recipe=devices["student"]
                        if spec.recipe == sc.student.recipe
                        else _on_devices(
                            spec.recipe, sc.launch.resources, res.scale_src, "student.recipe", "launch.resources"
                        ),
                    )
                )
                planned = PlannedRun(h, spec, "student", uses, deps, spec.seed)
                teacher, student, method, settings = describe(planned)
                tags[tracking.NOTE] = run_names.description(
                    [(loaded[ut][0], ui) for ut, ui, _ in usage[h]],
                    f"{student} from {teacher}, {method}: {settings}",
                    spec.seed,
                    recipe_name,
                )
                students.append(planned)

    teachers: list[PlannedRun] = []
    needed = list(dict.fromkeys(d for r in students for d in r.deps))
    for th in needed:
        paper, _ = teacher_of[th]
        spec = res.teacher_runs[paper][1]
        dependents = [h for h, s in specs.items() if s.teacher is not None and s.teacher.run == th]
        tags = {
            tracking.ROLE: "teacher",
            tracking.TABLES: tables_tag(u[0] for h in dependents for u in usage[h]),
            tracking.ROWS: "",
            tracking.SEED: str(spec.seed),
        }
        on_devices = _on_devices(
            spec.recipe,
            sc.launch.teacher_resources,
            res.scale_src,
            f"teachers.{paper}.recipe",
            "launch.teacher_resources",
        )
        spec = spec.model_copy(
            update=dict(
                name=run_names.teacher_name(paper, spec.seed),
                scale=sc.scale,
                recipe_name="teacher",
                tags=tags,
                recipe=on_devices,
            )
        )
        planned = PlannedRun(th, spec, "teacher", [], [], spec.seed)
        tags[tracking.NOTE] = run_names.teacher_description(paper, tags[tracking.TABLES], describe(planned)[3])
        teachers.append(planned)

    pairs = sum(len(v) for k, v in row_hashes.items() if k[0] in wanted)  # row x seed pairs
    return Plan(
        scale=sc.scale,
        recipe=recipe,
        seeds=seeds,
        tables=[loaded[tid][0] for tid in wanted],
        runs=teachers + students,
        rows_before_dedup=pairs + len(teachers),
        launch=sc.launch.model_dump(exclude_unset=True),
        row_hashes={k: v for k, v in row_hashes.items() if k[0] in wanted},
    )


# ---------------------------------------------------------------------------------------------------
# Status and printing
# ---------------------------------------------------------------------------------------------------
def run_states(plan: Plan, uri: str | None = None) -> tuple[dict[str, str], str | None]:
    """finished / partial / missing per planned hash, from MLflow; a missing store means all missing.

    Never creates a store: a SQLite file or a local folder that does not exist is read as empty.
    """
    uri = uri or tracking.default_uri()
    missing = {r.hash: "missing" for r in plan.runs}
    local = None
    if uri.startswith("sqlite:///"):
        local = Path(uri[len("sqlite:///") :])
    elif uri.startswith("file:"):
        local = Path(uri[len("file:") :].removeprefix("//"))
    elif "://" not in uri:
        local = Path(uri)
    if local is not None and not local.exists():
        return missing, f"no MLflow store at {uri} yet: every run is missing"
    if uri.startswith(("http://", "https://")):  # answer soon when the server is down
        import os

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        c = tracking.client(uri)
        found = tracking.runs_by_hash(c, plan.scale, missing)
    except Exception as err:  # unreachable server, foreign file, ...
        return missing, f"could not read MLflow at {uri} ({type(err).__name__}: {err}): every run shown missing"
    return {h: tracking.run_state(found.get(h)) for h in missing}, None


def _uses_recipe(method: str | None) -> bool:
    """Whether a row method's runs depend on the named recipe (manifold, embedding)."""
    return any(methods.row_methods()[n].recipe_rows for n in methods.split_row_method(method or "none"))


def describe(run: PlannedRun) -> tuple[str, str, str, str]:
    """(teacher, student, method, key settings) for display."""
    s = run.spec
    if run.role == "teacher":
        d = s.data
        return (
            "-",
            _short(s.student.name),
            "train teacher",
            f"epochs={s.recipe.epochs} batch={s.recipe.batch_size} lr={s.recipe.lr:g} "
            f"train_subset={d.train_subset or 'all'} seed={s.seed}",
        )
    d = s.distillation
    teacher = "-"
    if s.teacher is not None:
        how = {"run": f"run {(s.teacher.run or '')[:8]}", "hub": "hub", "checkpoint": "checkpoint"}[s.teacher.source]
        # weights from timm's hub are named in full (the pretrained tag says which weights)
        teacher = f"{s.teacher.name if s.teacher.source == 'hub' else _short(s.teacher.name)} ({how})"
    parts = []
    used = methods.active(d)
    for m in used:
        parts += m.describe(m.settings(d))
    if d.kd != "none":  # which head the logit distillation trains
        head = "dist head" if "distilled" in s.student.name else "class head"
        parts = [p.replace(f"kd={d.kd}", f"kd={d.kd} on {head}", 1) if p.startswith("kd=") else p for p in parts]
    # the method: the feature (and other) methods by name, else the logit distillation's kind
    method = "+".join(m.key for m in used if m.key != "kd") or d.kd
    parts.append(f"drop_path={s.student.drop_path:g}")
    r = s.recipe
    parts.append(
        f"epochs={r.epochs} warmup={r.warmup_epochs:g} lr={r.lr:g}"
        + (f" per {r.lr_scale_batch} images" if r.lr_scale_batch else "")
        + (f" clip={r.clip_grad:g}" if r.clip_grad is not None else "")
    )
    parts.append(f"batch {r.batch_size}/device")
    return teacher, s.student.name, method, " ".join(parts)


def batch_line(r: RecipeSpec) -> str:
    """'per-device batch 128 x world size 1 x accumulation 8 = global batch 1024'."""
    w = r.world_size or 1
    acc = r.accumulation or 1
    return (
        f"per-device batch {r.batch_size} × world size {w} × accumulation {acc} = global batch {r.global_batch_at(w)}"
    )


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
