"""The paper's grid as data: ablation tables, scales and named recipes (pydantic v2, YAML in and out).

- An ablation table (`ablations/table2.yaml` ... `table7.yaml`, `figure4.yaml`) is a `base` plus `rows`, each
  row a set of overrides naming the *paper's* models (timm names), the method (none / hard / manifold /
  embedding), the settings the paper varies (loss terms, alpha, beta, k, block sets in the paper's 1-based
  indices) and the paper's reported Acc1. `columns` says how each printed column is read off a row.
- A scale (`experiments/paper.yaml`, `mini.yaml`, `smoke.yaml`) maps each paper model to the model trained at
  that scale (`{name, kwargs}`), sets the students' data and recipe, says how each teacher is obtained
  (`train`, `hub` or `checkpoint`), and keeps execution hints for launchers apart under `launch:`.
- A recipe (`experiments/recipes.yaml`) sets the distillation of the manifold and embedding rows: the
  paper's text (`paper`) or the authors' released script (`released`). Hard rows are DeiT's hard-label
  distillation under every recipe.

Every model forbids unknown keys. Loading errors name the file, the field path and the reason:
`ablations/table5.yaml: rows[1].teacher_blocks[3]: block 25 is beyond ...`.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from trainer import methods
from trainer.spec import DataSpec, EmbeddingSpec, ManifoldSpec, Positive, RecipeSpec, SpecError, Weight

REPO = Path(__file__).resolve().parents[1]
ABLATIONS = REPO / "ablations"
EXPERIMENTS = REPO / "experiments"
RECIPES_FILE = EXPERIMENTS / "recipes.yaml"

# The paper's tables in order, and the file each lives in; then the other tables of ablations/ (other
# papers' comparisons: vitkd.yaml, deit.yaml), by file name. `--tables all` (the default) is the paper's.
TABLE_IDS: tuple[str, ...] = ("2", "3", "4", "5", "6", "7", "fig4")
TABLE_FILES = {**{t: f"table{t}.yaml" for t in TABLE_IDS[:-1]}, "fig4": "figure4.yaml"}


def _is_table(path: Path) -> bool:
    """A table file has `table:` and `rows:` at its top (ablations/ may hold other YAML, e.g. searches)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "table" in data and "rows" in data


EXTRA_TABLES: tuple[str, ...] = tuple(
    sorted(p.stem for p in ABLATIONS.glob("*.yaml") if p.name not in TABLE_FILES.values() and _is_table(p))
)
TABLE_FILES.update({t: f"{t}.yaml" for t in EXTRA_TABLES})
TABLE_ALIASES = {
    "figure4": "fig4",
    "f4": "fig4",
    "fig4": "fig4",
    **{f"t{t}": t for t in TABLE_IDS[:-1]},
    **{f"table{t}": t for t in TABLE_IDS[:-1]},
}

Curve = Literal["none", "hard", "manifold"]
Head = Literal["cls", "dist", "avg"]
Acc = Annotated[float, Strict(), Field(ge=0, le=100, allow_inf_nan=False)]

# Row methods come from the method registry (trainer/methods/): "none", a method ("hard", "manifold",
# "vitkd", ...) or several joined by "+" ("vitkd+nkd").
METHOD_LABEL = methods.row_labels()
BLOCK_FIELDS = ("teacher_blocks", "student_blocks")
METHOD_FIELDS = methods.row_field_owners()  # row field -> the row methods that take it


def method_label(method: str) -> str:
    """How a table prints a row method: "Hard", "ViTKD+NKD"."""
    return "+".join(METHOD_LABEL[m] for m in methods.split_row_method(method)) or METHOD_LABEL["none"]


def method_problem(method: str) -> str | None:
    known = ["none", *methods.row_methods()]
    parts = methods.split_row_method(method)
    bad = [p for p in parts if p not in methods.row_methods()]
    if method != "none" and (bad or not parts):
        return f"unknown method {method!r}: one of {', '.join(known)}, or several joined by '+' (vitkd+nkd)"
    if len(set(parts)) != len(parts):
        return f"method {method!r} repeats a method"
    return None


# ---------------------------------------------------------------------------------------------------
# Errors: file, field path, reason
# ---------------------------------------------------------------------------------------------------
def display_path(path: str | Path) -> str:
    """A path as the user should read it: relative to the repository when inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


class GridError(SpecError):
    """Problems found before anything launches, each as (file, field path, reason)."""

    def __init__(self, entries: list[tuple[str, str, str]]):
        self.entries = entries
        self.problems = [(path, reason) for _, path, reason in entries]
        self.source = entries[0][0] if entries else None
        lines = [f"{f}: {p or '<root>'}: {r}" if f else f"{p or '<root>'}: {r}" for f, p, r in entries]
        ValueError.__init__(self, "invalid grid\n  " + "\n  ".join(lines))


_HEAD = re.compile(r"^[A-Za-z_][\w.\[\]]*$")


def loc_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) in (Union, UnionType, Annotated):
        args = [a for a in get_args(tp) if a is not type(None)]
        tp = args[0] if args else tp
    return tp


def _keys_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The keys a mapping at `loc` (inside `model`) may have, for "did you mean" hints."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif get_origin(tp) in (list, tuple) and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict and isinstance(part, str):
            tp = get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def validation_problems(
    err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[tuple[str, str]]:
    """(field path, reason) for each pydantic error; `field: reason` messages of model validators extend the path."""
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = loc_path(loc)
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
            head, sep, rest = msg.partition(": ")
            if sep and _HEAD.match(head):
                path = f"{path}.{head}" if path else head
                path = path.replace(".[", "[")
                msg = rest
        if e["type"] == "extra_forbidden":
            known = _keys_at(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            msg = "unknown key" + (
                f" (did you mean {close[0]}?)" if close else f" (expected one of: {', '.join(known)})" if known else ""
            )
        elif e["type"] == "missing":
            msg = (
                "missing: every row needs the paper's reported value (paper_acc1)"
                if loc[-1:] == ("paper_acc1",)
                else "missing (required)"
            )
        problems.append((".".join(p for p in (prefix, path) if p).replace(".[", "["), msg))
    return problems


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise GridError([(display_path(path), "", "no such file")])
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise GridError([(display_path(path), "", f"not valid YAML: {err}")]) from None


def to_yaml(model: BaseModel) -> str:
    """YAML out: what the loaders read back to an equal model."""
    return yaml.safe_dump(model.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------------
# Ablation tables
# ---------------------------------------------------------------------------------------------------
def _check_model(cls, name: str | None) -> str | None:
    """field validator: a timm model name (pretrained tags allowed) or a CPU analog."""
    if name is not None:
        from trainer.models import check_known

        check_known(name)
    return name


class _RowBase(StrictModel):
    """What a row (or a table's `base`) may set. Model names are the paper's timm names. The settings a
    method varies (terms, alpha, beta, k, blocks for manifold rows; tau, kd_weight for logit rows; ...)
    are the methods' own `row_fields`, added from the registry (`RowFields`)."""

    teacher: str | None = None
    student: str | None = None
    method: str | None = None  # none, a registered row method, or several joined by "+"
    teacher_acc1: Acc | None = None  # the teacher's Acc1 column of Table 2
    curve: Curve | None = None  # Figure 4's curve this row is
    head: Head | None = None  # which head of a distilled student the row reads (DeiT's comparison); unset: avg
    printed: dict[str, str] = Field(default_factory=dict)  # printed text where it differs, e.g. "CaiT-S24 (our)"
    note: str | None = None

    _known = field_validator("teacher", "student")(_check_model)

    @field_validator("method")
    @classmethod
    def _method(cls, method):
        problem = method_problem(method) if method is not None else None
        if problem:
            raise ValueError(problem)
        return method

    @field_validator("terms", check_fields=False)
    @classmethod
    def _unique_terms(cls, terms):
        if terms is not None and len(set(terms)) != len(terms):
            raise ValueError(f"repeated term in {list(terms)}")
        return terms

    @field_validator("printed")
    @classmethod
    def _printed_fields(cls, printed: dict[str, str]) -> dict[str, str]:
        bad = [k for k in printed if k not in DISPLAY_FIELDS]
        if bad:
            raise ValueError(f"no column field {bad[0]!r} (fields: {', '.join(DISPLAY_FIELDS)})")
        return printed


RowFields = create_model(
    "RowFields",
    __base__=_RowBase,
    __module__=__name__,
    __doc__=_RowBase.__doc__,
    **{f: (ann, None) for m in methods.REGISTRY.values() for f, ann in m.row_fields.items()},
)


class AblationRow(RowFields):
    """One printed row, its base merged in: the settings and the paper's value."""

    paper_acc1: Acc
    _key: str | None = PrivateAttr(None)  # set by its table: "t2.r9", "fig4.manifold"

    @property
    def key(self) -> str | None:
        return self._key

    @model_validator(mode="after")
    def _consistent(self) -> AblationRow:
        for path, reason in row_problems(self):
            raise ValueError(f"{path}: {reason}")
        return self

    def overrides(self) -> dict[str, Any]:
        """The settings this row sets (display-only fields left out)."""
        return {
            k: v
            for k, v in self.model_dump(exclude_none=True).items()
            if k not in ("paper_acc1", "teacher_acc1", "printed", "note", "curve", "head")
        }

    def display(self, field: str, fmt: str | None = None) -> str:
        """The cell as the paper prints it."""
        if field in self.printed:
            return self.printed[field]
        v = getattr(self, field)
        if v is None:
            return ""
        if field in ("teacher", "student"):
            from trainer.models import DISPLAY

            return DISPLAY.get(v, v)
        if field == "method":
            return method_label(v)
        if field == "terms":
            return ", ".join(f"L_{t}" for t in v)
        if field in BLOCK_FIELDS:
            return "{" + ",".join(str(b) for b in v) + "}"
        if fmt and isinstance(v, (int, float)):
            return fmt.format(v)
        if isinstance(v, float):
            return f"{v:g}"
        return str(v)


DISPLAY_FIELDS = tuple(f for f in AblationRow.model_fields if f not in ("printed", "note"))
DisplayField = Literal[DISPLAY_FIELDS]  # type: ignore[valid-type]


def row_problems(row: AblationRow) -> list[tuple[str, str]]:
    """What makes a merged row meaningless, before any scale is involved."""
    p: list[tuple[str, str]] = []
    if row.student is None:
        p.append(("student", "missing: set it in the row or in the table's base"))
    if row.method is None:
        p.append(("method", f"missing: {', '.join(['none', *methods.row_methods()])} (in the row or in base)"))
        return p
    if row.method == "none":
        if row.teacher is not None:
            p.append(("teacher", "method 'none' trains without a teacher"))
    elif row.teacher is None:
        p.append(("teacher", f"missing: method {row.method!r} needs a teacher"))
    parts = set(methods.split_row_method(row.method))
    for f, owners in METHOD_FIELDS.items():
        if getattr(row, f) is not None and not parts & set(owners):
            p.append((f, f"only {' and '.join(owners)} rows take {f} (this row's method is {row.method!r})"))
    if (
        row.teacher_blocks is not None
        and row.student_blocks is not None
        and len(row.teacher_blocks) != len(row.student_blocks)
    ):
        p.append(
            (
                "teacher_blocks",
                f"{len(row.teacher_blocks)} blocks but student_blocks has "
                f"{len(row.student_blocks)}: blocks are paired in order",
            )
        )
    if row.curve is not None and row.curve != row.method:
        p.append(("curve", f"curve {row.curve!r} but the row's method is {row.method!r}"))
    return p


class Column(StrictModel):
    """A printed column: its header and the row field it reads (with an optional number format)."""

    header: str
    field: DisplayField
    format: str | None = None  # e.g. "{:.2f}"


class TableScale(StrictModel):
    """A table's own training settings at one scale, for another paper's recipe (ViTKD trains 300 epochs
    at lr 1e-3 per 1024 images with gradient clipping): overrides of the scale's student recipe, and the
    student drop_path per paper model. Scales a table does not name use the scale's own settings."""

    recipe: dict[str, Any] = Field(default_factory=dict)
    drop_path: dict[str, Weight] = Field(default_factory=dict)


class AblationTable(StrictModel):
    """One of the paper's tables (or Figure 4): how it is printed and what each row runs."""

    table: str  # "2".."7" or "fig4"
    title: str
    caption: str = ""
    source: str = ""  # where the printed numbers come from, when not Jia et al.
    scales: dict[str, TableScale] = Field(default_factory=dict)  # scale name -> this table's settings there
    columns: list[Column]
    base: RowFields = RowFields()
    rows: list[AblationRow] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _merge_base(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("rows"), list):
            base = data.get("base") or {}
            if isinstance(base, dict):
                base = {k: v for k, v in base.items() if k in RowFields.model_fields}
                data = {**data, "rows": [{**base, **r} if isinstance(r, dict) else r for r in data["rows"]]}
        if isinstance(data, dict) and isinstance(data.get("table"), (int, float)):
            data = {**data, "table": str(data["table"])}
        return data

    @field_validator("table")
    @classmethod
    def _table_id(cls, t: str) -> str:
        t = TABLE_ALIASES.get(t, t)
        if not re.fullmatch(r"[a-z0-9_]+", t):
            raise ValueError(f"table id {t!r}: use the table's number (2..7) or fig4")
        return t

    @model_validator(mode="after")
    def _rows(self) -> AblationTable:
        figure = self.table == "fig4"
        seen: dict[str, int] = {}
        for i, row in enumerate(self.rows):
            row._key = self.row_key(i)
            if figure and row.curve is None:
                raise ValueError(f"rows[{i}].curve: missing: every Figure 4 row names its curve (none, hard, manifold)")
            if not figure and row.curve is not None:
                raise ValueError(f"rows[{i}].curve: only Figure 4's rows are curves")
            key = yaml.safe_dump({**row.overrides(), "head": row.head}, sort_keys=True)
            if key in seen:
                raise ValueError(
                    f"rows[{i}]: duplicates rows[{seen[key]}] (same teacher, student, method and "
                    "settings): each row of a table must differ"
                )
            seen[key] = i
            if figure:
                curve_key = f"curve:{row.curve}"
                if curve_key in seen:
                    raise ValueError(f"rows[{i}].curve: curve {row.curve!r} is also rows[{seen[curve_key]}]")
                seen[curve_key] = i
        return self

    @property
    def label(self) -> str:
        """Short label used in run names and row keys: t2 ... t7, fig4, and other tables by their id."""
        return f"t{self.table}" if self.table.isdigit() else self.table

    def row_key(self, index: int) -> str:
        row = self.rows[index]
        if self.table == "fig4" and row.curve:
            return f"fig4.{row.curve}"
        return f"{self.label}.r{index + 1}"

    def cells(self, index: int) -> list[str]:
        """The row's printed cells, in the paper's column order."""
        row = self.rows[index]
        return [row.display(c.field, c.format) for c in self.columns]


def table_path(ref: str) -> Path | None:
    """The file of a table id ("2".."7", "fig4", aliases), or None when `ref` is not one."""
    t = TABLE_ALIASES.get(str(ref).lower(), str(ref))
    return ABLATIONS / TABLE_FILES[t] if t in TABLE_FILES else None


def is_path_ref(ref: str | Path) -> bool:
    s = str(ref)
    return isinstance(ref, Path) or s.endswith((".yaml", ".yml")) or "/" in s


def load_table(ref: str | Path) -> AblationTable:
    """A table by id ("2".."7", "fig4") or from a YAML file."""
    if is_path_ref(ref):
        path = Path(ref)
    else:
        path = table_path(str(ref))
        if path is None:
            raise GridError(
                [
                    (
                        display_path(ABLATIONS / f"table{ref}.yaml"),
                        "--tables",
                        f"no table {ref!r}: the paper's tables are {', '.join(TABLE_IDS)}, the others "
                        f"{', '.join(EXTRA_TABLES) or 'none'}",
                    )
                ]
            )
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise GridError([(display_path(path), "", "expected a mapping with table, title, columns, rows")])
    try:
        return AblationTable.model_validate(data)
    except ValidationError as err:
        raise GridError(
            [(display_path(path), p, r) for p, r in validation_problems(err, model=AblationTable)]
        ) from None


# ---------------------------------------------------------------------------------------------------
# Scales
# ---------------------------------------------------------------------------------------------------
class ModelMap(StrictModel):
    """The model a paper model becomes at a scale: a timm name (with a pretrained tag for hub teachers)
    or a CPU analog, and its keyword arguments."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    _known = field_validator("name")(_check_model)


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
        if src == "checkpoint" and not self.path:
            raise ValueError("path: missing: source 'checkpoint' needs the checkpoint file")
        if src == "hub" and self.path:
            raise ValueError("path: source 'hub' takes no path (leave `source` out, or set it to checkpoint)")
        if src == "train" and self.recipe is None:
            raise ValueError("recipe: missing: source 'train' needs the teacher's training recipe")
        if src != "train" and (self.recipe is not None or self.data):
            raise ValueError(f"recipe: only source 'train' takes data/recipe (this teacher is {src})")
        if src == "train" and self.path:
            raise ValueError("path: source 'train' takes no path")
        self.__dict__["source"] = src
        return self


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
        from trainer.models import model_info

        for paper, m in self.models.items():
            try:  # on the meta device: no weights allocated
                model_info(m.name, num_classes=self.data.num_classes, in_chans=self.data.in_chans, **m.kwargs)
            except Exception as err:  # timm asserts, TypeError for unknown kwargs, ...
                raise ValueError(
                    f"models.{paper}.kwargs: cannot build {m.name} with {m.kwargs}: {type(err).__name__}: {err}"
                ) from None
        for name, t in self.teachers.items():
            if name not in self.models:
                raise ValueError(f"teachers.{name}: not in `models`: map it to the model trained at this scale")
            if t.source == "train":
                try:
                    DataSpec.model_validate(deep_merge(self.data.model_dump(), t.data))
                except ValidationError as err:
                    path, reason = validation_problems(err, f"teachers.{name}.data")[0]
                    raise ValueError(f"{path}: {reason}") from None
        return self

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


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...], source: str) -> dict:
    """`--set a.b.c=VALUE` (VALUE read as YAML) into a raw scale mapping."""
    data = _unshared(data)  # YAML anchors alias one mapping in several places: --set changes one of them
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise GridError([(source, "--set", f"{item!r}: expected KEY=VALUE, e.g. data.root=/datasets/imagenet")])
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise GridError([(source, f"--set {key}", f"value is not valid YAML: {err}")]) from None
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
    return data


def scale_path(ref: str | Path) -> Path:
    if is_path_ref(ref):
        return Path(ref)
    path = EXPERIMENTS / f"{ref}.yaml"
    if not path.is_file() or ref == "recipes":
        known = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem != "recipes")
        raise GridError(
            [
                (
                    display_path(path),
                    "--scale",
                    f"no scale {ref!r}: scales are {', '.join(known)}, or give a path to a scale YAML",
                )
            ]
        )
    return path


def load_scale(ref: str | Path = "mini", overrides: list[str] | tuple[str, ...] = ()) -> tuple[Scale, Path]:
    """A scale by name (experiments/<name>.yaml) or path, with `--set` overrides applied."""
    path = scale_path(ref)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise GridError([(display_path(path), "", "expected a mapping with scale, models, data, student, teachers")])
    data.setdefault("scale", path.stem)
    source = display_path(path) + (f" (with --set {' '.join(overrides)})" if overrides else "")
    data = apply_overrides(data, overrides, source)
    try:
        return Scale.model_validate(data), path
    except ValidationError as err:
        raise GridError([(source, p, r) for p, r in validation_problems(err, model=Scale)]) from None


# ---------------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------------
class LogitKD(StrictModel):
    """Logit distillation (DeiT, Eq. 5-6): (1 - kd_weight) CE + kd_weight KD."""

    kd: Literal["none", "soft", "hard"]
    tau: Positive = 1.0
    kd_weight: Annotated[float, Strict(), Field(ge=0, le=1)] = 0.5


class RecipeStudent(StrictModel):
    drop_path: Weight | None = None  # overrides the scale's student drop_path for the recipe's rows
    # False: the recipe's rows train each student's model without the distillation token
    # (deit_tiny_distilled_patch16_224 -> deit_tiny_patch16_224, as the scale maps it), logit KD on the class head.
    distilled: bool = True
    # Per scale name: overrides of that scale's student recipe for the recipe's rows (the released script's
    # batch of 64 per GPU x 8 at the paper scale).
    recipe: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def model(self, paper: str) -> str:
        """The paper model a row's student becomes under this recipe."""
        return paper if self.distilled else paper.replace("_distilled_", "_")


class Recipe(StrictModel):
    """The distillation of the manifold and embedding rows."""

    description: str = ""
    logit: LogitKD
    manifold: ManifoldSpec = ManifoldSpec()
    embedding: EmbeddingSpec = EmbeddingSpec()
    student: RecipeStudent = RecipeStudent()


class RecipeBook(StrictModel):
    hard: LogitKD  # DeiT's hard-label distillation: every Hard row, whatever the recipe
    recipes: dict[str, Recipe]
    default: str = "paper-mean"
    aliases: dict[str, str] = Field(default_factory=dict)  # old name -> recipe (renames keep old commands working)

    @model_validator(mode="after")
    def _default(self) -> RecipeBook:
        for old, new in self.aliases.items():
            if new not in self.recipes:
                raise ValueError(f"aliases.{old}: {new!r} is not one of the recipes ({', '.join(self.recipes)})")
            if old in self.recipes:
                raise ValueError(f"aliases.{old}: {old!r} is a recipe itself; an alias must be another name")
        if self.canonical(self.default) not in self.recipes:
            raise ValueError(f"default: {self.default!r} is not one of the recipes ({', '.join(self.recipes)})")
        return self

    def canonical(self, name: str) -> str:
        """The recipe a name stands for: itself, or the recipe an alias points to."""
        return self.aliases.get(name, name)


def load_recipes(path: str | Path | None = None) -> RecipeBook:
    path = Path(path) if path else RECIPES_FILE
    data = read_yaml(path)
    try:
        return RecipeBook.model_validate(data)
    except ValidationError as err:
        raise GridError([(display_path(path), p, r) for p, r in validation_problems(err, model=RecipeBook)]) from None


def recipe_names(book: RecipeBook, names: str | None, path: str | Path | None = None) -> list[str]:
    """`--recipe`/`--recipes` values -> canonical recipe names: None is the default, "all" every recipe,
    "a,b" a list (aliases resolved, duplicates dropped, unknown names an error)."""
    if names is None:
        return [book.canonical(book.default)]
    out: list[str] = []
    for name in (n.strip() for n in str(names).split(",") if n.strip()):
        if name == "all":
            out.extend(book.recipes)
        else:
            get_recipe(book, name, path)
            out.append(book.canonical(name))
    if not out:
        raise GridError([(display_path(path or RECIPES_FILE), "--recipe", "no recipe named")])
    return list(dict.fromkeys(out))


def get_recipe(book: RecipeBook, name: str, path: str | Path | None = None) -> Recipe:
    name = book.canonical(name)
    if name not in book.recipes:
        known = ", ".join(list(book.recipes) + [f"{a} (= {r})" for a, r in book.aliases.items()])
        raise GridError([(display_path(path or RECIPES_FILE), "--recipe", f"no recipe {name!r}: recipes are {known}")])
    return book.recipes[name]
