"""The claims' test and power calculation on hand-made results: known means and spreads give the expected
verdicts and seed estimates, checked against formulas computed another way (Welch's interval by hand with
the t quantile; power by simulation; the normal approximation as a lower bound), including a claim that
resolves only once the estimated seeds are added. Pure: milliseconds."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from scipy import stats as sps

from orchestrator.report import claims as C
from orchestrator.report import stats as S


def sample(mean: float, sd: float, n: int) -> list[float]:
    """n values with exactly this mean and sample standard deviation."""
    z = [sps.norm.ppf((i + 0.5) / n) for i in range(n)]
    mz, sz = statistics.fmean(z), statistics.stdev(z)
    return [mean + sd * (v - mz) / sz for v in z]


def test_sample_has_the_asked_mean_and_spread():
    x = sample(74.0, 0.6, 5)
    assert statistics.fmean(x) == pytest.approx(74.0) and statistics.stdev(x) == pytest.approx(0.6)


def test_welch_interval_matches_the_textbook_formula():
    a, b = sample(75.06, 0.5, 3), sample(74.62, 0.9, 4)
    d = S.decide(a, b)
    va, vb = 0.5**2 / 3, 0.9**2 / 4
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    half = sps.t.ppf(0.975, df) * se
    assert d.test == "welch" and (d.n_a, d.n_b) == (3, 4)
    assert d.diff == pytest.approx(0.44) and d.df == pytest.approx(df)
    assert (d.low, d.high) == (pytest.approx(0.44 - half), pytest.approx(0.44 + half))
    assert d.p == pytest.approx(2 * sps.t.sf(0.44 / se, df))
    assert d.outcome == "unresolved"  # 0.44 with these spreads: the interval contains 0


def test_paired_interval_is_the_one_sample_interval_of_the_differences():
    a = {0: 75.0, 1: 76.0, 2: 74.5, 3: 75.5}
    b = {0: 74.6, 1: 75.5, 2: 74.2, 3: 74.9, 7: 10.0}  # seed 7 has no partner: left out
    d = S.decide(a, b, test="paired")
    diffs = [a[s] - b[s] for s in range(4)]
    half = sps.t.ppf(0.975, 3) * statistics.stdev(diffs) / 2
    assert (d.n_a, d.df) == (4, 3) and d.diff == pytest.approx(statistics.fmean(diffs))
    assert (d.low, d.high) == (pytest.approx(d.diff - half), pytest.approx(d.diff + half))
    assert d.outcome == "supports"
    # the same numbers as independent samples: seed effects are not cancelled, the interval is wider
    assert S.decide(a, {s: v for s, v in b.items() if s != 7}).outcome == "unresolved"


@pytest.mark.parametrize(
    "mean_a, sd, mean_b, n, relation, outcome",
    [
        (75.0, 0.3, 74.0, 3, "beats", "supports"),
        (74.0, 0.3, 75.0, 3, "beats", "contradicts"),
        (75.0, 1.0, 74.6, 3, "beats", "unresolved"),
        (74.46, 0.1, 74.48, 3, "close", "supports"),  # -0.02, well inside the 0.5 margin
        (73.0, 0.1, 74.48, 3, "close", "contradicts"),  # 1.5 below
        (74.3, 0.4, 74.48, 3, "close", "unresolved"),  # the interval reaches below -0.5
    ],
)
def test_known_means_and_spreads_give_the_expected_outcome(mean_a, sd, mean_b, n, relation, outcome):
    assert S.decide(sample(mean_a, sd, n), sample(mean_b, sd, n), relation).outcome == outcome


def test_seeds_needed_is_the_smallest_n_with_the_power_and_above_the_normal_approximation():
    for effect, sa, sb in [(0.44, 0.5, 0.6), (0.67, 1.5, 0.3), (2.86, 1.0, 1.0), (0.1, 0.3, 0.3)]:
        n = S.seeds_needed(effect, sa, sb)
        assert S.power_at(n, effect, sa, sb) >= 0.8 > S.power_at(n - 1, effect, sa, sb) or n == 2
        approx = S.normal_seeds(effect, sa, sb)
        assert approx <= n <= math.ceil(approx) + 3, (effect, sa, sb, n, approx)
    assert S.seeds_needed(0.44, 0.5, 0.6) == 26  # normal approximation: 24.7
    assert S.seeds_needed(0.01, 3.0, 3.0) is None  # more than MAX_SEEDS
    assert S.seeds_needed(5.0, 0.1, 0.1) == 2


def test_power_agrees_with_simulated_welch_tests():
    """The noncentral-t power against the fraction of simulated experiments whose Welch interval lies
    above 0 (normal seeds with the stated means and spreads), another way to the same number."""
    rng = random.Random(12)
    effect, sa, sb, n = 0.5, 0.4, 0.6, 8
    hits, trials = 0, 3000
    for _ in range(trials):
        a = [rng.gauss(75.0 + effect, sa) for _ in range(n)]
        b = [rng.gauss(75.0, sb) for _ in range(n)]
        hits += S.decide(a, b).low > 0
    assert hits / trials == pytest.approx(S.power_at(n, effect, sa, sb), abs=0.03)


def _t3(values: dict[int, list[float]]):
    """A Table 3 model (rows: full loss, then three leave-one-out rows) with these per-seed values."""
    from tests.test_report import _model

    n = len(next(iter(values.values())))
    return _model("3", values, n)


def test_a_claim_that_resolves_only_after_the_estimated_seeds_are_added():
    """T3 (the full loss beats each leave-one-out) at the paper's differences (+0.44, +0.52, +0.43) with a
    spread of 0.5 per row: unresolved with 3 seeds, an estimate of n seeds per row, and supported once
    every row has n seeds with the same means and spread."""
    means, sd = [75.06, 74.62, 74.54, 74.63], 0.5
    three = C.check_all([_t3({i: sample(m, sd, 3) for i, m in enumerate(means)})])[0]
    assert three.verdict == C.UNRESOLVED and three.seeds_used == 3
    expect = max(S.seeds_needed(75.06 - m, sd, sd) for m in means[1:])
    assert three.seeds_needed == expect == S.seeds_needed(0.43, sd, sd)
    assert three.open_rows == [("3", 0), ("3", 1), ("3", 2), ("3", 3)]
    assert "would need" in three.seeds_line() and str(expect) in three.seeds_line()
    more = C.check_all([_t3({i: sample(m, sd, expect) for i, m in enumerate(means)})])[0]
    assert more.verdict == C.SUPPORTED and more.seeds_used == expect and more.seeds_needed is None
    assert all(c.low > 0 for c in more.comparisons)


def test_an_effect_override_changes_the_estimate_not_the_verdict():
    values = {i: sample(m, 0.5, 3) for i, m in enumerate([75.06, 74.62, 74.54, 74.63])}
    paper = C.check_all([_t3(values)])[0]
    big = C.check_all([_t3(values)], effect=1.0)[0]
    assert big.verdict == paper.verdict == C.UNRESOLVED
    assert big.seeds_needed == S.seeds_needed(1.0, 0.5, 0.5) < paper.seeds_needed
    # 2 points lies above every interval: ruled out already, so no seeds are asked for it
    assert all(c.high < 2.0 for c in paper.comparisons)
    ruled_out = C.check_all([_t3(values)], effect=2.0)[0]
    assert ruled_out.effect_excluded and ruled_out.seeds_needed is None and not paper.effect_excluded


def test_an_interval_that_excludes_the_papers_difference_asks_for_no_more_seeds():
    """ViTKD's mini DeiT-Tiny rows at 6 seeds: baseline and +ViTKD both ~70.7 with a spread of 0.75. The
    interval of the difference contains 0 (unresolved) but lies below the paper's +1.64: the power
    estimate alone would still ask for seeds, yet the paper's difference is already ruled out."""
    a, b = dict(enumerate(sample(70.63, 0.75, 6))), dict(enumerate(sample(70.77, 0.75, 6)))
    c = C.compare(a, b, "beats", 1.64)
    assert c.outcome == "unresolved" and c.low < 0 < c.high < 1.64 and c.excludes_effect
    assert S.seeds_needed(1.64, 0.75, 0.75) <= 6  # what the power calculation alone would have said
    assert "excludes a +1.64 difference" in c.describe() and "needs" not in c.describe()
    wide = C.compare(dict(enumerate(sample(70.63, 1.0, 3))), dict(enumerate(sample(70.77, 1.0, 3))), "beats", 1.64)
    assert wide.outcome == "unresolved" and wide.high > 1.64 and not wide.excludes_effect and wide.seeds_needed
    claim = C.ClaimResult("ViTKD", "vitkd", "t", C.UNRESOLVED, [c, wide])
    assert claim.effect_excluded and claim.seeds_needed is None and "excludes" in claim.seeds_line()
    assert not C.compare(a, b, "beats", 1.64, effect=0.1).excludes_effect  # a smaller size (--effect): open


def test_basis_names_the_test_and_level():
    assert "Welch's t-test" in C.basis() and "95%" in C.basis()
    assert "paired t-test" in C.basis("paired", 0.9) and "90%" in C.basis("paired", 0.9)
