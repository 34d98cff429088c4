"""A search space over experiment-spec fields, written in YAML and validated before anything starts.

`ablations/search-manifold.yaml`:

    search: manifold
    base: fig4.manifold                 # the planned row every trial starts from (scale + recipe applied)
    space:
      distillation.manifold.alpha: loguniform(0.1, 10)
      distillation.manifold.k: choice([0, 96, 192, 384])
      distillation.manifold: choice([{student_blocks: [...], teacher_blocks: [...]}, ...])   # block sets
    paper: {distillation.manifold.alpha: 1.0, ...}   # the paper's choice, placed among the trials

A key is a dotted path into `trainer.spec.ExperimentSpec`; a value is `name(args)` with YAML flow
arguments, one of Ray Tune's own distributions (`DISTRIBUTIONS`). A `choice` whose options are mappings
sets several fields at once (a block set pairs student and teacher blocks). Checks, each naming the file,
the key and the reason: the key is a field of the spec (`check_fields`, from the pydantic schema alone),
the range is one the distribution accepts, and every bound and every option, applied to the base row's
spec, is a valid spec (`check_values`: pydantic's own field checks, e.g. alpha >= 0, k within the batch).
"""

from __future__ import annotations

import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.grid import GridError, display_path
from trainer.spec import ExperimentSpec, format_validation_error

# name -> (number of arguments, kind); kinds: continuous ranges, integer ranges, a list of options
DISTRIBUTIONS = {
    "uniform": (2, "float"),
    "loguniform": (2, "float"),
    "randint": (2, "int"),
    "lograndint": (2, "int"),
    "choice": (1, "choice"),
}
NOT_SEARCHABLE = {
    "seed": "seeds are not searched: the report re-runs the top configurations with --seeds",
    "name": "display only (not part of a run)",
    "scale": "display only (not part of a run)",
    "recipe_name": "display only (not part of a run)",
    "tags": "display only (not part of a run)",
}
_CALL = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$", re.S)


class Param(BaseModel):
    """One searched key: a Tune distribution and its arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str
    dist: Literal["uniform", "loguniform", "randint", "lograndint", "choice"]
    low: float | None = None
    high: float | None = None
    options: tuple[Any, ...] = ()

    @property
    def log(self) -> bool:
        return self.dist in ("loguniform", "lograndint")

    def probe_values(self) -> list[Any]:
        """What `check_values` applies to the base spec: both bounds, or every option."""
        if self.dist == "choice":
            return list(self.options)
        if self.dist in ("randint", "lograndint"):  # Tune's upper bound is exclusive
            return [int(self.low), int(self.high) - 1]
        return [float(self.low), float(self.high)]

    def domain(self):
        """The Ray Tune domain (tune.loguniform, tune.choice, ...)."""
        from ray import tune

        if self.dist == "choice":
            return tune.choice(list(self.options))
        if self.dist in ("randint", "lograndint"):
            return getattr(tune, self.dist)(int(self.low), int(self.high))
        return getattr(tune, self.dist)(float(self.low), float(self.high))

    def text(self) -> str:
        if self.dist == "choice":
            return f"choice({len(self.options)} options)"
        return f"{self.dist}({self.low:g}, {self.high:g})"


class SearchSpec(BaseModel):
    """A search file: the base row, the space, the paper's choice, what is optimised and how ASHA stops."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    search: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    title: str = ""
    base: str = "fig4.manifold"  # a row key of the plan: fig4.manifold, t4.r2, ...
    metric: Literal["val.top1"] = "val.top1"
    space: dict[str, Param]
    paper: dict[str, Any] = Field(default_factory=dict)  # overrides of the base giving the paper's choice
    grace_period: int = Field(2, ge=1)  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: float = Field(3, gt=1)  # ASHA: keep the top 1/reduction_factor at each rung
    random_state: int = 0  # Tune's random searcher (BasicVariantGenerator) seed

    @field_validator("space", mode="before")
    @classmethod
    def _parse(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not raw:
            raise ValueError(
                "a mapping of spec fields to distributions, e.g. 'distillation.manifold.alpha: loguniform(0.1, 10)'"
            )
        return {str(k): v if isinstance(v, Param) else parse_param(str(k), v) for k, v in raw.items()}

    def keys_label(self) -> str:
        return ", ".join(self.space)


def parse_param(key: str, text: Any) -> Param:
    """`loguniform(0.1, 10)`, or the YAML form `{choice: [...]}` / `{loguniform: [0.1, 10]}` (options
    over several lines), -> Param; raises ValueError saying what is wrong."""
    if isinstance(text, dict) and len(text) == 1 and next(iter(text)) in DISTRIBUTIONS:
        name, args = next(iter(text.items()))
        return _param(key, name, [args] if name == "choice" else args if isinstance(args, list) else [args])
    if not isinstance(text, str):
        raise ValueError(
            f"{key}: {text!r} is not a distribution: write one of {', '.join(f'{d}(...)' for d in DISTRIBUTIONS)}"
        )
    m = _CALL.match(text)
    if not m:
        raise ValueError(
            f"{key}: {text!r} is not a distribution: write e.g. loguniform(0.1, 10) or choice([0, 96, 192])"
        )
    name, inner = m.groups()
    if name not in DISTRIBUTIONS:
        raise ValueError(f"{key}: unknown distribution {name!r}: one of {', '.join(DISTRIBUTIONS)}")
    try:
        args = yaml.safe_load(f"[{inner}]")
    except yaml.YAMLError as err:
        raise ValueError(f"{key}: arguments of {name} are not valid YAML: {err}") from None
    return _param(key, name, args)


def _param(key: str, name: str, args: list) -> Param:
    n, kind = DISTRIBUTIONS[name]
    if len(args) != n:
        raise ValueError(f"{key}: {name} takes {n} argument(s), got {len(args)}")
    if kind == "choice":
        options = args[0]
        if not isinstance(options, list) or not options:
            raise ValueError(f"{key}: choice takes a non-empty list of options, e.g. choice([0, 96, 192])")
        return Param(key=key, dist=name, options=tuple(_frozen(o) for o in options))
    low, high = args
    for v in (low, high):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{key}: {name} bounds must be finite numbers, got {v!r}")
        if kind == "int" and not float(v).is_integer():
            raise ValueError(f"{key}: {name} bounds must be integers, got {v!r}")
    if not low < high:
        raise ValueError(f"{key}: {name}({low}, {high}) is an empty range: the lower bound comes first")
    if name.startswith("log") and low <= 0:
        raise ValueError(f"{key}: {name}({low}, {high}) needs a lower bound above 0 (a log scale)")
    if kind == "int" and high - low < 1:
        raise ValueError(f"{key}: {name}({low}, {high}) holds no integer (the upper bound is exclusive)")
    return Param(key=key, dist=name, low=float(low), high=float(high))


def _frozen(v: Any) -> Any:
    """Options as hashable, comparable values: lists become tuples (Tune and pydantic accept both)."""
    if isinstance(v, list):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return {k: _frozen(x) for k, x in v.items()}
    return v


# ---------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------
def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (through Optional/Union), or None for a leaf."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for a in typing.get_args(annotation):
            m = _model_of(a)
            if m is not None:
                return m
    return None


def field_problem(key: str, mapping_options: bool = False) -> str | None:
    """Why `key` is not a searchable field of ExperimentSpec (None: it is)."""
    parts = key.split(".")
    model: type[BaseModel] | None = ExperimentSpec
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        if model is None:
            return f"{'.'.join(parts[:i])} is a value, it has no field {part!r}"
        fields = model.model_fields
        if part not in fields:
            return f"unknown field {here!r}: {model.__name__} has {', '.join(fields)}"
        if i == 0 and part in NOT_SEARCHABLE:
            return NOT_SEARCHABLE[part]
        extra = fields[part].json_schema_extra
        if isinstance(extra, dict) and extra.get("hash") is False:
            return f"{here} is an execution detail, not part of what is trained"
        model = _model_of(fields[part].annotation)
    if model is not None and not mapping_options:
        return (
            f"{key} is a group of fields ({', '.join(model.model_fields)}): search one of them, or give "
            "choice([...]) of mappings to set several at once"
        )
    if model is None and mapping_options:
        return f"{key} is a single value: choice options that are mappings need a group of fields"
    return None


def check_fields(search: SearchSpec) -> list[tuple[str, str]]:
    """(field path in the search file, reason) for every key that is not a searchable spec field."""
    problems = []
    for key, p in search.space.items():
        maps = p.dist == "choice" and all(isinstance(o, dict) for o in p.options)
        if p.dist == "choice" and not maps and any(isinstance(o, dict) for o in p.options):
            problems.append((f"space.{key}", "mix of mappings and values among the options"))
            continue
        why = field_problem(key, maps)
        if why:
            problems.append((f"space.{key}", why))
            continue
        if maps:
            for j, o in enumerate(p.options):
                for sub in o:
                    why = field_problem(f"{key}.{sub}")
                    if why:
                        problems.append((f"space.{key}.options[{j}].{sub}", why))
    for key in search.paper:
        why = field_problem(key, isinstance(search.paper[key], dict))
        if why:
            problems.append((f"paper.{key}", why))
    for a, p in search.space.items():  # a field set both alone and by a group's options
        sets = {f"{a}.{sub}" for o in p.options if isinstance(o, dict) for sub in o}
        for b in search.space:
            if b in sets:
                problems.append((f"space.{b}", f"also set by the options of space.{a}: search each field once"))
    return problems


def set_path(raw: dict, key: str, value: Any) -> dict:
    """`raw` with `key` (dotted) set to `value`; a mapping value updates the group. Copies what it changes."""
    parts = key.split(".")
    out = dict(raw)
    node = out
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    last = parts[-1]
    if isinstance(value, dict):
        merged = dict(node.get(last) or {})
        merged.update({k: _plain(v) for k, v in value.items()})
        node[last] = merged
    else:
        node[last] = _plain(value)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def apply(base: ExperimentSpec, overrides: dict[str, Any]) -> ExperimentSpec:
    """The base spec with the overrides applied (dotted keys), validated; display fields kept."""
    raw = base.model_dump(mode="json")
    for key, value in overrides.items():
        raw = set_path(raw, key, value)
    return ExperimentSpec.model_validate(raw)


def check_values(search: SearchSpec, base: ExperimentSpec) -> list[tuple[str, str]]:
    """Every bound and option (and the paper's choice) applied to the base spec: what pydantic refuses."""
    problems = []
    probes = [(f"space.{k}", k, v) for k, p in search.space.items() for v in p.probe_values()]
    probes += [(f"paper.{k}", k, v) for k, v in search.paper.items()]
    for where, key, value in probes:
        try:
            apply(base, {key: value})
        except ValidationError as err:
            for path, reason in format_validation_error(err):
                shown = value if not isinstance(value, dict) else "{" + ", ".join(value) + "}"
                problems.append((where, f"{shown!r}: {path}: {reason}" if path else f"{shown!r}: {reason}"))
    return problems


def _space_problems(raw: Any) -> list[tuple[str, str]]:
    """Each key of a raw `space:` mapping checked as a field and as a distribution (both reported)."""
    if not isinstance(raw, dict):
        return []
    problems = []
    for key, value in raw.items():
        key = str(key)
        try:
            p = parse_param(key, value)
        except ValueError as err:
            p = None
            problems.append((f"space.{key}", str(err).removeprefix(f"{key}: ")))
        maps = p is not None and p.dist == "choice" and all(isinstance(o, dict) for o in p.options)
        why = field_problem(key, maps)
        if why and not (p is None and "group of fields" in why):  # a group with a broken choice: said above
            problems.append((f"space.{key}", why))
    return problems


def load_search(path: str | Path) -> SearchSpec:
    """Read and check a search file (fields only; `check_values` needs the base row's spec)."""
    path = Path(path)
    src = display_path(path)
    if not path.is_file():
        raise GridError([(src, "", f"no such file {path}")])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise GridError([(src, "", f"not valid YAML: {err}")]) from None
    early = _space_problems(data.get("space") if isinstance(data, dict) else None)
    if early:  # every key's problems at once: its field and its distribution
        raise GridError([(src, w, r) for w, r in early])
    try:
        search = SearchSpec.model_validate(data)
    except ValidationError as err:
        entries = []
        for e in err.errors():
            loc = ".".join(str(x) for x in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown key"
            if loc == "space" and ": " in msg and not msg.startswith("a mapping"):  # "KEY: reason"
                key, _, msg = msg.partition(": ")
                loc = f"space.{key}"
            entries.append((src, loc or "<root>", msg))
        raise GridError(entries) from None
    problems = check_fields(search)
    if problems:
        raise GridError([(src, w, r) for w, r in problems])
    return search
