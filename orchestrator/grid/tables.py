"""An ablation table (`ablations/table2.yaml` ... `table7.yaml`, `figure4.yaml`, other papers' tables): a
`base` plus `rows`, `columns` saying how each printed column is read off a row, and the table's own
settings per scale. Loaded by id ("2", "fig4", "vitkd") or from a path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from orchestrator.grid.errors import GridError, invalid, read_yaml
from orchestrator.grid.files import TABLE_ALIASES, display_path, is_path_ref, table_path, unknown_table
from orchestrator.grid.overrides import DataOverride, RecipeOverride
from orchestrator.grid.rows import DISPLAY_FIELDS, AblationRow, RowFields
from trainer.spec_base import StrictModel, Weight

DisplayField = Literal[DISPLAY_FIELDS]  # type: ignore[valid-type]


class Column(StrictModel):
    """A printed column: its header and the row field it reads (with an optional number format)."""

    header: str
    field: DisplayField
    format: str | None = None  # e.g. "{:.2f}"


class StudentProtocol(StrictModel):
    """One student's own settings in a table's protocol (ViTKD's DeiT-B: no drop-path change, an EMA)."""

    drop_path: Weight | None = None
    recipe: RecipeOverride = RecipeOverride()


class TableScale(StrictModel):
    """A table's own protocol at one scale, for another paper's recipe (ViTKD: mmcls's sampler without
    repeated augmentation, 300 epochs at lr 1e-3 per 1024 images, gradient clipping, fp32, an EMA for
    DeiT-B): what it changes in the scale's student data and recipe, for every row and per paper student.
    Keys are the spec's own, checked on load. Scales a table does not name use the scale's own settings."""

    data: DataOverride = DataOverride()
    recipe: RecipeOverride = RecipeOverride()
    students: dict[str, StudentProtocol] = Field(default_factory=dict)  # paper student -> its own settings


class AblationTable(StrictModel):
    """One of the paper's tables (or Figure 4, or another paper's table): how it is printed, what each row runs."""

    table: str  # "2".."7", "fig4", or another table's id
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
        for i, row in enumerate(self.rows):
            row._key = self.row_key(i)
        for path, reason in self._row_problems() + self._scale_problems():
            raise ValueError(f"{path}: {reason}")
        return self

    def _scale_problems(self) -> list[tuple[str, str]]:
        """A student's own settings must name a student some row trains."""
        students = {row.student for row in self.rows}
        for scale, own in self.scales.items():
            for name in own.students:
                if name not in students:
                    known = ", ".join(sorted(s for s in students if s))
                    return [(f"scales.{scale}.students.{name}", f"no row of this table trains it (students: {known})")]
        return []

    def _row_problems(self) -> list[tuple[str, str]]:
        """Figure 4's rows are its curves, once each; no two rows of a table are the same settings."""
        figure = self.table == "fig4"
        seen: dict[str, int] = {}
        for i, row in enumerate(self.rows):
            if figure and row.curve is None:
                return [(f"rows[{i}].curve", "missing: every Figure 4 row names its curve (none, hard, manifold)")]
            if not figure and row.curve is not None:
                return [(f"rows[{i}].curve", "only Figure 4's rows are curves")]
            key = yaml.safe_dump({**row.overrides(), "head": row.head}, sort_keys=True)
            if key in seen:
                reason = (
                    f"duplicates rows[{seen[key]}] (same teacher, student, method and settings): "
                    "each row of a table must differ"
                )
                return [(f"rows[{i}]", reason)]
            seen[key] = i
            if figure:
                curve = f"curve:{row.curve}"
                if curve in seen:
                    return [(f"rows[{i}].curve", f"curve {row.curve!r} is also rows[{seen[curve]}]")]
                seen[curve] = i
        return []

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


def load_table(ref: str | Path) -> AblationTable:
    """A table by id ("2".."7", "fig4", aliases, other tables' ids) or from a YAML file."""
    path = Path(ref) if is_path_ref(ref) else table_path(str(ref))
    if path is None:
        raise GridError([unknown_table(str(ref))])
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise GridError([(display_path(path), "", "expected a mapping with table, title, columns, rows")])
    try:
        return AblationTable.model_validate(data)
    except ValidationError as err:
        raise invalid(display_path(path), err, AblationTable) from None
