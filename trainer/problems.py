"""Problems found before anything runs, each as (file, field path, reason): the one error type and the one
formatter of pydantic's validation errors, shared by specs (trainer.spec) and the grid (orchestrator.grid).

A message reads `ablations/table5.yaml: rows[1].teacher_blocks[3]: block 25 is beyond ...`; an unknown key
says which key was meant (`unknown key (did you mean alpha?)`) when the model it belongs to is known.
"""

from __future__ import annotations

import difflib
import re
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

Entry = tuple[str | None, str, str]  # (file, field path, reason)


class SpecError(ValueError):
    """A spec that cannot run, with where (file, field path) and why."""

    heading = "invalid spec"

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self._set([(source, path, reason) for path, reason in problems])

    def _set(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.problems = [(path, reason) for _, path, reason in entries]
        self.source = entries[0][0] if entries else None
        lines = [f"{f}: {p or '<root>'}: {r}" if f else f"{p or '<root>'}: {r}" for f, p, r in entries]
        ValueError.__init__(self, f"{self.heading}\n  " + "\n  ".join(lines))


# A model validator's message "field.path: reason" names the field it is about (not "no term selected: ...").
_HEAD = re.compile(r"^[A-Za-z_][\w.\[\]]*$")


def loc_path(loc: tuple) -> str:
    """("rows", 1, "teacher_blocks", 3) -> "rows[1].teacher_blocks[3]"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) in (Union, UnionType, Annotated):
        args = [a for a in get_args(tp) if a is not type(None)]
        tp = args[0] if args else tp
    return tp


def _model_at(model: type[BaseModel] | None, loc: tuple) -> type[BaseModel] | None:
    """The model of the mapping at `loc` inside `model`, if it is one."""
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
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unknown_key(model: type[BaseModel] | None, loc: tuple) -> str:
    parent = _model_at(model, loc[:-1])
    known = list(parent.model_fields) if parent else []
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (expected one of: {', '.join(known)})" if known else "unknown key"


def _missing(model: type[BaseModel] | None, loc: tuple) -> str:
    """A required field's own description says why it is needed, where it has one."""
    parent = _model_at(model, loc[:-1])
    field = parent.model_fields.get(loc[-1]) if parent and isinstance(loc[-1], str) else None
    return f"missing: {field.description}" if field is not None and field.description else "missing (required)"


def validation_problems(
    err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[tuple[str, str]]:
    """(field path, reason) for each pydantic error. A validator's "field: reason" message extends the path;
    with the validated `model` given, unknown keys suggest the key meant."""
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
                msg = rest
        if e["type"] == "extra_forbidden":
            msg = _unknown_key(model, loc)
        elif e["type"] == "missing":
            msg = _missing(model, loc)
        problems.append((".".join(p for p in (prefix, path) if p).replace(".[", "["), msg))
    return problems
