"""Pure: the fixed-sample test of a comparison of two table rows over seeds, and how many seeds it needs.

The report's claims are decided by the group-sequential design of sequential.py (this test, re-run after
every round of added seeds, does not hold its level); this one is a single test at a fixed n (the tune
report's comparison, benchmarks/bench_claims.py's copy of the old --resolve).

A comparison is "A beats B" (or "A is close to B") on the final-epoch top-1 of each seed. The test gives
the mean difference A - B and its confidence interval at `level` (95% by default):

- Welch's t-test (the default): the rows' seeds as two independent samples with unequal variances
  (scipy.stats.ttest_ind(equal_var=False)), Welch-Satterthwaite degrees of freedom.
- Paired t-test (scipy.stats.ttest_rel) over the seeds both rows have. kdgrid's design allows it: a
  seed fixes the data order, the augmentation and the student's initialisation (trainer/data.py,
  engine.py), so seed s of row A and seed s of row B saw the same batches. It gains power only when
  seed effects are shared between the rows; with 3 seeds it has 2 degrees of freedom to Welch's ~4.

"beats": the interval above 0 supports the claim, below 0 contradicts it, containing 0 is unresolved.
"close" (A is no worse than B by more than `margin` points, a non-inferiority test): the interval's
lower end above -margin supports it, its upper end below -margin contradicts it, else unresolved.

Seeds needed (a power calculation): the smallest number of seeds per row at which the test, run at
`level`, resolves a true difference of `effect` points (the paper's difference by default) with
probability `power` (80%), the rows' spread being the one measured. Exact for the t statistic: its
distribution under that difference is a noncentral t (scipy.stats.nct) with noncentrality
effect / se(n) and the test's degrees of freedom at n seeds; `normal_seeds` is the textbook normal
approximation, a lower bound, kept to check it against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95
POWER = 0.80
CLOSE_MARGIN = 0.5  # points of top-1: how far below B "close to B" may lie (the paper's "very close" is 0.02)
MAX_SEEDS = 1000  # beyond this, a difference is reported as not resolvable by adding seeds
TESTS = ("welch", "paired")


@dataclass(frozen=True)
class Decision:
    test: str  # welch | paired
    level: float
    diff: float  # mean(A) - mean(B) (paired: mean of the per-seed differences, the same over common seeds)
    low: float  # the confidence interval of the difference
    high: float
    df: float
    p: float  # two-sided p-value of "no difference"
    n_a: int
    n_b: int
    outcome: str  # supports | contradicts | unresolved


def _values(x: Mapping[int, float] | Sequence[float]) -> dict[int, float]:
    return dict(x) if isinstance(x, Mapping) else dict(enumerate(x))


def decide(
    a: Mapping[int, float] | Sequence[float],
    b: Mapping[int, float] | Sequence[float],
    relation: str = "beats",
    *,
    test: str = "welch",
    level: float = LEVEL,
    margin: float = CLOSE_MARGIN,
) -> Decision | None:
    """The test of one comparison, on {seed: top-1} (or plain lists: seeds 0..n-1) of rows A and B.
    None when it cannot be run: fewer than two seeds in a row (paired: in common)."""
    from scipy import stats

    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}: one of {', '.join(TESTS)}")
    va, vb = _values(a), _values(b)
    if test == "paired":
        common = sorted(set(va) & set(vb))
        if len(common) < 2:
            return None
        xa, xb = [va[s] for s in common], [vb[s] for s in common]
        d = [x - y for x, y in zip(xa, xb)]
        diff, n_a, n_b = math.fsum(d) / len(d), len(common), len(common)
        df = len(d) - 1
        sd = _std(d)
        se = sd / math.sqrt(len(d))
        res = stats.ttest_rel(xa, xb) if se > 0 else None
    else:
        xa, xb = list(va.values()), list(vb.values())
        if len(xa) < 2 or len(xb) < 2:
            return None
        n_a, n_b = len(xa), len(xb)
        diff = math.fsum(xa) / n_a - math.fsum(xb) / n_b
        se, df = welch_se_df(_std(xa), n_a, _std(xb), n_b)
        res = stats.ttest_ind(xa, xb, equal_var=False) if se > 0 else None
    if res is not None:
        ci = res.confidence_interval(level)
        low, high, p, df = float(ci.low), float(ci.high), float(res.pvalue), float(res.df)
    else:  # every seed of both rows gave the same number: the interval is the point
        low = high = diff
        p = 1.0 if diff == 0 else 0.0
    return Decision(test, level, diff, low, high, df, p, n_a, n_b, outcome(low, high, relation, margin))


def outcome(low: float, high: float, relation: str = "beats", margin: float = CLOSE_MARGIN) -> str:
    bound = -margin if relation == "close" else 0.0
    if low > bound:
        return "supports"
    if high < bound:
        return "contradicts"
    return "unresolved"


def _std(x: Sequence[float]) -> float:
    m = math.fsum(x) / len(x)
    return math.sqrt(math.fsum((v - m) ** 2 for v in x) / (len(x) - 1))


def welch_se_df(s_a: float, n_a: int, s_b: float, n_b: int) -> tuple[float, float]:
    """Standard error of mean(A) - mean(B) and the Welch-Satterthwaite degrees of freedom."""
    va, vb = s_a**2 / n_a, s_b**2 / n_b
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0, float(n_a + n_b - 2)
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return se, df


def power_at(
    n: int,
    effect: float,
    s_a: float,
    s_b: float,
    *,
    test: str = "welch",
    s_d: float | None = None,
    relation: str = "beats",
    level: float = LEVEL,
    margin: float = CLOSE_MARGIN,
) -> float:
    """Probability that the test at n seeds per row resolves a true difference `effect` in the claimed
    direction (noncentral t). Paired: `s_d` is the spread of the per-seed differences."""
    from scipy import stats

    shift = effect + margin if relation == "close" else effect
    if test == "paired":
        se, df = (s_d or 0.0) / math.sqrt(n), n - 1
    else:
        se, df = welch_se_df(s_a, n, s_b, n)
    tc = stats.t.ppf(1 - (1 - level) / 2, df)
    if se == 0:
        return 1.0 if abs(shift) > 0 else 0.0
    ncp = abs(shift) / se
    if relation == "close" and shift <= 0:
        return 0.0  # the true difference sits beyond the margin: no number of seeds supports it
    return float(stats.nct.sf(tc, df, ncp))  # the interval clears the bound on the claimed side


def seeds_needed(
    effect: float,
    s_a: float,
    s_b: float,
    *,
    test: str = "welch",
    s_d: float | None = None,
    relation: str = "beats",
    level: float = LEVEL,
    power: float = POWER,
    margin: float = CLOSE_MARGIN,
    max_seeds: int = MAX_SEEDS,
) -> int | None:
    """Smallest n >= 2 seeds per row with power_at(n) >= power; None when more than max_seeds would be."""
    if effect == 0 and relation != "close":
        return None

    def ok(n: int) -> bool:
        return power_at(n, effect, s_a, s_b, test=test, s_d=s_d, relation=relation, level=level, margin=margin) >= power

    if ok(2):
        return 2
    if not ok(max_seeds):
        return None
    lo, hi = 2, max_seeds  # ok(lo) false, ok(hi) true; power grows with n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def normal_seeds(effect: float, s_a: float, s_b: float, *, level: float = LEVEL, power: float = POWER) -> float:
    """The normal approximation n = (z_(1-a/2) + z_power)^2 (s_a^2 + s_b^2) / effect^2 (not rounded): it
    ignores the t distribution's heavier tails, so the exact answer is at least this."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf
    return (z(1 - (1 - level) / 2) + z(power)) ** 2 * (s_a**2 + s_b**2) / effect**2
