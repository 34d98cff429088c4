"""Pure: the claims Section 4.2-4.3 draws from its tables, checked against this grid's table models.

Each claim is a list of pairwise comparisons between rows of one table (rows are named by the Acc1 the
paper prints for them, which is unique within each of Jia et al.'s tables, or, in the other papers' tables
(vitkd, deit), by their printed student and method cells). Each comparison is decided by a stated test
over seeds on the final-epoch top-1 (orchestrator/report/stats.py): Welch's t-test by default, or a
paired t-test over common seeds; the difference's confidence interval at 95% supports the claim when it
lies on the claimed side of 0, contradicts it on the other side, and leaves it unresolved when it
contains 0 ("close": non-inferiority with a stated margin). A claim holds when every comparison supports
it; one contradicted comparison contradicts it; otherwise it is unresolved. For an unresolved comparison
a power calculation gives the seeds per row that would resolve a difference of the paper's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from orchestrator.report import stats
from orchestrator.report.tables import RowModel, TableModel

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
UNRESOLVED = "unresolved"
UNTESTED = "unresolved (fewer than two seeds in a row: no test)"
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


@dataclass
class Comparison:
    a: str
    b: str
    relation: str
    paper_diff: float | None  # the paper's A - B, where it prints both
    diff: float | None = None  # this grid: mean(A) - mean(B), final epoch
    low: float | None = None  # the confidence interval of the difference
    high: float | None = None
    n_a: int = 0  # seeds with a number
    n_b: int = 0
    test: str = "welch"
    level: float = stats.LEVEL
    p: float | None = None
    outcome: str = "missing"  # supports | contradicts | unresolved | untested | missing
    seeds_needed: int | None = None  # unresolved: seeds per row to resolve `effect` (None: over stats.MAX_SEEDS,
    # or the interval excludes `effect`)
    effect: float | None = None  # the difference the estimate is for (the paper's, unless overridden)
    rows: tuple[RowRef, ...] = ()  # the rows compared, for adding seeds

    @property
    def excludes_effect(self) -> bool:
        """Unresolved, but the interval already rules out a difference of the size sought: the difference is
        smaller than the paper's, so seeds added to detect the paper's size would only narrow the interval
        around a smaller one (a futility stop; `--effect` asks about a smaller size)."""
        if self.outcome != "unresolved" or self.relation == "close" or not self.effect:
            return False
        if self.low is None or self.high is None:
            return False
        return self.high < self.effect if self.effect > 0 else self.low > self.effect

    def describe(self) -> str:
        rel = "≈≥" if self.relation == "close" else ">"
        paper = f"paper {self.paper_diff:+.2f}" if self.paper_diff is not None else "no paper number"
        if self.diff is None:
            return f"{self.a} {rel} {self.b}: missing ({paper})"
        n = f"n = {self.n_a}/{self.n_b}"
        if self.outcome == "untested":
            return f"{self.a} {rel} {self.b}: {self.diff:+.2f}, {n}: no test ({paper})"
        ci = f"{self.level:.0%} CI [{self.low:+.2f}, {self.high:+.2f}]"
        out = f"{self.a} {rel} {self.b}: {self.diff:+.2f}, {ci}, {n} ({paper}) → {self.outcome}"
        if self.outcome == "unresolved":
            size = f"{self.effect:+.2f}" if self.effect is not None else "?"
            if self.excludes_effect:
                return out + f"; the interval excludes a {size} difference: this one is smaller"
            out += (
                f"; a {size} difference needs {self.seeds_needed} seeds per row"
                if self.seeds_needed
                else f"; a {size} difference needs more than {stats.MAX_SEEDS} seeds per row"
            )
        return out


@dataclass
class ClaimResult:
    id: str
    table: str
    text: str
    verdict: str
    comparisons: list[Comparison] = field(default_factory=list)
    note: str = ""
    effect: float | None = None  # the difference seeds are estimated for, when not the paper's

    @property
    def supported(self) -> bool:
        return self.verdict == SUPPORTED

    @property
    def resolved(self) -> bool:
        return self.verdict in (SUPPORTED, CONTRADICTED)

    @property
    def seeds_used(self) -> int:
        """The fewest seeds of any row the claim compares."""
        return min((min(c.n_a, c.n_b) for c in self.comparisons), default=0)

    @property
    def seeds_needed(self) -> int | None:
        """Seeds per row that would resolve every unresolved comparison (None: one needs more than
        stats.MAX_SEEDS, or cannot be estimated yet); 2 while a row has fewer than two seeds."""
        if self.resolved or self.verdict == INCOMPLETE:
            return None
        needs = []
        for c in self.comparisons:
            if c.outcome == "untested":
                needs.append(2)
            elif c.outcome == "unresolved":
                if c.seeds_needed is None:
                    return None
                needs.append(c.seeds_needed)
        return max(needs) if needs else None

    @property
    def effect_excluded(self) -> bool:
        """Unresolved, and some open comparison's interval already rules out the size sought."""
        return not self.resolved and any(c.excludes_effect for c in self.comparisons)

    @property
    def open_rows(self) -> list[RowRef]:
        """The rows of the comparisons still open: where seeds would go."""
        return list(
            dict.fromkeys(r for c in self.comparisons if c.outcome in ("unresolved", "untested") for r in c.rows)
        )

    def seeds_line(self) -> str:
        used = f"{self.seeds_used} seed{'s' if self.seeds_used != 1 else ''} per row (fewest)"
        if self.resolved or self.verdict == INCOMPLETE:
            return used
        need = self.seeds_needed
        size = "the paper's size" if self.effect is None else f"{self.effect:g} points"
        if self.effect_excluded:
            return (
                f"{used}; an interval already excludes a difference of {size}, so more seeds would narrow it "
                f"around a smaller one (`--effect` asks about a smaller size)"
            )
        if need is not None:
            return f"{used}; would need {need} per row to resolve a difference of {size}"
        return f"{used}; would need more than {stats.MAX_SEEDS} per row (or a spread to estimate from)"


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
) -> Comparison:
    """One comparison decided by the test, with the seeds an unresolved one would need."""
    c = Comparison(
        labels[0], labels[1], relation, paper_diff, test=test, level=level, rows=rows, n_a=len(a), n_b=len(b)
    )
    if not a or not b:
        return c
    c.diff = math.fsum(a.values()) / len(a) - math.fsum(b.values()) / len(b)
    d = stats.decide(a, b, relation, test=test, level=level)
    if d is None:
        c.outcome = "untested"
        return c
    c.diff, c.low, c.high, c.p, c.outcome = d.diff, d.low, d.high, d.p, d.outcome
    c.n_a, c.n_b = d.n_a, d.n_b
    if c.outcome == "unresolved":
        c.effect = effect if effect is not None else (paper_diff if paper_diff is not None else c.diff)
        if c.excludes_effect:
            return c  # no seed estimate: seeds would narrow the interval around a smaller difference
        sa, sb = stats._std(list(a.values())), stats._std(list(b.values()))
        sd = None
        if test == "paired":
            common = sorted(set(a) & set(b))
            sd = stats._std([a[s] - b[s] for s in common])
        c.seeds_needed = stats.seeds_needed(c.effect, sa, sb, test=test, s_d=sd, relation=relation, level=level)
    return c


def basis(test: str = "welch", level: float = stats.LEVEL, margin: float = stats.CLOSE_MARGIN) -> str:
    """The report's statement of how claims are decided."""
    how = (
        "Welch's t-test (two-sided; the rows' seeds as independent samples, unequal variances)"
        if test == "welch"
        else "a paired t-test (two-sided) over the seeds both rows have: a seed fixes data order, augmentation "
        "and initialisation, so seed s of two rows saw the same batches"
    )
    return (
        f"Claims are decided on the final-epoch top-1 over seeds by {how}, at the {level:.0%} level: for each "
        f"comparison, the mean difference A − B, its {level:.0%} confidence interval, n (seeds) per row and the "
        f"paper's difference. A comparison supports the claim when the interval lies above 0, contradicts it "
        f'when it lies below 0, and is unresolved when it contains 0 ("close": non-inferiority, the '
        f"interval's lower end against −{margin:g} points). A claim is supported when every comparison "
        f"supports it, contradicted when one contradicts it, else unresolved. For an unresolved comparison, the "
        f"seeds per row needed to resolve a difference of the paper's size with {stats.POWER:.0%} power at the "
        f"measured spread (noncentral t), unless its interval already excludes that difference (then the "
        f"difference is smaller than the paper's, and seeds are not added for it)."
    )


def verdict(outcomes: list[str]) -> str:
    """All comparisons of a claim must hold; one contradicted contradicts it."""
    if not outcomes or "missing" in outcomes:
        return INCOMPLETE
    if "contradicts" in outcomes:
        return CONTRADICTED
    if "unresolved" in outcomes:
        return UNRESOLVED
    if "untested" in outcomes:
        return UNTESTED
    return SUPPORTED


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
) -> ClaimResult:
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
            )
        )
    note = f"not in this grid's table, so not compared: {'; '.join(absent)}" if absent else ""
    return ClaimResult(
        claim.id, claim.table, claim.text, verdict([c.outcome for c in comps]), comps, note=note, effect=effect
    )


def check_all(
    tables: list[TableModel],
    metric: str = "last",
    *,
    test: str = "welch",
    level: float = stats.LEVEL,
    effect: float | None = None,
) -> list[ClaimResult]:
    """The claims whose table is in this report."""
    by_table = {t.table: t for t in tables}
    return [
        check(c, by_table[c.table], metric, test=test, level=level, effect=effect)
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
) -> ClaimResult:
    """'[The manifold curve] surpasses the DeiT baselines at different training epochs': the manifold
    row's final epoch against each baseline's by the test, and (a note) at how many of the epochs all
    three curves reached the manifold mean is above both. More below than above makes a supported
    final-epoch test read as contradicted: the claim is about the curves."""
    text = (
        "The manifold-distilled DeiT-Tiny is above both DeiT baselines (no distillation, hard "
        "distillation) across training epochs"
    )
    need = ("manifold", "none", "hard")
    rows = {r.curve: r for r in fig4.rows} if fig4 is not None else {}
    if any(n not in curves or not curves[n].epochs for n in need) or any(n not in rows for n in need):
        return ClaimResult("F4", "fig4", text, INCOMPLETE)
    means = {n: dict(zip(curves[n].epochs, curves[n].mean)) for n in need}
    common = sorted(set.intersection(*(set(m) for m in means.values())))
    if not common:
        return ClaimResult("F4", "fig4", text, INCOMPLETE)
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
            )
        )
    result = ClaimResult(
        "F4",
        "fig4",
        text,
        verdict([c.outcome for c in comps]),
        comps,
        note=f"manifold is above both baselines at {above} of the {len(common)} epochs all three reached",
        effect=effect,
    )
    if above * 2 < len(common) and result.verdict == SUPPORTED:
        result.verdict = CONTRADICTED
    return result
