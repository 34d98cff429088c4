"""A scale (`experiments/paper.yaml`, `mini.yaml`, `smoke.yaml`, or a path): the model each paper model
becomes there (`{name, kwargs}`), the students' data and recipe, how each teacher is obtained (`train`,
`hub` or `checkpoint`), and execution hints for launchers kept apart under `launch:`. `--set a.b=VALUE`
overrides any of it before validation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from orchestrator.grid.errors import GridError, invalid, read_yaml
from orchestrator.grid.files import display_path, scale_file, unknown_scale
from orchestrator.grid.rows import check_model
from trainer import strict_yaml
from trainer.problems import SpecError, validation_problems
from trainer.spec import DataSpec, RecipeSpec
from trainer.spec_base import StrictModel, Weight


class ModelMap(StrictModel):
    """The model a paper model becomes at a scale: a timm name (with a pretrained tag for hub teachers)
    or a CPU analog, and its keyword arguments."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    _known = field_validator("name")(check_model)


class TeacherSource(StrictModel):
    """How a teacher is obtained at a scale.

    train: trained once in the grid (its own data overrides, recipe and seed) and reused by every student;
    hub: timm's pretrained weights; checkpoint: a state_dict file at `path`. Without `source`, a teacher
    with a `path` is a checkpoint and one without is hub (so `--set teachers.X.path=/x.pth` switches it).
    """

    source: Literal["train", "hub", "checkpoint"] | None = None
    path: str | None = None
    seed: int = 0
    drop_path: Weight = 0.1
    data: dict[str, Any] = Field(default_factory=dict)  # train: overrides of the scale's data
    recipe: RecipeSpec | None = None  # train

    @model_validator(mode="after")
    def _source(self) -> TeacherSource:
        src = self.source or ("checkpoint" if self.path else "hub")
        problem = _source_problem(src, self)
        if problem:
            raise ValueError(problem)
        self.__dict__["source"] = src
        return self


def _source_problem(src: str, t: TeacherSource) -> str | None:
    if src == "checkpoint" and not t.path:
        return "path: missing: source 'checkpoint' needs the checkpoint file"
    if src == "hub" and t.path:
        return "path: source 'hub' takes no path (leave `source` out, or set it to checkpoint)"
    if src == "train" and t.recipe is None:
        return "recipe: missing: source 'train' needs the teacher's training recipe"
    if src != "train" and (t.recipe is not None or t.data):
        return f"recipe: only source 'train' takes data/recipe (this teacher is {src})"
    if src == "train" and t.path:
        return "path: source 'train' takes no path"
    return None


class StudentDefaults(StrictModel):
    drop_path: Weight = 0.1
    recipe: RecipeSpec


class Launch(StrictModel):
    """Execution hints for launchers: not part of any run's identity. Free-form inside the dicts."""

    max_cohort: int | None = Field(None, ge=1)  # most students sharing one teacher pass
    threads: int | None = Field(None, ge=1)  # torch threads per training process
    workers: int | None = Field(None, ge=1)  # local launcher: parallel processes
    resources: dict[str, Any] = Field(default_factory=dict)  # per student run (cpus, gpus, mem_gb, time_min, ...)
    teacher_resources: dict[str, Any] = Field(default_factory=dict)  # per teacher-training run
    ray: dict[str, Any] = Field(default_factory=dict)
    slurm: dict[str, Any] = Field(default_factory=dict)


class Scale(StrictModel):
    scale: str  # name: MLflow experiment kdgrid-<scale>
    description: str = ""
    models: dict[str, ModelMap]  # paper model (timm name) -> the model at this scale
    data: DataSpec
    student: StudentDefaults
    teachers: dict[str, TeacherSource] = Field(default_factory=dict)
    launch: Launch = Launch()

    @model_validator(mode="after")
    def _teachers(self) -> Scale:
        for path, reason in self._model_problems() + self._teacher_problems():
            raise ValueError(f"{path}: {reason}")
        return self

    def _model_problems(self) -> list[tuple[str, str]]:
        from trainer.models import model_info

        for paper, m in self.models.items():
            try:  # on the meta device: no weights allocated
                model_info(m.name, num_classes=self.data.num_classes, in_chans=self.data.in_chans, **m.kwargs)
            except Exception as err:  # timm asserts, TypeError for unknown kwargs, ...
                return [
                    (f"models.{paper}.kwargs", f"cannot build {m.name} with {m.kwargs}: {type(err).__name__}: {err}")
                ]
        return []

    def _teacher_problems(self) -> list[tuple[str, str]]:
        for name, t in self.teachers.items():
            if name not in self.models:
                return [(f"teachers.{name}", "not in `models`: map it to the model trained at this scale")]
            if t.source == "train":
                try:
                    DataSpec.model_validate(deep_merge(self.data.model_dump(), t.data))
                except ValidationError as err:
                    return validation_problems(err, f"teachers.{name}.data", DataSpec)[:1]
        return []

    def teacher_data(self, name: str) -> DataSpec:
        return DataSpec.model_validate(deep_merge(self.data.model_dump(), self.teachers[name].data))


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _unshared(obj: Any) -> Any:
    """A copy with no shared sub-objects (copy.deepcopy would keep YAML anchors' aliasing)."""
    if isinstance(obj, dict):
        return {k: _unshared(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unshared(v) for v in obj]
    return obj


def _set(data: dict, item: str, source: str) -> None:
    """One `--set a.b.c=VALUE` (VALUE read as YAML) into `data`."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise GridError([(source, "--set", f"{item!r}: expected KEY=VALUE, e.g. data.root=/datasets/imagenet")])
    try:
        value = strict_yaml.loads(raw) if raw.strip() else None
    except SpecError as err:
        raise GridError([(source, f"--set {key}", f"value: {err.problems[0][1]}")]) from None
    parts = key.strip().split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise GridError([(source, f"--set {key}", f"{'.'.join(parts[: i + 1])} is not a mapping")])
        node = nxt
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...], source: str) -> dict:
    """`--set a.b.c=VALUE` (VALUE read as YAML) into a raw scale mapping."""
    data = _unshared(data)  # YAML anchors alias one mapping in several places: --set changes one of them
    for item in overrides:
        _set(data, item, source)
    return data


def scale_path(ref: str | Path) -> Path:
    """The file of a scale by name or path; GridError naming the known scales when there is none."""
    path = scale_file(ref)
    if path is None:
        raise GridError([unknown_scale(str(ref))])
    return path


def load_scale(ref: str | Path = "mini", overrides: list[str] | tuple[str, ...] = ()) -> tuple[Scale, Path]:
    """A scale by name (experiments/<name>.yaml) or path, with `--set` overrides applied."""
    path = scale_path(ref)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise GridError([(display_path(path), "", "expected a mapping with scale, models, data, student, teachers")])
    data.setdefault("scale", path.stem)
    source = scale_source(path, overrides)
    data = apply_overrides(data, overrides, source)
    try:
        return Scale.model_validate(data), path
    except ValidationError as err:
        raise invalid(source, err, Scale) from None


def scale_source(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """How problems name a scale file: with the `--set` overrides applied to it."""
    return display_path(path) + (f" (with --set {' '.join(overrides)})" if overrides else "")
