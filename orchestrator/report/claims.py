"""Pure: the claims Section 4.2-4.3 draws from its tables, checked against this grid's table models.

Each claim is a list of pairwise comparisons between rows of one table (rows are named by the Acc1 the
paper prints for them, which is unique within each of Jia et al.'s tables, or, in the other papers' tables
(vitkd, deit), by their printed student and method cells), decided on the final-epoch top-1 over seeds by
a group-sequential test (orchestrator/report/sequential.py) at pre-set looks (seeds per row), so that the
stated level holds however many rounds `--resolve` adds seeds. A claim ends supported (every comparison
supports it), contradicted (one contradicts it), smaller than the paper's (none contradicts, not all
support, one rules out the paper's difference) or unresolved; `basis()` is the report's statement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from orchestrator.report import sequential, stats
from orchestrator.report.tables import RowModel, TableModel

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
SMALLER = "smaller than the paper's"
UNRESOLVED = "unresolved"
UNTESTED = "unresolved (no look yet: fewer seeds in a row than the first look)"
INCOMPLETE = "incomplete (rows missing)"

Pick = tuple[tuple[str, str], ...]  # a row by its printed cells: (("student", "DeiT-Tiny"), ("method", "ViTKD"))


@dataclass(frozen=True)
class Pair:
    a: float | Pick  # the paper's Acc1 of row A, or its printed cells
    b: float | Pick  # ... of row B
    relation: str = "beats"  # beats | close


def _pick(student: str, method: str) -> Pick:
    return (("student", student), ("method", method))


_SIZES = ("DeiT-Tiny", "DeiT-Small", "DeiT-Base")


@dataclass(frozen=True)
class ClaimDef:
    id: str
    table: str
    text: str
    pairs: tuple[Pair, ...]


# What the paper claims, in its words where it has them (Sections 4.2 and 4.3).
CLAIMS: tuple[ClaimDef, ...] = (
    ClaimDef(
        "T2-hard",
        "2",
        "Manifold distillation beats hard-label distillation from the same teacher "
        "(every teacher/student pair of Table 2)",
        (Pair(75.06, 74.39), Pair(81.48, 81.27), Pair(74.46, 73.86), Pair(80.25, 80.11)),
    ),
    ClaimDef(
        "T2-baseline",
        "2",
        "With CaiT-S24, manifold-distilled DeiT-Tiny and DeiT-Small outperform DeiT's "
        "baseline (hard distillation from RegNetY-16GF), by 0.58 and 0.32 in the paper",
        (Pair(75.06, 74.48), Pair(81.48, 81.16)),
    ),
    ClaimDef(
        "T2-weak-teacher",
        "2",
        "A much weaker teacher (CaiT-XXS24) still helps: its manifold DeiT-Tiny beats "
        "the hard-distilled DeiT-Tiny of CaiT-XXS24 and of CaiT-S24, and is very close to DeiT's "
        "RegNetY-16GF baseline",
        (Pair(74.46, 73.86), Pair(74.46, 74.39), Pair(74.46, 74.48, "close")),
    ),
    ClaimDef(
        "T3",
        "3",
        "Each term of the manifold loss contributes: the full loss (L_ci, L_cp, L_rs) beats "
        "every leave-one-out combination",
        (Pair(75.06, 74.62), Pair(75.06, 74.54), Pair(75.06, 74.63)),
    ),
    ClaimDef(
        "T4",
        "4",
        "alpha = 1, beta = 0.2 is the best choice of loss weights",
        (Pair(75.06, 74.72), Pair(75.06, 74.90), Pair(75.06, 74.73)),
    ),
    ClaimDef(
        "T5",
        "5",
        "Applying the loss in the first four and last four blocks is best",
        (Pair(75.06, 74.50), Pair(75.06, 74.30), Pair(75.06, 74.31)),
    ),
    ClaimDef(
        "T6-best",
        "6",
        "k = 192 randomly sampled patches is the best k",
        (Pair(75.06, 74.62), Pair(75.06, 74.95), Pair(75.06, 74.81)),
    ),
    ClaimDef(
        "T6-rs-helps",
        "6",
        "L_rs contributes: every k > 0 beats k = 0",
        (Pair(75.06, 74.62), Pair(74.95, 74.62), Pair(74.81, 74.62)),
    ),
    ClaimDef(
        "T7",
        "7",
        "Manifold distillation beats direct embedding transfer in the same blocks",
        (Pair(74.46, 74.31), Pair(81.48, 81.41)),
    ),
    # ViTKD (Yang et al., 2022): its abstract's two claims
    ClaimDef(
        "ViTKD",
        "vitkd",
        "ViTKD improves the student over its baseline (DeiT-T/S/B)",
        tuple(Pair(_pick(s, "ViTKD"), _pick(s, "Baseline")) for s in _SIZES),
    ),
    ClaimDef(
        "ViTKD+NKD",
        "vitkd",
        "ViTKD and logit distillation (NKD) are complementary: ViTKD + NKD beats ViTKD alone",
        tuple(Pair(_pick(s, "ViTKD+NKD"), _pick(s, "ViTKD")) for s in _SIZES),
    ),
    # DeiT (Touvron et al., 2021), Section 5.2 on its Table 5
    ClaimDef(
        "DeiT-hard",
        "deit",
        "Hard distillation beats soft (usual) distillation, on the class token",
        tuple(Pair(_pick(s, "DeiT – hard distillation"), _pick(s, "DeiT – usual distillation")) for s in _SIZES),
    ),
    ClaimDef(
        "DeiT-token",
        "deit",
        "The distillation token beats the class token: the distilled student's distillation head beats its class head",
        tuple(Pair(_pick(s, "DeiT⚗ – distil. embedding"), _pick(s, "DeiT⚗ – class embedding")) for s in _SIZES),
    ),
    ClaimDef(
        "DeiT-fused",
        "deit",
        "The fused heads are best: class + distillation beats the class head and the "
        "distillation head alone (in the paper, not at Ti: 74.5 vs 74.6)",
        tuple(
            Pair(_pick(s, "DeiT⚗ – class+distillation"), _pick(s, other))
            for s in _SIZES
            for other in ("DeiT⚗ – class embedding", "DeiT⚗ – distil. embedding")
        ),
    ),
)


RowRef = tuple[str, int]  # (table id, row index)

OUTCOME = {
    sequential.OPEN: "unresolved",
    sequential.SUPPORTS: "supports",
    sequential.CONTRADICTS: "contradicts",
    sequential.SMALLER: "smaller",
}


@dataclass
class Comparison:
    a: str
    b: str
    relation: str
    paper_diff: float | None  # the paper's A - B, where it prints both
    diff: float | None = None  # this grid: mean(A) - mean(B) at the look shown (none reached: over all seeds)
    low: float | None = None  # the sequential confidence interval of the difference at that look
    high: float | None = None
    n_a: int = 0  # seeds of each row at that look (no look reached: seeds with a number)
    n_b: int = 0
    test: str = "welch"
    level: float = stats.LEVEL
    p: float | None = None  # the fixed-sample two-sided p-value at that look (for the record)
    outcome: str = "missing"  # supports | contradicts | smaller | unresolved | untested | missing
    seeds_needed: int | None = None  # open: seeds per row at the next look (None: the last look is reached)
    effect: float | None = None  # the difference "smaller" rules out (the paper's, unless overridden)
    rows: tuple[RowRef, ...] = ()  # the rows compared, for adding seeds
    look: int = -1  # index into `looks` of the look shown (-1: none reached)
    looks: tuple[int, ...] = ()  # the design's looks (seeds per row)
    have: tuple[int, ...] = ()  # finished seeds of each row in `rows`
    values: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # seed-aligned top-1 of A, B

    @property
    def excludes_effect(self) -> bool:
        """The interval's upper end rules out a difference of the size sought: smaller than the paper's."""
        if self.relation == "close" or not self.effect or self.effect <= 0 or self.high is None:
            return False
        return self.outcome in ("supports", "smaller", "unresolved") and self.high < self.effect

    def describe(self) -> str:
        rel = "≈≥" if self.relation == "close" else ">"
        paper = f"paper {self.paper_diff:+.2f}" if self.paper_diff is not None else "no paper number"
        if self.diff is None:
            return f"{self.a} {rel} {self.b}: missing ({paper})"
        n = f"n = {self.n_a}/{self.n_b}"
        if self.outcome == "untested":
            first = self.looks[0] if self.looks else "?"
            return f"{self.a} {rel} {self.b}: {self.diff:+.2f}, {n}: no test before {first} seeds per row ({paper})"
        ci = f"{self.level:.0%} sequential CI [{self.low:+.2f}, {self.high:+.2f}]"
        where = f"look {self.look + 1} of {len(self.looks)}"
        out = f"{self.a} {rel} {self.b}: {self.diff:+.2f}, {ci}, {n}, {where} ({paper}) → {self.outcome}"
        if self.excludes_effect:
            out += f": rules out {self.effect:+.2f}" if self.outcome == "smaller" else f"; rules out {self.effect:+.2f}"
        return out


@dataclass
class ClaimResult:
    id: str
    table: str
    text: str
    verdict: str
    comparisons: list[Comparison] = field(default_factory=list)
    note: str = ""
    effect: float | None = None  # the difference "smaller" rules out, when not the paper's
    look: int = -1  # the look the claim stopped at, or reached (-1: none)
    design: sequential.Design = field(default_factory=sequential.Design)

    @property
    def supported(self) -> bool:
        return self.verdict == SUPPORTED

    @property
    def resolved(self) -> bool:
        """The claim has a verdict (supported, contradicted, smaller than the paper's): no more seeds for it."""
        return self.verdict in VERDICTS

    @property
    def seeds_used(self) -> int:
        """Seeds per row at the claim's look (none reached: the fewest seeds of any row it compares)."""
        if self.look >= 0:
            return self.design.looks[self.look]
        return min((min(c.n_a, c.n_b) for c in self.comparisons), default=0)

    @property
    def seeds_needed(self) -> int | None:
        """Seeds per row at the claim's next look; None when it has a verdict or the last look is reached."""
        if self.resolved or self.verdict == INCOMPLETE or self.look + 1 >= len(self.design.looks):
            return None
        return self.design.looks[self.look + 1]

    @property
    def effect_excluded(self) -> bool:
        """Smaller than the paper's: a comparison's interval rules out the paper's difference."""
        return self.verdict == SMALLER

    @property
    def open_rows(self) -> list[RowRef]:
        """Rows of the open comparisons with fewer seeds than the next look: where seeds would go."""
        need = self.seeds_needed
        if need is None:
            return []
        return list(
            dict.fromkeys(
                r
                for c in self.comparisons
                if c.outcome in ("unresolved", "untested")
                for r, have in zip(c.rows, c.have)
                if have < need
            )
        )

    def seeds_line(self) -> str:
        n = self.seeds_used
        looks = ", ".join(map(str, self.design.looks))
        used = f"{n} seed{'s' if n != 1 else ''} per row"
        if self.verdict == INCOMPLETE:
            return used
        if self.resolved:
            return f"{used}: decided at look {self.look + 1} of {len(self.design.looks)} (looks at {looks} seeds)"
        need = self.seeds_needed
        if need is None:
            return f"{used}, the last look (looks at {looks} seeds): this scale cannot decide it"
        if self.look < 0:
            return f"{used}: no look yet; the first is at {need} seeds per row (looks at {looks})"
        return f"{used}, look {self.look + 1} of {len(self.design.looks)}: the next look is at {need} seeds per row"


@dataclass
class NextSeeds:
    """What `--resolve` needs from one round's claims."""

    verdicts: dict[str, str]  # claim -> its verdict now
    rows: dict[str, dict[RowRef, int]]  # claim still open -> {row: seeds it should have at the claim's next look}
    done: dict[str, str]  # claim that gets no more seeds -> why


def next_seeds(results: list[ClaimResult]) -> NextSeeds:
    """Pure: every claim's verdict, and for each claim still open the rows to raise and to how many seeds
    (its next look). A claim with a verdict, at its last look, or with rows missing gets none. The loop
    raises the rows of the claims it can pay for (a row shared by claims: the larger number)."""
    out = NextSeeds({c.id: c.verdict for c in results}, {}, {})
    for c in results:
        if c.resolved:
            out.done[c.id] = f"{c.verdict} at {c.seeds_used} seeds per row"
        elif c.verdict == INCOMPLETE:
            out.done[c.id] = "rows missing"
        elif c.seeds_needed is None:
            out.done[c.id] = f"the last look ({c.design.looks[-1]} seeds per row) without a verdict"
        elif c.open_rows:
            out.rows[c.id] = dict.fromkeys(c.open_rows, c.seeds_needed)
        else:
            out.done[c.id] = "no row to add seeds to"
    return out


def row_values(row: RowModel | None, metric: str = "last") -> dict[int, float]:
    """{seed: final-epoch (or best-epoch) top-1} of a row's finished seeds."""
    if row is None:
        return {}
    out = {}
    for seed, r in zip(row.seeds, row.runs):
        v = r.top1(row.head, metric)
        if r.finished and v is not None and math.isfinite(v):
            out[seed] = float(v)
    return out


def _aligned(a: dict[int, float], b: dict[int, float], test: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows' values in seed order: paired, the seeds both have; Welch, each row's first seeds."""
    if test == "paired":
        common = sorted(set(a) & set(b))
        return np.array([a[s] for s in common]), np.array([b[s] for s in common])
    return np.array([a[s] for s in sorted(a)]), np.array([b[s] for s in sorted(b)])


def compare(
    a: dict[int, float],
    b: dict[int, float],
    relation: str = "beats",
    paper_diff: float | None = None,
    *,
    test: str = "welch",
    level: float = stats.LEVEL,
    effect: float | None = None,
    labels: tuple[str, str] = ("A", "B"),
    rows: tuple[RowRef, ...] = (),
    design: sequential.Design | None = None,
) -> Comparison:
    """One comparison, decided on its own (a claim of one comparison: `decide` re-decides it in its claim)."""
    design = design or sequential.Design(level=level)
    c = Comparison(labels[0], labels[1], relation, paper_diff, test=test, level=design.level, rows=rows)
    c.n_a, c.n_b, c.looks = len(a), len(b), design.looks
    c.have = tuple(n for n, r in zip((len(a), len(b)), rows))
    c.effect = effect if effect is not None else paper_diff
    if not a or not b:
        return c
    c.diff = math.fsum(a.values()) / len(a) - math.fsum(b.values()) / len(b)
    c.values = _aligned(a, b, test)
    decide([c], design)
    return c


def decide(comps: list[Comparison], design: sequential.Design) -> tuple[str, int]:
    """A claim's verdict and the look it stops at (-1: none reached). Its comparisons are tested together
    at each look (Bonferroni over them on the upper side) and the claim stops at its first verdict
    (sequential.verdicts). A comparison decided at an earlier look keeps its outcome; a look that an open
    comparison's rows have not reached is not looked at. Each comparison is set to the look it was decided
    at, else the claim's."""
    if not comps or any(c.values is None for c in comps):
        return verdict([c.outcome for c in comps]), -1
    m, last = len(comps), len(design.looks)
    records = [sequential.looks(*c.values, design, test=c.test, comparisons=m) for c in comps]
    codes = [
        sequential.outcomes(r.low, r.high, c.relation, stats.CLOSE_MARGIN, c.effect) for c, r in zip(comps, records)
    ]
    reach = min(last if len(k) and k[-1] != sequential.OPEN else len(k) for k in codes)
    if reach == 0:  # a row has fewer seeds than the first look
        for c, rec, k in zip(comps, records, codes):
            c.seeds_needed = design.looks[0]
            if not len(k):
                c.outcome, c.look = "untested", -1
            else:
                _settle(c, rec, k, len(k) - 1)
        return UNTESTED, -1
    grid = np.stack([np.pad(k, (0, reach - len(k)), mode="edge") if len(k) < reach else k[:reach] for k in codes])
    claim = sequential.verdicts(grid)
    at = int(sequential.stop(claim))
    nxt = design.looks[at + 1] if claim[at] == sequential.OPEN and at + 1 < last else None
    for c, rec, k in zip(comps, records, grid):
        first = np.flatnonzero(np.isin(k[: at + 1], (sequential.SUPPORTS, sequential.CONTRADICTS)))
        _settle(c, rec, k, int(first[0]) if len(first) else at)
        c.seeds_needed = nxt
    return CODE_VERDICT[int(claim[at])], at


def _settle(c: Comparison, rec: sequential.Looks, codes: np.ndarray, j: int) -> None:
    """Show comparison `c` at look j."""
    c.look, c.outcome = j, OUTCOME[int(codes[j])]
    c.diff, c.low, c.high, c.p = (float(getattr(rec, f)[j]) for f in ("diff", "low", "high", "p"))
    c.n_a = c.n_b = rec.n[j]


def claim_result(
    cid: str,
    table: str,
    text: str,
    comps: list[Comparison],
    design: sequential.Design,
    *,
    note: str = "",
    effect: float | None = None,
) -> ClaimResult:
    """A claim decided from its comparisons (`decide`)."""
    v, at = decide(comps, design)
    return ClaimResult(cid, table, text, v, comps, note=note, effect=effect, look=at, design=design)


def basis(
    test: str = "welch",
    level: float = stats.LEVEL,
    margin: float = stats.CLOSE_MARGIN,
    design: sequential.Design | None = None,
) -> str:
    """The report's statement of how claims are decided."""
    design = design or sequential.Design(level=level)
    how = (
        "Welch's t-test (the rows' seeds as independent samples, unequal variances)"
        if test == "welch"
        else "a paired t-test over the seeds both rows have (a seed fixes data order, augmentation and "
        "initialisation, so seed s of two rows saw the same batches)"
    )
    a = 1 - design.level
    return (
        f"Claims are decided on the final-epoch top-1 over seeds by {how}, in {design.describe()}: "
        f"a comparison is tested only at those looks, and a claim stops at its first verdict, so the "
        f"{design.level:.0%} level holds however many rounds `--resolve` adds seeds (each look's t-test at the "
        f"nominal level of the normal-theory boundary, Jennison & Turnbull ch. 3.8, built at a level calibrated "
        f"by simulation so that the t-tests hold it at a few seeds; benchmarks/bench_claims.py measures the "
        f"error). Each comparison shows the mean difference A − B at the look it was decided at "
        f"(or the claim's), n (seeds) per row, the paper's difference, and a {design.level:.0%} sequential "
        f"confidence interval whose lower end is a one-sided bound at {a / 2:.1%} and whose upper end one at "
        f"{a / 2:.1%}/m, m the claim's comparisons (Bonferroni). A comparison supports the claim when the "
        f'lower end is above 0 ("close": non-inferiority, above −{margin:g} points), contradicts it when the '
        f"upper end is below 0 (−{margin:g}), and rules out the paper's difference when the upper end is "
        f"below it. A claim is supported when every comparison supports it (an intersection-union test: no "
        f"adjustment), contradicted when any comparison contradicts it, smaller than the paper's when none "
        f"contradicts, not all support, and one rules out the paper's difference; else unresolved (at the "
        f"last look: the scale cannot decide it). Each verdict is wrong with probability at most {a / 2:.1%} "
        f"(supported when some true difference is ≤ 0, contradicted when all are ≥ 0, smaller when all are "
        f"the paper's or more), so a claim's verdict is wrong with probability at most {a:.0%}."
    )


VERDICTS = (SUPPORTED, CONTRADICTED, SMALLER)
CODE_VERDICT = {
    sequential.OPEN: UNRESOLVED,
    sequential.SUPPORTS: SUPPORTED,
    sequential.CONTRADICTS: CONTRADICTED,
    sequential.SMALLER: SMALLER,
}


def verdict(outcomes: list[str]) -> str:
    """The claim-level rule on its comparisons' outcomes: any contradicts, contradicted; all support,
    supported; any smaller, smaller than the paper's; else unresolved (untested: no look yet)."""
    if not outcomes or "missing" in outcomes:
        return INCOMPLETE
    if "contradicts" in outcomes:
        return CONTRADICTED
    if all(o == "supports" for o in outcomes):
        return SUPPORTED
    if "smaller" in outcomes:
        return SMALLER
    if "untested" in outcomes:
        return UNTESTED
    return UNRESOLVED


def find_by_paper(table: TableModel, acc1: float) -> RowModel | None:
    for r in table.rows:
        if r.paper_acc1 is not None and math.isclose(r.paper_acc1, acc1, abs_tol=1e-6):
            return r
    return None


def find_row(table: TableModel, ref: float | Pick) -> RowModel | None:
    """A row by the paper's Acc1, or by its printed cells (equal up to case and spaces)."""
    if isinstance(ref, (int, float)):
        return find_by_paper(table, ref)
    for r in table.rows:
        if all(same_text(r.cells.get(f, ""), text) for f, text in ref):
            return r
    return None


def same_text(a: str, b: str) -> bool:
    """Equal up to case and spaces (how claims match printed cells)."""
    return "".join(a.lower().split()) == "".join(b.lower().split())


def _ref_text(ref: float | Pick) -> str:
    return f"[{ref}]" if isinstance(ref, (int, float)) else "[" + " · ".join(t for _, t in ref) + "]"


def row_label(table: TableModel, row: RowModel) -> str:
    """The printed cells that tell this row apart from the others of its table."""
    varying = [f for _, f in table.columns if len({r.cells.get(f, "") for r in table.rows}) > 1]
    parts = [row.cells.get(f, "") for f in varying if row.cells.get(f, "")]
    return " · ".join(parts) if parts else f"row {row.index + 1}"


def check(
    claim: ClaimDef,
    table: TableModel,
    metric: str = "last",
    *,
    test: str = "welch",
    level: float = stats.LEVEL,
    effect: float | None = None,
    design: sequential.Design | None = None,
) -> ClaimResult:
    design = design or sequential.Design(level=level)
    comps, absent = [], []
    for p in claim.pairs:
        ra, rb = find_row(table, p.a), find_row(table, p.b)
        if ra is None and rb is None and not isinstance(p.a, (int, float)):
            absent.append(f"{_ref_text(p.a)} vs {_ref_text(p.b)}")  # a table cut to fewer rows (--tables PATH)
            continue
        la = row_label(table, ra) if ra else _ref_text(p.a)
        lb = row_label(table, rb) if rb else _ref_text(p.b)
        rows = tuple((table.table, r.index) for r in (ra, rb) if r is not None)
        if isinstance(p.a, (int, float)):
            paper = round(p.a - p.b, 2)
        else:
            paper = (
                round(ra.paper_acc1 - rb.paper_acc1, 2)
                if ra and rb and ra.paper_acc1 is not None and rb.paper_acc1 is not None
                else None
            )
        comps.append(
            compare(
                row_values(ra, metric),
                row_values(rb, metric),
                p.relation,
                paper,
                test=test,
                level=level,
                effect=effect,
                labels=(la, lb),
                rows=rows,
                design=design,
            )
        )
    note = f"not in this grid's table, so not compared: {'; '.join(absent)}" if absent else ""
    return claim_result(claim.id, claim.table, claim.text, comps, design, note=note, effect=effect)


def check_all(
    tables: list[TableModel],
    metric: str = "last",
    *,
    test: str = "welch",
    level: float = stats.LEVEL,
    effect: float | None = None,
    design: sequential.Design | None = None,
) -> list[ClaimResult]:
    """The claims whose table is in this report."""
    by_table = {t.table: t for t in tables}
    return [
        check(c, by_table[c.table], metric, test=test, level=level, effect=effect, design=design)
        for c in CLAIMS
        if c.table in by_table
    ]


# ---- Figure 4 ------------------------------------------------------------------------------------
@dataclass
class Curve:
    name: str  # none | hard | manifold
    epochs: list[int]
    mean: list[float]
    std: list[float | None]  # None where fewer than two seeds reached the epoch
    seeds: int  # seeds with any point


def figure4_claim(
    curves: dict[str, Curve],
    fig4: TableModel | None = None,
    *,
    test: str = "welch",
    level: float = stats.LEVEL,
    effect: float | None = None,
    design: sequential.Design | None = None,
) -> ClaimResult:
    """'[The manifold curve] surpasses the DeiT baselines at different training epochs': the manifold
    row's final epoch against each baseline's by the test, and (a note) at how many of the epochs all
    three curves reached the manifold mean is above both. More below than above makes a supported
    final-epoch test read as contradicted: the claim is about the curves."""
    text = (
        "The manifold-distilled DeiT-Tiny is above both DeiT baselines (no distillation, hard "
        "distillation) across training epochs"
    )
    design = design or sequential.Design(level=level)
    need = ("manifold", "none", "hard")
    rows = {r.curve: r for r in fig4.rows} if fig4 is not None else {}
    if any(n not in curves or not curves[n].epochs for n in need) or any(n not in rows for n in need):
        return ClaimResult("F4", "fig4", text, INCOMPLETE, design=design)
    means = {n: dict(zip(curves[n].epochs, curves[n].mean)) for n in need}
    common = sorted(set.intersection(*(set(m) for m in means.values())))
    if not common:
        return ClaimResult("F4", "fig4", text, INCOMPLETE, design=design)
    above = sum(means["manifold"][e] > max(means["none"][e], means["hard"][e]) for e in common)
    comps = []
    m = rows["manifold"]
    for other in ("none", "hard"):
        o = rows[other]
        paper = round(m.paper_acc1 - o.paper_acc1, 2) if m.paper_acc1 is not None and o.paper_acc1 is not None else None
        comps.append(
            compare(
                row_values(m),
                row_values(o),
                "beats",
                paper,
                test=test,
                level=level,
                effect=effect,
                labels=("manifold (final epoch)", f"{other} (final epoch)"),
                rows=(("fig4", m.index), ("fig4", o.index)),
                design=design,
            )
        )
    note = f"manifold is above both baselines at {above} of the {len(common)} epochs all three reached"
    result = claim_result("F4", "fig4", text, comps, design, note=note, effect=effect)
    if above * 2 < len(common) and result.verdict == SUPPORTED:
        result.verdict = CONTRADICTED
    return result
