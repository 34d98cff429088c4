"""A table row: the settings it runs (the paper's models, the method, the settings the method's rows vary)
and how the paper prints it. The method fields come from the method registry (trainer/methods/)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, Strict, create_model, field_validator, model_validator

from trainer import methods
from trainer.spec_base import StrictModel

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


def check_model(cls, name: str | None) -> str | None:
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

    _known = field_validator("teacher", "student")(check_model)

    @field_validator("method")
    @classmethod
    def _method(cls, method):
        problem = method_problem(method) if method is not None else None
        if problem:
            raise ValueError(problem)
        return method

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

NOT_SETTINGS = ("paper_acc1", "teacher_acc1", "printed", "note", "curve", "head")  # display only


class AblationRow(RowFields):
    """One printed row, its base merged in: the settings and the paper's value."""

    paper_acc1: Acc = Field(description="every row needs the paper's reported value (paper_acc1)")
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
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k not in NOT_SETTINGS}

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
            return methods.blocks_text(v)
        if fmt and isinstance(v, (int, float)):
            return fmt.format(v)
        return f"{v:g}" if isinstance(v, float) else str(v)


DISPLAY_FIELDS = tuple(f for f in AblationRow.model_fields if f not in ("printed", "note"))


def _teacher_problems(row: AblationRow) -> list[tuple[str, str]]:
    if row.method == "none":
        return [("teacher", "method 'none' trains without a teacher")] if row.teacher is not None else []
    return [("teacher", f"missing: method {row.method!r} needs a teacher")] if row.teacher is None else []


def row_problems(row: AblationRow) -> list[tuple[str, str]]:
    """What makes a merged row meaningless, before any scale is involved."""
    p: list[tuple[str, str]] = []
    if row.student is None:
        p.append(("student", "missing: set it in the row or in the table's base"))
    if row.method is None:
        p.append(("method", f"missing: {', '.join(['none', *methods.row_methods()])} (in the row or in base)"))
        return p
    p += _teacher_problems(row)
    parts = set(methods.split_row_method(row.method))
    for f, owners in METHOD_FIELDS.items():
        if getattr(row, f) is not None and not parts & set(owners):
            p.append((f, f"only {' and '.join(owners)} rows take {f} (this row's method is {row.method!r})"))
    paired = methods.paired_blocks_problem(row.student_blocks, row.teacher_blocks)
    if paired:
        p.append(("teacher_blocks", paired))
    if row.curve is not None and row.curve != row.method:
        p.append(("curve", f"curve {row.curve!r} but the row's method is {row.method!r}"))
    return p
