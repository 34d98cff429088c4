"""The report's model: the plan's tables filled from MLflow, Figure 4's curves, the claims, and what is
still missing with the command that trains it."""

from __future__ import annotations

import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from orchestrator.grid import TABLE_IDS, load_recipes
from orchestrator.report import claims as claims_mod
from orchestrator.report import figure, sequential
from orchestrator.report import protocol as protocol_mod
from orchestrator.report.collect import Collected, collect
from orchestrator.report.tables import TableModel, build_tables
from trainer import datasets
from trainer.tracking import default_uri


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
    generated: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    png: bytes | None = None  # Figure 4, once drawn
    test: str = "welch"  # how claims are decided (claims.basis)
    level: float = claims_mod.stats.LEVEL
    design: sequential.Design = field(default_factory=sequential.Design)  # the looks claims are decided at
    agreements: list = field(default_factory=list)  # DeiT's teacher-agreement matrices (report/agreement.py)

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


def describe_scale(plan: Any, protocols: list[dict[str, str]] | None = None) -> tuple[str, bool]:
    """(a sentence on what the numbers are, whether they compare with the paper's directly).

    With `protocols` (what the finished student runs logged as `protocol.*`), comparability is decided by
    them against the paper's protocol (report/protocol.py) and every deviation is listed; without, by the
    scale alone (a plan with nothing trained yet)."""
    students = [r.spec for r in plan.runs if r.role == "student"] or [r.spec for r in plan.runs]
    if not students:
        return f"Scale '{plan.scale}'.", plan.scale == "paper"
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
    comparable = plan.scale == "paper" and d.dataset == "imagenet" and not d.train_subset
    deviations = ""
    if protocols:
        comparable, deviations = protocol_mod.banner(protocols)
        deviations = " " + deviations
    if comparable:
        return f"Scale '{plan.scale}': the paper's setting — {setting}.{deviations}", True
    analog = "CPU analogs of the paper's models" if any(m.startswith("analog_") for m in models) else "models"
    return (
        f"Scale '{plan.scale}': {analog} on {setting}. These accuracies are NOT comparable with the "
        f"paper's ImageNet numbers; what carries over is the ORDERING of rows within a table and the sign "
        f"of the differences between rows (see the rank column and the claims).{deviations}"
    ), False


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
    models = build_tables(plan, collected.get)
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
    protocols = [
        collected.get(r.hash).protocol
        for r in plan.runs
        if r.role == "student" and collected.get(r.hash).status == "finished"
    ]
    note, comparable = describe_scale(plan, protocols or None)
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
        error=collected.error,
        test=test,
        level=level,
        design=design,
        agreements=agreements,
    )
