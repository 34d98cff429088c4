"""The report's model: the plan's tables filled from MLflow, Figure 4's curves, the claims, and what is
still missing with the command that trains it."""

from __future__ import annotations

import shlex
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.grid import TABLE_IDS, load_recipes
from orchestrator.grid.sources import Sources, load_sources
from orchestrator.report import claims as claims_mod
from orchestrator.report import figure, sequential, versions
from orchestrator.report import protocol as protocol_mod
from orchestrator.report.collect import Collected, collect
from orchestrator.report.tables import TableModel, build_tables
from trainer import datasets
from trainer.tracking import default_uri

COMPARABLE, ANALOG, NOTHING_YET = "Comparable with the paper", "Analog numbers", "Nothing to compare yet"


@dataclass
class Report:
    scale: str
    recipe: str
    seeds: int
    uri: str
    tables: list[TableModel]  # Tables 2-7 present in the plan, in order
    fig4: TableModel | None
    curves: dict[str, claims_mod.Curve]
    claims: list[claims_mod.ClaimResult]
    counts: Counter  # planned runs by state: finished / running / failed / killed / missing
    command: str  # the `kdgrid reproduce ...` that trains what is missing
    scale_note: str
    comparable: bool  # the paper's own setting: absolute numbers compare with the paper's
    error: str | None = None
    banner: str = ""  # the banner's label (unset: from `comparable`); NOTHING_YET while no run has finished
    protocol_sources: str = ""  # the reference protocols' values and their sources, under the banner
    generated: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    png: bytes | None = None  # Figure 4, once drawn
    test: str = "welch"  # how claims are decided (claims.basis)
    level: float = claims_mod.stats.LEVEL
    design: sequential.Design = field(default_factory=sequential.Design)  # the looks claims are decided at
    agreements: list = field(default_factory=list)  # DeiT's teacher-agreement matrices (report/agreement.py)

    def __post_init__(self) -> None:
        self.banner = self.banner or (COMPARABLE if self.comparable else ANALOG)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def complete(self) -> bool:
        return self.error is None and self.counts.get("finished", 0) == self.total

    def figure_png(self) -> bytes | None:
        if self.png is None and figure.has_data(self.curves):
            paper = (
                {r.curve: r.paper_acc1 for r in self.fig4.rows if r.curve and r.paper_acc1 is not None}
                if self.comparable and self.fig4 is not None
                else None
            )
            self.png = figure.plot(
                self.curves, title=f"Figure 4 — top-1 per epoch, scale '{self.scale}'", paper_final=paper
            )
        return self.png

    def summary(self) -> str:
        order = ("finished", "running", "failed", "killed", "missing")
        parts = [f"{self.counts[k]} {k}" for k in order if self.counts.get(k)]
        return f"{self.total} planned runs: " + ", ".join(parts) if parts else "no planned runs"


def reproduce_command(plan: Any, tracking_uri: str | None = None, overrides: tuple[str, ...] = ()) -> str:
    """The exact command that trains this report's grid (what is finished is skipped)."""
    tables = [str(t.table) for t in plan.tables]
    args = ["kdgrid", "reproduce", "--scale", str(plan.scale)]
    if sorted(tables) != sorted(TABLE_IDS):  # all tables is the default
        args += ["--tables", ",".join(tables)]
    if plan.seeds != 1:
        args += ["--seeds", str(plan.seeds)]
    book = load_recipes()
    if plan.recipe != book.canonical(book.default):
        args += ["--recipe", str(plan.recipe)]
    for o in overrides:
        args += ["--set", str(o)]
    if tracking_uri:
        args += ["--tracking-uri", tracking_uri]
    return shlex.join(args)


def describe_scale(plan: Any, protocols: Mapping[str, list[dict[str, str]]] | None = None) -> tuple[str, bool, str]:
    """(a sentence on what the numbers are, whether they compare with the paper's directly, the banner's label).

    `protocols`: what the finished student runs logged as `protocol.*`, by the reference each is held to
    (report/protocol.py); comparability is decided by them and every deviation is listed. With no finished
    run, nothing can be compared yet, whatever the scale promises."""
    students = [r.spec for r in plan.runs if r.role == "student"] or [r.spec for r in plan.runs]
    if not students:
        return f"Scale '{plan.scale}'.", False, NOTHING_YET
    d, epochs = students[0].data, sorted({s.recipe.epochs for s in students})
    models = sorted({s.student.name for s in students} | {s.teacher.name for s in students if s.teacher})
    dataset = datasets.get(d.dataset).display_name
    subset = f", {d.train_subset} training images" if d.train_subset else ""
    subset += f", {d.val_subset} validation images" if d.val_subset else ""
    ep = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"
    setting = (
        f"{dataset} ({d.img_size}×{d.img_size}, {d.num_classes} classes{subset}), {ep} epochs, "
        f"models: {', '.join(models)}"
    )
    if not protocols or not any(protocols.values()):
        return (
            f"Scale '{plan.scale}': {setting}. No student run of this grid has finished yet: nothing can be "
            "compared with the paper's numbers, whatever the scale.",
            False,
            NOTHING_YET,
        )
    comparable, deviations = protocol_mod.banner_by_reference(protocols)
    deviations = " " + deviations
    if comparable:
        return f"Scale '{plan.scale}': the paper's setting — {setting}.{deviations}", True, COMPARABLE
    analog = "CPU analogs of the paper's models" if any(m.startswith("analog_") for m in models) else "models"
    return (
        (
            f"Scale '{plan.scale}': {analog} on {setting}. These accuracies are NOT comparable with the "
            f"paper's ImageNet numbers; what carries over is the ORDERING of rows within a table and the sign "
            f"of the differences between rows (see the rank column and the claims).{deviations}"
        ),
        False,
        ANALOG,
    )


def reference_of(plan: Any, run: Any, sources: Sources) -> str:
    """The reference protocol a student run is held to: its first row's table's, or its recipe's."""
    from orchestrator.plan.specs import uses_recipe

    use = run.uses[0] if run.uses else None
    if use is None:
        return "deit"
    row = plan.table(use.table).rows[use.index]
    proto = sources.protocol_of(use.table, uses_recipe(row.method), plan.recipe)
    return proto if proto in protocol_mod.REFERENCES else "deit"


def build_report(
    plan: Any,
    tracking_uri: str,
    overrides: tuple[str, ...] = (),
    collected: Collected | None = None,
    *,
    test: str = "welch",
    level: float = claims_mod.stats.LEVEL,
    effect: float | None = None,
    max_seeds: int = sequential.MAX_SEEDS,
) -> Report:
    """Everything the renderers show. `overrides`: the `--set` options the plan was made with (they go
    into the `kdgrid reproduce` hint). The claims are decided by the sequential design that the grid's
    `--seeds` and `--max-seeds` fix before any result is seen (its looks), at `level`."""
    design = sequential.design_for(plan.seeds, max_seeds, level)
    hashes = {r.hash: r.spec.recipe.epochs for r in plan.runs}
    fig_hashes = [
        p.hash
        for t in plan.tables
        if str(t.table) == "fig4"
        for i in range(len(t.rows))
        for p in plan.row_runs(t.table, i)
    ]
    if collected is None:
        collected = collect(plan.scale, tracking_uri, hashes, histories=fig_hashes)
    sources = load_sources()
    models = build_tables(plan, collected.get, sources=sources)
    tables = [m for m in models if m.table != "fig4"]
    fig4 = next((m for m in models if m.table == "fig4"), None)
    curves = figure.build_curves(fig4) if fig4 is not None else {}
    claims = claims_mod.check_all(tables, test=test, level=level, effect=effect, design=design)
    if fig4 is not None:
        claims.append(claims_mod.figure4_claim(curves, fig4, test=test, level=level, effect=effect, design=design))
    agreements = []
    deit = next((t for t in tables if t.table == "deit"), None)
    if deit is not None and not collected.error:
        from orchestrator.report import agreement

        agreements = agreement.build(deit, tracking_uri)
        claims.append(agreement.agreement_claim(agreements, test=test, level=level, effect=effect, design=design))
    counts = Counter(collected.get(h).status for h in hashes)
    protocols: dict[str, list[dict[str, str]]] = {}
    for r in plan.students:
        if collected.get(r.hash).status == "finished":
            protocols.setdefault(reference_of(plan, r, sources), []).append(collected.get(r.hash).protocol)
    note, comparable, label = describe_scale(plan, protocols)
    note = f"{note} {versions.note(collected.get(h) for h in hashes)}".strip()
    references = {reference_of(plan, r, sources) for r in plan.students} or {"deit"}
    explicit_uri = tracking_uri if tracking_uri != default_uri() else None  # the hint names a store only if needed
    return Report(
        scale=plan.scale,
        recipe=plan.recipe,
        seeds=plan.seeds,
        uri=tracking_uri,
        tables=tables,
        fig4=fig4,
        curves=curves,
        claims=claims,
        counts=counts,
        command=reproduce_command(plan, explicit_uri, tuple(overrides)),
        scale_note=note,
        comparable=comparable,
        banner=label,
        protocol_sources=protocol_mod.sources_line(k for k in protocol_mod.REFERENCES if k in references),
        error=collected.error,
        test=test,
        level=level,
        design=design,
        agreements=agreements,
    )
