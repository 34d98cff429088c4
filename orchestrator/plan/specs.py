"""A table row (or a teacher a scale trains) resolved to the ExperimentSpec it runs, with every problem
named at its source: the row, the scale or the recipe, as (file, field path, reason).

A student's spec is the scale's student <- the table's settings at this scale <- the recipe's student
settings (rows that take a recipe) <- each of the row's methods' settings (the registry resolves them from
the row, the recipe and DeiT's hard distillation)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator.grid import AblationRow, AblationTable, Recipe, RecipeBook, Scale, deep_merge, display_path
from orchestrator.grid.files import RECIPES_FILE
from orchestrator.grid.overrides import given
from orchestrator.grid.scales import scale_source
from trainer import methods
from trainer.problems import Entry, validation_problems
from trainer.spec import ExperimentSpec

TeacherRun = tuple[str, ExperimentSpec]  # (content hash, spec) of a teacher the grid trains


def uses_recipe(method: str | None) -> bool:
    """Whether a row method's runs depend on the named recipe (manifold, embedding)."""
    return any(methods.row_methods()[n].recipe_rows for n in methods.split_row_method(method or "none"))


@dataclass(frozen=True)
class Context:
    """One scale and one recipe, and how problems name their files."""

    scale: Scale
    book: RecipeBook
    recipe_name: str
    scale_src: str
    recipes_src: str = display_path(RECIPES_FILE)

    @classmethod
    def of(cls, scale: Scale, scale_file: Path, book: RecipeBook, recipe_name: str, overrides=()) -> Context:
        return cls(scale, book, recipe_name, scale_source(scale_file, overrides))

    @property
    def recipe(self) -> Recipe:
        return self.book.recipes[self.recipe_name]


def student_protocol(ctx: Context, table: AblationTable | None, row: AblationRow) -> tuple[dict, dict, float]:
    """(data, recipe, drop_path) of a row's student: the scale's, overridden by the table's own protocol at
    this scale (another paper's: for every row, then for the row's student), then by the named recipe's for
    the rows that take one."""
    sc, rec = ctx.scale, ctx.recipe
    own = table.scales.get(sc.scale) if table is not None else None
    data, recipe, drop_path = sc.data.model_dump(), sc.student.recipe.model_dump(), sc.student.drop_path
    if own is not None:
        data = deep_merge(data, given(own.data))
        recipe = deep_merge(recipe, given(own.recipe))
        student = own.students.get(row.student)
        if student is not None:
            recipe = deep_merge(recipe, given(student.recipe))
            drop_path = drop_path if student.drop_path is None else student.drop_path
    if uses_recipe(row.method):  # the recipe's own batch at this scale (the released script's 64 per GPU)
        recipe.update(rec.student.recipe.get(sc.scale, {}))
    return data, recipe, drop_path


def row_distillation(ctx: Context, row: AblationRow, drop_path: float) -> tuple[dict[str, Any], float]:
    """(the DistillationSpec fields, the student's drop_path) that the row's methods set."""
    rec = ctx.recipe
    distillation: dict[str, Any] = {}
    for name in methods.split_row_method(row.method):
        method = methods.row_methods()[name]
        distillation = deep_merge(distillation, method.resolve_row(name, row, rec, ctx.book.hard))
        if method.recipe_rows and rec.student.drop_path is not None:
            drop_path = rec.student.drop_path
    return distillation, drop_path


def locate(
    ctx: Context, path: str, table_src: str, i: int, row: AblationRow, table: AblationTable | None = None
) -> tuple[str, str]:
    """The file and field a spec problem comes from: the row, the table's own protocol, the scale or the recipe."""
    return (
        _in_method(ctx, path, table_src, i, row)
        or _in_table_protocol(ctx, path, table_src, row, table)
        or _elsewhere(ctx, path, table_src, i, row)
    )


def _in_table_protocol(
    ctx: Context, path: str, table_src: str, row: AblationRow, table: AblationTable | None
) -> tuple[str, str] | None:
    """The table's own protocol at this scale, where it sets the field (`data...`, `recipe...`)."""
    own = table.scales.get(ctx.scale.scale) if table is not None else None
    if own is None or not path.startswith(("data", "recipe")):
        return None
    section, _, rest = path.partition(".")
    student = own.students.get(row.student)
    places = [(f"students.{row.student}.recipe", given(student.recipe))] if student and section == "recipe" else []
    places.append((section, given(getattr(own, section))))
    for where, keys in places:
        if _sets(keys, rest):
            return table_src, ".".join(p for p in (f"scales.{ctx.scale.scale}", where, rest) if p)
    return None


def _sets(keys: dict, dotted: str) -> bool:
    """Whether a nested mapping of set keys contains the dotted path (a whole-section problem: any key)."""
    if not dotted:
        return bool(keys)
    node: object = keys
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _in_method(ctx: Context, path: str, table_src: str, i: int, row: AblationRow) -> tuple[str, str] | None:
    for loss in (m.key for m in methods.REGISTRY.values() if m.key in m.fields):  # methods with a sub-spec
        key = f"distillation.{loss}"
        if path == key:  # patch counts differ: the pairing of this teacher with this student
            return table_src, f"rows[{i}].teacher"
        if path.startswith(key + "."):
            rest = path[len(key) + 1 :]
            name = re.match(r"\w+", rest).group(0)
            if getattr(row, name, None) is not None:
                return table_src, f"rows[{i}].{rest}"
            return ctx.recipes_src, f"recipes.{ctx.recipe_name}.{loss}.{rest}"
    return None


def _elsewhere(ctx: Context, path: str, table_src: str, i: int, row: AblationRow) -> tuple[str, str]:
    rp = f"rows[{i}]"
    if path.startswith("teacher"):
        return table_src, f"{rp}.teacher"
    if path == "student.name":
        return table_src, f"{rp}.student"
    if path.startswith("student.kwargs"):
        return ctx.scale_src, f"models.{row.student}.{path.removeprefix('student.')}"
    if path.startswith(("student.", "data")):
        return ctx.scale_src, path
    if path.startswith("recipe"):
        return ctx.scale_src, f"student.{path}"
    if path.startswith("distillation"):
        if row.method == "hard":
            return ctx.recipes_src, "hard" + path.removeprefix("distillation")
        return ctx.recipes_src, f"recipes.{ctx.recipe_name}.logit" + path.removeprefix("distillation")
    return table_src, f"{rp} (spec {path})" if path else rp


def _teacher_problem(ctx: Context, paper: str, path: str, reason: str) -> Entry:
    """Where a problem of a teacher-training spec lies in the scale file."""
    if path.startswith("student.kwargs") or path == "student.name":
        where = f"models.{paper}" + path.removeprefix("student.name").removeprefix("student")
    elif path.startswith(("data", "recipe")):
        where = f"teachers.{paper}.{path}"
    else:
        where, reason = f"teachers.{paper}", f"{path}: {reason}"
    return ctx.scale_src, where, f"{reason} (training teacher {paper})"


@dataclass
class Resolver:
    """Builds the specs of one scale and recipe, collecting every problem; teachers the scale trains are
    resolved once each (`teacher_runs`: paper teacher -> its run, None where it could not be)."""

    ctx: Context
    problems: list[Entry] = field(default_factory=list)
    teacher_runs: dict[str, TeacherRun | None] = field(default_factory=dict)

    def teacher_run(self, paper: str) -> TeacherRun | None:
        if paper not in self.teacher_runs:
            self.teacher_runs[paper] = self._train_teacher(paper)
        return self.teacher_runs[paper]

    def _train_teacher(self, paper: str) -> TeacherRun | None:
        sc, src, m = self.ctx.scale, self.ctx.scale.teachers[paper], self.ctx.scale.models[paper]
        raw = dict(
            seed=src.seed,
            student=dict(name=m.name, kwargs=m.kwargs, drop_path=src.drop_path),
            data=sc.teacher_data(paper).model_dump(),
            recipe=src.recipe.model_dump(),
        )
        try:
            spec = ExperimentSpec.model_validate(raw)
        except ValidationError as err:
            self.problems += [_teacher_problem(self.ctx, paper, p, r) for p, r in validation_problems(err)]
            return None
        return spec.content_hash(), spec

    def teacher(self, paper: str, where: tuple[str, str]) -> dict | None:
        """The TeacherSpec fields of a row's teacher at this scale."""
        sc, scale_src = self.ctx.scale, self.ctx.scale_src
        m, src = sc.models.get(paper), sc.teachers.get(paper)
        if m is None:
            self.problems.append(
                (*where, f"{paper} has no model at scale {sc.scale!r}: map it under `models:` in {scale_src}")
            )
            return None
        if src is None:
            reason = f"missing: say how teacher {paper} is obtained (source: train, hub or checkpoint)"
            self.problems.append((scale_src, f"teachers.{paper}", reason))
            return None
        spec = dict(name=m.name, kwargs=m.kwargs)
        if src.source == "train":
            run = self.teacher_run(paper)
            return None if run is None else dict(spec, source="run", run=run[0])
        if src.source == "checkpoint":
            return dict(spec, source="checkpoint", path=src.path)
        return dict(spec, source="hub")

    def student(
        self, table_src: str, i: int, row: AblationRow, table: AblationTable | None = None
    ) -> ExperimentSpec | None:
        """A row's run (seed 0), or None with its problems recorded."""
        ctx = self.ctx
        paper_student = ctx.recipe.student.model(row.student) if uses_recipe(row.method) else row.student
        m = ctx.scale.models.get(paper_student)
        if m is None:
            reason = (
                f"{paper_student} has no model at scale {ctx.scale.scale!r}: map it under `models:` in {ctx.scale_src}"
            )
            self.problems.append((table_src, f"rows[{i}].student", reason))
            return None
        data, recipe, drop_path = student_protocol(ctx, table, row)
        distillation, drop_path = row_distillation(ctx, row, drop_path)
        teacher = None
        if row.method != "none":
            teacher = self.teacher(row.teacher, (table_src, f"rows[{i}].teacher"))
            if teacher is None:
                return None
        raw = dict(
            seed=0,
            student=dict(name=m.name, kwargs=m.kwargs, drop_path=drop_path),
            teacher=teacher,
            data=data,
            recipe=recipe,
            distillation=distillation,
        )
        try:
            return ExperimentSpec.model_validate(raw)
        except ValidationError as err:
            at = f" [scale {ctx.scale.scale}: {ctx.scale_src}; recipe {ctx.recipe_name}]"
            for path, reason in validation_problems(err):
                self.problems.append((*locate(ctx, path, table_src, i, row, table), reason + at))
            return None
