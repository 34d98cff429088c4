"""Pure: the claims Section 4.2-4.3 draws from its tables, checked against this grid's table models.

Each claim is a list of pairwise comparisons between rows of one table (rows are named by the Acc1 the
paper prints for them, which is unique within each table). A comparison is decided on the final-epoch
mean over seeds and set against the seeds' spread (the larger sample std of the two rows):

- "beats": A > B by more than the spread supports it, B > A by more than the spread contradicts it, and
  anything in between is not resolved at this scale;
- "close": A is no further below B than the spread (or above it).

With one seed the spread is unknown, and the verdict says so: it rests on point estimates only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from orchestrator.report.tables import RowModel, Stat, TableModel

SUPPORTED = "supported"
SUPPORTED_POINT = "supported by the point estimates (one seed: spread unknown)"
NOT_SUPPORTED = "not supported at this scale"
NOT_SUPPORTED_POINT = "not supported by the point estimates (one seed: spread unknown)"
NOT_RESOLVED = "not resolved at this scale (differences within the seeds' spread)"
UNKNOWN = "cannot be judged with one seed (spread unknown)"
INCOMPLETE = "incomplete (rows missing)"


@dataclass(frozen=True)
class Pair:
    a: float  # the paper's Acc1 of row A
    b: float  # ... of row B
    relation: str = "beats"  # beats | close


@dataclass(frozen=True)
class ClaimDef:
    id: str
    table: str
    text: str
    pairs: tuple[Pair, ...]


# What the paper claims, in its words where it has them (Sections 4.2 and 4.3).
CLAIMS: tuple[ClaimDef, ...] = (
    ClaimDef("T2-hard", "2", "Manifold distillation beats hard-label distillation from the same teacher "
             "(every teacher/student pair of Table 2)",
             (Pair(75.06, 74.39), Pair(81.48, 81.27), Pair(74.46, 73.86), Pair(80.25, 80.11))),
    ClaimDef("T2-baseline", "2", "With CaiT-S24, manifold-distilled DeiT-Tiny and DeiT-Small outperform DeiT's "
             "baseline (hard distillation from RegNetY-16GF), by 0.58 and 0.32 in the paper",
             (Pair(75.06, 74.48), Pair(81.48, 81.16))),
    ClaimDef("T2-weak-teacher", "2", "A much weaker teacher (CaiT-XXS24) still helps: its manifold DeiT-Tiny beats "
             "the hard-distilled DeiT-Tiny of CaiT-XXS24 and of CaiT-S24, and is very close to DeiT's "
             "RegNetY-16GF baseline",
             (Pair(74.46, 73.86), Pair(74.46, 74.39), Pair(74.46, 74.48, "close"))),
    ClaimDef("T3", "3", "Each term of the manifold loss contributes: the full loss (L_ci, L_cp, L_rs) beats "
             "every leave-one-out combination",
             (Pair(75.06, 74.62), Pair(75.06, 74.54), Pair(75.06, 74.63))),
    ClaimDef("T4", "4", "alpha = 1, beta = 0.2 is the best choice of loss weights",
             (Pair(75.06, 74.72), Pair(75.06, 74.90), Pair(75.06, 74.73))),
    ClaimDef("T5", "5", "Applying the loss in the first four and last four blocks is best",
             (Pair(75.06, 74.50), Pair(75.06, 74.30), Pair(75.06, 74.31))),
    ClaimDef("T6-best", "6", "k = 192 randomly sampled patches is the best k",
             (Pair(75.06, 74.62), Pair(75.06, 74.95), Pair(75.06, 74.81))),
    ClaimDef("T6-rs-helps", "6", "L_rs contributes: every k > 0 beats k = 0",
             (Pair(75.06, 74.62), Pair(74.95, 74.62), Pair(74.81, 74.62))),
    ClaimDef("T7", "7", "Manifold distillation beats direct embedding transfer in the same blocks",
             (Pair(74.46, 74.31), Pair(81.48, 81.41))),
)


@dataclass
class Comparison:
    a: str
    b: str
    relation: str
    paper_diff: float | None  # the paper's A - B, where it prints both
    diff: float | None = None  # this grid: mean(A) - mean(B), final epoch
    spread: float | None = None  # the larger seed std of A and B; None with one seed each
    outcome: str = "missing"  # supports | contradicts | unresolved | supports? | contradicts? | unknown | missing

    def describe(self) -> str:
        rel = "≈≥" if self.relation == "close" else ">"
        paper = f"paper {self.paper_diff:+.2f}" if self.paper_diff is not None else "no paper number"
        if self.diff is None:
            return f"{self.a} {rel} {self.b}: missing ({paper})"
        spread = f", spread {self.spread:.2f}" if self.spread is not None else ", spread unknown"
        return f"{self.a} {rel} {self.b}: {self.diff:+.2f}{spread} ({paper}) → {self.outcome.rstrip('?')}"


@dataclass
class ClaimResult:
    id: str
    table: str
    text: str
    verdict: str
    comparisons: list[Comparison] = field(default_factory=list)
    note: str = ""

    @property
    def supported(self) -> bool:
        return self.verdict in (SUPPORTED, SUPPORTED_POINT)


class MeanStd(NamedTuple):
    mean: float
    std: float | None


def compare(a: Stat | MeanStd | None, b: Stat | MeanStd | None, relation: str = "beats"
            ) -> tuple[float | None, float | None, str]:
    """(diff, spread, outcome) of 'A beats B' (or 'A is close to B') on two rows' seed statistics."""
    if a is None or b is None:
        return None, None, "missing"
    diff = a.mean - b.mean
    stds = [s for s in (a.std, b.std) if s is not None]
    spread = max(stds) if stds else None
    if relation == "close":
        if spread is None:
            return diff, None, "supports?" if diff >= 0 else "unknown"
        return diff, spread, "supports" if diff >= -spread else "contradicts"
    if spread is None:
        return diff, None, "supports?" if diff > 0 else "contradicts?"
    if abs(diff) <= spread:
        return diff, spread, "unresolved"
    return diff, spread, "supports" if diff > 0 else "contradicts"


def verdict(outcomes: list[str]) -> str:
    """All comparisons of a claim must hold; the weakest one decides."""
    if not outcomes or "missing" in outcomes:
        return INCOMPLETE
    if "contradicts" in outcomes:
        return NOT_SUPPORTED
    if "unresolved" in outcomes:
        return NOT_RESOLVED
    if "contradicts?" in outcomes:
        return NOT_SUPPORTED_POINT
    if "unknown" in outcomes:
        return UNKNOWN
    if "supports?" in outcomes:
        return SUPPORTED_POINT
    return SUPPORTED


def find_by_paper(table: TableModel, acc1: float) -> RowModel | None:
    for r in table.rows:
        if r.paper_acc1 is not None and math.isclose(r.paper_acc1, acc1, abs_tol=1e-6):
            return r
    return None


def row_label(table: TableModel, row: RowModel) -> str:
    """The printed cells that tell this row apart from the others of its table."""
    varying = [f for _, f in table.columns if len({r.cells.get(f, "") for r in table.rows}) > 1]
    parts = [row.cells.get(f, "") for f in varying if row.cells.get(f, "")]
    return " · ".join(parts) if parts else f"row {row.index + 1}"


def check(claim: ClaimDef, table: TableModel, metric: str = "last") -> ClaimResult:
    comps = []
    for p in claim.pairs:
        ra, rb = find_by_paper(table, p.a), find_by_paper(table, p.b)
        la = row_label(table, ra) if ra else f"[{p.a}]"
        lb = row_label(table, rb) if rb else f"[{p.b}]"
        sa = getattr(ra, metric) if ra else None
        sb = getattr(rb, metric) if rb else None
        diff, spread, outcome = compare(sa, sb, p.relation)
        comps.append(Comparison(la, lb, p.relation, round(p.a - p.b, 2), diff, spread, outcome))
    return ClaimResult(claim.id, claim.table, claim.text, verdict([c.outcome for c in comps]), comps)


def check_all(tables: list[TableModel], metric: str = "last") -> list[ClaimResult]:
    """The claims whose table is in this report."""
    by_table = {t.table: t for t in tables}
    return [check(c, by_table[c.table], metric) for c in CLAIMS if c.table in by_table]


# ---- Figure 4 ------------------------------------------------------------------------------------
@dataclass
class Curve:
    name: str  # none | hard | manifold
    epochs: list[int]
    mean: list[float]
    std: list[float | None]  # None where fewer than two seeds reached the epoch
    seeds: int  # seeds with any point


def figure4_claim(curves: dict[str, Curve]) -> ClaimResult:
    """'[The manifold curve] surpasses the DeiT baselines at different training epochs': at how many of the
    epochs all three curves reached is manifold above both, and at the last of them, by more than the
    seeds' spread?"""
    text = ("The manifold-distilled DeiT-Tiny is above both DeiT baselines (no distillation, hard "
            "distillation) across training epochs")
    need = ("manifold", "none", "hard")
    if any(n not in curves or not curves[n].epochs for n in need):
        return ClaimResult("F4", "fig4", text, INCOMPLETE)
    points = {n: {e: MeanStd(m, s) for e, m, s in zip(curves[n].epochs, curves[n].mean, curves[n].std)}
              for n in need}
    common = sorted(set.intersection(*(set(p) for p in points.values())))
    if not common:
        return ClaimResult("F4", "fig4", text, INCOMPLETE)
    above = sum(points["manifold"][e].mean > max(points["none"][e].mean, points["hard"][e].mean) for e in common)
    last = common[-1]
    comps = []
    for other in ("none", "hard"):
        diff, spread, outcome = compare(points["manifold"][last], points[other][last])
        comps.append(Comparison(f"manifold @ epoch {last}", f"{other} @ epoch {last}", "beats", None,
                                diff, spread, outcome))
    result = ClaimResult("F4", "fig4", text, verdict([c.outcome for c in comps]), comps,
                         note=f"manifold is above both baselines at {above} of the {len(common)} epochs all three reached")
    if above * 2 < len(common) and result.verdict in (SUPPORTED, SUPPORTED_POINT):
        result.verdict = NOT_SUPPORTED if result.verdict == SUPPORTED else NOT_SUPPORTED_POINT
    return result

