"""The teacher-agreement matrix of DeiT (Touvron et al., 2021, "Agreement with the teacher"): for every pair
among the ground truth, the teacher, the no-distillation student and each head of the distilled student,
the fraction of validation images whose top-1 predictions differ.

Built from the per-image predictions each run saves at its end (MLflow artifacts
`predictions/predictions.json`: labels and the top-1 of the output and of each head; `predictions/teacher.json`:
the teacher's), seed by seed, then averaged over the seeds that have every column. `disagreement` is pure;
`build` reads MLflow. The claim "the distilled student agrees more with the teacher than the undistilled
one" is decided like the others (claims.compare) on the per-seed agreement with the teacher.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.report import claims as claims_mod
from orchestrator.report.tables import TableModel

GROUND_TRUTH, TEACHER = "ground truth", "teacher"
NONE = "no distillation"
HEADS = {"cls": "DeiT⚗ class", "dist": "DeiT⚗ distil.", "top1": "DeiT⚗ class+distil."}
COLUMNS = (GROUND_TRUTH, TEACHER, NONE, *HEADS.values())
DISTILLED_METHOD = "DeiT⚗ – class+distillation"  # the distilled student's row (the run all three heads share)
NONE_METHOD = "DeiT – no distillation"


def disagreement(columns: dict[str, list[int]]) -> dict[tuple[str, str], float]:
    """{(a, b): fraction of images where columns a and b differ} for every ordered pair (0 on the diagonal)."""
    names = list(columns)
    n = {len(v) for v in columns.values()}
    if len(n) != 1:
        raise ValueError(f"prediction columns of different lengths: { {k: len(v) for k, v in columns.items()} }")
    size = n.pop()
    out = {}
    for a in names:
        for b in names:
            out[a, b] = sum(x != y for x, y in zip(columns[a], columns[b])) / size if size else math.nan
    return out


@dataclass
class Agreement:
    student: str  # the printed student, e.g. DeiT-Tiny
    names: list[str]
    per_seed: dict[int, dict[tuple[str, str], float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    row_refs: tuple[claims_mod.RowRef, ...] = ()  # the distilled and no-distillation rows: where --resolve adds seeds

    def mean(self, a: str, b: str) -> float | None:
        vals = [m[a, b] for m in self.per_seed.values() if (a, b) in m]
        return sum(vals) / len(vals) if vals else None

    def rows(self) -> list[list[str]]:
        """The matrix as printed cells (fractions with three decimals, as DeiT prints them)."""
        out = []
        for a in self.names:
            cells = [a]
            for b in self.names:
                v = self.mean(a, b)
                cells.append("–" if v is None else f"{v:.3f}")
            out.append(cells)
        return out


def columns_of(student_preds: dict, teacher_preds: dict | None, none_preds: dict | None) -> dict[str, list[int]]:
    """One seed's prediction columns (labels checked to be the same images in the same order)."""
    cols = {GROUND_TRUTH: student_preds["label"]}
    for other in (teacher_preds, none_preds):
        if other is not None and other.get("label") != student_preds["label"]:
            raise ValueError("prediction files cover different validation images")
    if teacher_preds is not None:
        cols[TEACHER] = teacher_preds["top1"]
    if none_preds is not None:
        cols[NONE] = none_preds["top1"]
    for key, name in HEADS.items():
        if key in student_preds:
            cols[name] = student_preds[key]
    return cols


def _reader(tracking_uri: str) -> Callable[[str, str], dict | None]:
    from trainer import tracking

    c = tracking.client(tracking_uri)

    def read(run_id: str, name: str) -> dict | None:
        """The file's content; its download is deleted at once (a report must not leave copies in /tmp)."""
        with tempfile.TemporaryDirectory(prefix="kdgrid-predictions-") as tmp:
            try:
                path = tracking.fetch_artifact(c, run_id, f"predictions/{name}", Path(tmp))
                return json.loads(Path(path).read_text())
            except Exception:  # not saved (a run from before predictions, a multi-process run): no column
                return None

    return read


def build(
    table: TableModel, tracking_uri: str, read: Callable[[str, str], dict | None] | None = None
) -> list[Agreement]:
    """One matrix per student size of DeiT's table whose distilled row has finished seeds."""
    read = read or _reader(tracking_uri)
    out = []
    for dist_row in table.rows:
        if not claims_mod.same_text(dist_row.cells.get("method", ""), DISTILLED_METHOD):
            continue
        student = dist_row.cells.get("student", "")
        none_row = claims_mod.find_row(table, (("student", student), ("method", NONE_METHOD)))
        none_by_seed = {s: r for s, r in zip(none_row.seeds, none_row.runs)} if none_row else {}
        refs = tuple((table.table, r.index) for r in (dist_row, none_row) if r is not None)
        a = Agreement(student=student, names=list(COLUMNS), row_refs=refs)
        for seed, run in zip(dist_row.seeds, dist_row.runs):
            if not run.finished or not run.run_id:
                continue
            preds = read(run.run_id, "predictions.json")
            if preds is None:
                a.notes.append(f"seed {seed}: the distilled run saved no predictions")
                continue
            teacher = read(run.run_id, "teacher.json")
            other = none_by_seed.get(seed)
            none_preds = read(other.run_id, "predictions.json") if other is not None and other.finished else None
            try:
                a.per_seed[seed] = disagreement(columns_of(preds, teacher, none_preds))
            except ValueError as err:
                a.notes.append(f"seed {seed}: {err}")
        if a.per_seed:
            out.append(a)
    return out


def agreement_claim(
    agreements: list[Agreement],
    *,
    test: str = "welch",
    level: float = claims_mod.stats.LEVEL,
    effect: float | None = None,
    design: claims_mod.sequential.Design | None = None,
) -> claims_mod.ClaimResult:
    """The distilled student (class+distil.) agrees with the teacher on more images than the undistilled one,
    per student size; agreement = 100 x (1 - disagreement) per seed. DeiT: 0.102 vs 0.133 disagreement (B)."""
    text = "The distilled student agrees more with the teacher than the undistilled one (DeiT's agreement table)"
    design = design or claims_mod.sequential.Design(level=level)
    comps = []
    for a in agreements:
        dist = {
            s: 100 * (1 - m[TEACHER, HEADS["top1"]]) for s, m in a.per_seed.items() if (TEACHER, HEADS["top1"]) in m
        }
        none = {s: 100 * (1 - m[TEACHER, NONE]) for s, m in a.per_seed.items() if (TEACHER, NONE) in m}
        comps.append(
            claims_mod.compare(
                dist,
                none,
                "beats",
                round(100 * (0.133 - 0.102), 2),
                test=test,
                level=level,
                effect=effect,
                labels=(f"{a.student} DeiT⚗ agreement %", f"{a.student} no distillation agreement %"),
                rows=a.row_refs,
                design=design,
            )
        )
    if not comps:
        return claims_mod.ClaimResult("DeiT-agree", "deit", text, claims_mod.INCOMPLETE)
    return claims_mod.claim_result("DeiT-agree", "deit", text, comps, design, effect=effect)


def markdown_lines(agreements: list[Agreement]) -> list[str]:
    out = []
    for a in agreements:
        seeds = sorted(a.per_seed)
        out += [
            f"**{a.student}** — fraction of validation images whose top-1 differs, mean over "
            f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})",
            "",
        ]
        out.append("| | " + " | ".join(a.names) + " |")
        out.append("|" + "|".join("---" for _ in range(len(a.names) + 1)) + "|")
        out += ["| " + " | ".join(r) + " |" for r in a.rows()]
        out += [""] + [f"{n}  " for n in a.notes] + ([""] if a.notes else [])
    return out


def to_dict(a: Agreement) -> dict[str, Any]:
    return {
        "student": a.student,
        "names": a.names,
        "seeds": sorted(a.per_seed),
        "mean": [[a.mean(x, y) for y in a.names] for x in a.names],
    }
