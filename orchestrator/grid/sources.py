"""Where each paper-scale setting comes from (`experiments/sources.yaml`): the documents cited, each protocol's
settings beside the value its source states (file:line or section), the teachers' weights with the accuracy
they are expected to reach, and the accuracy each recipe is judged against.

A setting's entry is one case, or a list of cases tried in order; a case may be limited to rows by paper
student, teacher, row method or recipe. It states the source's `value` (left out where the source states
none), and where kdgrid trains something else, `kdgrid` (that value) and `why`; or `unused` (the setting does
not act in those runs). orchestrator/report/audit.py puts every planned run's settings beside these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from orchestrator.grid.errors import invalid, read_yaml
from orchestrator.grid.files import SOURCES_FILE, display_path
from trainer import methods
from trainer.spec_base import StrictModel


class Document(StrictModel):
    """A source, once: what it is and which version was read."""

    title: str
    ref: str  # repository@commit, arXiv id and version, or a file of shared/
    url: str | None = None


class Case(StrictModel):
    """What a source says about one setting, for the rows it matches (unset filters match every row)."""

    student: list[str] | None = None  # the rows' paper students
    teacher: list[str] | None = None
    method: list[str] | None = None  # row methods: a row matches when one of its methods is listed ("none" too)
    recipe: list[str] | None = None  # the plan's recipe
    value: Any = None  # what the source states (left out: it states none)
    source: str | None = None  # a document id
    at: str = ""  # where in it: file:line, section, equation
    kdgrid: Any = None  # kdgrid's value, where it is not the source's
    why: str | None = None  # why kdgrid's value, where it differs or the source states none
    unused: str | None = None  # the setting does not act in these runs: why
    note: str | None = None  # what else a reader should know (a match with a nuance)

    @model_validator(mode="after")
    def _complete(self) -> Case:
        given = self.model_fields_set
        if self.unused is not None:
            return self
        if self.source is None or not self.at:
            raise ValueError("source: a case needs `source` (a document id) and `at`, or `unused`")
        if "value" not in given and "kdgrid" not in given:
            raise ValueError("value: the source's value, or `kdgrid` and `why` where it states none")
        if "kdgrid" in given and not self.why:
            raise ValueError("why: a case with `kdgrid` says why kdgrid's value is not the source's")
        return self

    @property
    def states(self) -> bool:
        return "value" in self.model_fields_set

    @property
    def differs(self) -> bool:
        return "kdgrid" in self.model_fields_set

    def matches(self, student: str | None, teacher: str | None, method: str | None, recipe: str) -> bool:
        parts = set(methods.split_row_method(method or "none")) or {"none"}
        return (
            (self.student is None or student in self.student)
            and (self.teacher is None or teacher in self.teacher)
            and (self.method is None or bool(parts & set(self.method)))
            and (self.recipe is None or recipe in self.recipe)
        )


class Protocol(StrictModel):
    """The settings one paper's runs follow; `extends`: another protocol's, where this one states nothing."""

    description: str
    extends: str | None = None
    tables: list[str] = Field(default_factory=list)  # the tables whose runs follow it
    recipes: list[str] = Field(default_factory=list)  # rows that take a recipe follow it under these recipes
    settings: dict[str, list[Case]]

    @field_validator("settings", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return {k: c if isinstance(c, list) else [c] for k, c in v.items()} if isinstance(v, dict) else v


class Weights(StrictModel):
    """Pretrained weights a teacher loads, and the top-1 they are expected to reach (timm's own results)."""

    acc1: float
    source: str
    at: str


class Reference(StrictModel):
    """The accuracy a recipe's run is judged against where it is not the paper's: every row that resolves
    to the same run as `row` (a row key, "t2.r9") takes it."""

    recipe: str
    row: str
    acc1: float
    source: str
    at: str
    note: str = ""


class Sources(StrictModel):
    documents: dict[str, Document]
    not_audited: dict[str, str]  # setting -> why it is no protocol setting (seeds, the CPU scales' fields)
    protocols: dict[str, Protocol]
    weights: dict[str, Weights] = Field(default_factory=dict)  # timm name with its pretrained tag -> accuracy
    references: list[Reference] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cited(self) -> Sources:
        cited = [(f"weights.{n}", w.source) for n, w in self.weights.items()]
        cited += [(f"references[{i}]", r.source) for i, r in enumerate(self.references)]
        for name, p in self.protocols.items():
            if p.extends is not None and p.extends not in self.protocols:
                raise ValueError(f"protocols.{name}.extends: no protocol {p.extends!r}")
            for key, cases in p.settings.items():
                cited += [(f"protocols.{name}.settings.{key}[{i}]", c.source) for i, c in enumerate(cases)]
        for where, doc in cited:
            if doc is not None and doc not in self.documents:
                raise ValueError(f"{where}.source: no document {doc!r} (documents: {', '.join(self.documents)})")
        tables = [t for p in self.protocols.values() for t in p.tables]
        twice = sorted({t for t in tables if tables.count(t) > 1})
        if twice:
            raise ValueError(f"protocols: table {twice[0]!r} follows two protocols")
        return self

    def settings(self, protocol: str) -> dict[str, list[Case]]:
        """A protocol's cases per setting, its own before those of the protocol it extends."""
        p = self.protocols[protocol]
        inherited = self.settings(p.extends) if p.extends else {}
        return {**inherited, **{k: v + inherited.get(k, []) for k, v in p.settings.items()}}

    def protocol_of(self, table: str, recipe_row: bool, recipe: str) -> str | None:
        """The protocol a row's run follows: its recipe's, for rows that take one, else its table's."""
        if recipe_row:
            for name, p in self.protocols.items():
                if recipe in p.recipes:
                    return name
        return next((name for name, p in self.protocols.items() if table in p.tables), None)

    def cite(self, doc: str | None, at: str = "") -> str:
        """'huawei-noah/Efficient-Computing@6c74f9a5 Distillation/ManifoldKD README.md:55'."""
        if doc is None:
            return ""
        return f"{self.documents[doc].ref} {at}".strip() if doc in self.documents else f"{doc} {at}".strip()


def load_sources(path: str | Path | None = None) -> Sources:
    path = Path(path) if path else SOURCES_FILE
    try:
        return Sources.model_validate(read_yaml(path))
    except ValidationError as err:
        raise invalid(display_path(path), err, Sources) from None
