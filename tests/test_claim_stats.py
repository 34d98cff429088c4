"""The claims' tests on hand-made results: the fixed-sample test and power calculation (stats.py) against
formulas computed another way, and the sequential decision (claims.decide): support at a look is scipy's
t-test p-value under the look's nominal level, a claim that resolves only at a later look, a verdict that
stands, Bonferroni for "contradicted", the "smaller than the paper's" verdict. Pure: about a second."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from scipy import stats as sps

from orchestrator.report import claims as C
from orchestrator.report import sequential as Q
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


def test_support_at_a_look_is_the_t_tests_p_value_under_the_looks_nominal_level():
    """The significance-level approach (Jennison & Turnbull 3.8): a lone comparison supports the claim at a
    look exactly when scipy's one-sided t-test on the seeds of that look has p below the boundary's nominal
    level (Welch: ttest_ind, paired: ttest_rel), and contradicts it when the other side's p is."""
    rng = random.Random(5)
    design = Q.Design()
    nominal = design.nominal(0.025)
    for trial in range(40):
        shift = rng.choice([0.0, 0.3, 0.8, -0.8])
        a = {s: rng.gauss(75.0 + shift, 0.4) for s in range(10)}
        b = {s: rng.gauss(75.0, 0.4) for s in range(10)}
        for test, ttest in (
            ("welch", lambda x, y, alt: sps.ttest_ind(x, y, equal_var=False, alternative=alt)),
            ("paired", lambda x, y, alt: sps.ttest_rel(x, y, alternative=alt)),
        ):
            c = C.compare(a, b, "beats", 0.0, test=test, design=design)
            for k, n in enumerate(design.looks[: c.look + 1]):
                x, y = [a[s] for s in range(n)], [b[s] for s in range(n)]
                up, down = ttest(x, y, "greater").pvalue, ttest(x, y, "less").pvalue
                if k < c.look:  # before the look shown: no crossing
                    assert up >= nominal[k] and down >= nominal[k], (trial, test, k)
                elif c.outcome == "supports":
                    assert up < nominal[k], (trial, test, k)
                elif c.outcome == "contradicts":
                    assert down < nominal[k], (trial, test, k)
                else:
                    assert k == len(design.looks) - 1 and up >= nominal[k] and down >= nominal[k]


def test_a_claim_that_resolves_only_at_a_later_look():
    """T3 (the full loss beats each leave-one-out) at the paper's differences (+0.44, +0.52, +0.43) with a
    spread of 0.15 per row: at 3 seeds (the first look, the O'Brien-Fleming-type boundary's strictest)
    unresolved, asking for the next look's seeds on every row; with 10 seeds per row, supported at the
    first look where every comparison's lower bound clears 0, and that look's seeds are what it used."""
    means, sd = [75.06, 74.62, 74.54, 74.63], 0.15
    design = Q.Design()
    three = C.check_all([_t3({i: sample(m, sd, 3) for i, m in enumerate(means)})])[0]
    assert three.verdict == C.UNRESOLVED and three.seeds_used == 3 and three.look == 0
    assert three.seeds_needed == design.looks[1] == 4
    assert three.open_rows == [("3", 0), ("3", 1), ("3", 2), ("3", 3)]
    assert "next look is at 4 seeds per row" in three.seeds_line()
    rng = random.Random(2)
    values = {i: [m + rng.gauss(0, sd) for _ in range(10)] for i, m in enumerate(means)}
    more = C.check_all([_t3(values)])[0]
    assert more.verdict == C.SUPPORTED and more.seeds_needed is None and more.open_rows == []
    assert more.seeds_used == design.looks[more.look] and more.look > 0
    assert all(c.low > 0 and c.outcome == "supports" for c in more.comparisons)
    # the same claim cut to the look before: not yet supported
    before = C.check_all([_t3({i: v[: design.looks[more.look - 1]] for i, v in values.items()})])[0]
    assert before.verdict != C.SUPPORTED and before.seeds_needed == more.seeds_used


def test_a_verdict_stands_whatever_later_seeds_say():
    """A claim stops at its first verdict: seeds added afterwards (for another claim sharing its rows) are not
    looked at. A comparison decided at an earlier look keeps its outcome while its claim goes on."""
    a = {s: 80.0 + 0.05 * s for s in range(3)} | {s: 70.0 for s in range(3, 10)}
    b = {s: 70.0 + 0.05 * s for s in range(3)} | {s: 80.0 for s in range(3, 10)}
    c = C.compare(a, b, "beats", 0.5)
    assert c.outcome == "supports" and c.look == 0 and (c.n_a, c.n_b) == (3, 3) and c.diff == pytest.approx(10.0)
    rng = random.Random(1)
    noisy = {s: 75.0 + rng.gauss(0, 1.0) for s in range(10)}, {s: 75.0 + rng.gauss(0, 1.0) for s in range(10)}
    design = Q.Design()
    comps = [C.compare(a, b, "beats", 0.5, design=design), C.compare(*noisy, "beats", 0.0, design=design)]
    claim = C.claim_result("X", "t", "t", comps, design)
    assert comps[0].outcome == "supports" and comps[0].look == 0  # decided at 3 seeds, shown there
    assert claim.verdict == C.UNRESOLVED and claim.look == len(design.looks) - 1 and claim.seeds_needed is None
    assert "this scale cannot decide it" in claim.seeds_line()


def test_contradicted_is_bonferroni_over_the_claims_comparisons():
    """A one-look design (looks at 5 seeds: the fixed-sample test) makes the levels plain: alone, a comparison
    whose one-sided p for "A below B" is 0.011 contradicts its claim (p < 0.025); inside a claim of three
    comparisons it must clear 0.025 / 3 = 0.0083, and does not. Support needs no adjustment (every
    comparison must support: an intersection-union test)."""
    design = Q.Design(looks=(5,))
    below = (sample(74.1, 0.5, 5), sample(75.0, 0.5, 5))
    p = sps.ttest_ind(*below, equal_var=False, alternative="less").pvalue
    assert 0.025 / 3 < p < 0.025
    alone = C.compare(*(dict(enumerate(x)) for x in below), "beats", 0.9, design=design)
    assert alone.outcome == "contradicts" and alone.high < 0
    flat = [dict(enumerate(sample(75.0, 0.5, 5))) for _ in range(2)]
    comps = [C.compare(*(dict(enumerate(x)) for x in below), "beats", None, design=design)]
    comps += [C.compare(flat[0], flat[1], "beats", None, design=design) for _ in range(2)]
    claim = C.claim_result("X", "t", "t", comps, design)
    assert comps[0].outcome == "unresolved" and comps[0].high > 0 and claim.verdict == C.UNRESOLVED
    # the upper end is the one-sided t bound at 0.025 / 3, the lower at 0.025
    se = math.sqrt(2 * 0.5**2 / 5)
    assert comps[0].high == pytest.approx(-0.9 + sps.t.isf(0.025 / 3, 8) * se)
    assert comps[0].low == pytest.approx(-0.9 - sps.t.isf(0.025, 8) * se)
    supported = [C.compare(dict(enumerate(sample(76.0, 0.5, 5))), flat[1], "beats", 1.0, design=design)] * 3
    assert C.claim_result("Y", "t", "t", supported, design).verdict == C.SUPPORTED


def test_smaller_than_the_papers_is_a_verdict_and_asks_for_no_more_seeds():
    """ViTKD's mini DeiT-Tiny rows at 6 seeds: baseline and +ViTKD both ~70.7 with a spread of 0.75. The
    interval contains 0 but its upper end rules out the paper's +1.64: the claim is smaller than the paper's,
    a verdict, and --resolve adds no seeds for it. A smaller size sought (--effect 0.1) is not ruled out."""
    a, b = dict(enumerate(sample(70.63, 0.75, 6))), dict(enumerate(sample(70.77, 0.75, 6)))
    c = C.compare(a, b, "beats", 1.64, rows=(("vitkd", 0), ("vitkd", 1)))
    assert c.outcome == "smaller" and c.low < 0 < c.high < 1.64 and c.excludes_effect
    assert "→ smaller: rules out +1.64" in c.describe()
    claim = C.claim_result("ViTKD", "vitkd", "t", [c], Q.Design())
    assert claim.verdict == C.SMALLER and claim.resolved and claim.effect_excluded
    assert claim.seeds_needed is None and claim.open_rows == [] and "decided at look" in claim.seeds_line()
    sought = C.compare(a, b, "beats", 1.64, effect=0.1, rows=(("vitkd", 0), ("vitkd", 1)))
    assert sought.outcome == "unresolved" and sought.high > 0.1 and not sought.excludes_effect
    open_claim = C.claim_result("ViTKD", "vitkd", "t", [sought], Q.Design(), effect=0.1)
    assert open_claim.verdict == C.UNRESOLVED and open_claim.seeds_needed == 8
    assert open_claim.open_rows == [("vitkd", 0), ("vitkd", 1)]
    # a row that already has the next look's seeds (another claim raised it) is not asked for more
    b8 = b | {6: 70.7, 7: 70.8}
    shared = C.compare(a, b8, "beats", 1.64, effect=0.1, rows=(("vitkd", 0), ("vitkd", 1)))
    assert C.claim_result("V", "vitkd", "t", [shared], Q.Design(), effect=0.1).open_rows == [("vitkd", 0)]


def test_next_seeds_is_what_resolve_adds():
    """The round's decision: verdicts, and the open claims' rows to raise to their next look."""
    design = Q.design_for(3, 10)
    rows = (("3", 0), ("3", 1))
    decided = C.claim_result(
        "A",
        "3",
        "t",
        [
            C.compare(
                dict(enumerate(sample(80, 0.1, 3))),
                dict(enumerate(sample(70, 0.1, 3))),
                "beats",
                0.5,
                rows=rows,
                design=design,
            )
        ],
        design,
    )
    open_ = C.claim_result(
        "B",
        "3",
        "t",
        [
            C.compare(
                dict(enumerate(sample(75, 1.0, 4))),
                dict(enumerate(sample(75, 1.0, 4))),
                "beats",
                0.0,
                rows=rows,
                design=design,
            )
        ],
        design,
    )
    last = C.claim_result(
        "C",
        "3",
        "t",
        [
            C.compare(
                dict(enumerate(sample(75, 1.0, 10))),
                dict(enumerate(sample(75, 1.0, 10))),
                "beats",
                0.0,
                rows=rows,
                design=design,
            )
        ],
        design,
    )
    step = C.next_seeds([decided, open_, last])
    assert step.verdicts == {"A": C.SUPPORTED, "B": C.UNRESOLVED, "C": C.UNRESOLVED}
    assert step.rows == {"B": {("3", 0): 6, ("3", 1): 6}}
    assert "supported at 3 seeds" in step.done["A"] and "the last look (10" in step.done["C"]
    assert Q.design_for(1, 10).looks == (3, 4, 6, 8, 10) and Q.design_for(5, 20).looks[0] == 5


def test_no_look_before_the_first_looks_seeds():
    c = C.compare({0: 75.0, 1: 75.2}, {0: 74.0, 1: 74.1}, "beats", 0.5, rows=(("3", 0), ("3", 1)))
    assert c.outcome == "untested" and c.seeds_needed == 3 and "no test before 3 seeds" in c.describe()
    claim = C.claim_result("X", "3", "t", [c], Q.Design())
    assert claim.verdict == C.UNTESTED and claim.seeds_needed == 3 and claim.open_rows == [("3", 0), ("3", 1)]


def test_basis_names_the_test_level_design_and_multiplicity():
    assert "Welch's t-test" in C.basis() and "95%" in C.basis()
    assert "paired t-test" in C.basis("paired", 0.9) and "90%" in C.basis("paired", 0.9)
    text = C.basis()
    for words in ("O'Brien-Fleming-type", "3, 4, 6, 8, 10", "Bonferroni", "intersection-union", "smaller than"):
        assert words in text
