"""benchmarks/bench_claims.py: the decision procedure's error rates with fixed seeds and enough draws, each
verdict in its own worst case; the benchmark runs the report's decision (claims.compare / claim_result and
ClaimResult.open_rows / seeds_needed, as --resolve calls them) and today's --resolve (stats.decide,
stats.seeds_needed, resolve.next_step) draw for draw; its printout has the one line the README quotes."""

from __future__ import annotations

import io
import math
import re
from contextlib import redirect_stdout

import numpy as np
import pytest

from benchmarks import bench_claims as B
from orchestrator.report import claims as C
from orchestrator.report import sequential as Q
from orchestrator.report import stats as S

LEVEL_SIDE = (1 - S.LEVEL) / 2  # each verdict's error: 0.025


def mcse(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def verdict_rate(claim: B.Claim, code: int, *, null: bool, test: str, rho: float, draws: int, seed: int) -> float:
    x = B.draw(claim, null, rho, draws, B.MAX_SEEDS, np.random.default_rng(seed))
    v, _ = B.new_procedure(x, claim, Q.Design(), test)
    return float((v == code).mean())


def test_false_resolution_under_the_null_holds_the_level():
    """The printout's line: the worst false-resolution rate (supported or contradicted, every row equal)
    over the manifold claims, the issue's one-comparison claim, and rho 0 and 0.7."""
    draws = 4000
    x = B.null_line(B.manifold_claims(), draws, seed=11, max_seeds=B.MAX_SEEDS)
    assert x <= 0.05 + 3 * mcse(0.05, draws)


# A claim whose comparisons are all 0 with no paper's difference to rule out ("smaller" cannot stop it
# first): the worst case of both "supported" (a difference <= 0) and "contradicted" (all differences >= 0).
ZERO = B.Claim("zero", (75.0, 75.0), (0.5, 0.5), ((0, 1, "beats", 0.0),))
ZERO3 = B.Claim("zero3", (75.0,) * 4, (0.3, 0.5, 0.4, 0.6), tuple((0, j, "beats", 0.0) for j in (1, 2, 3)))


@pytest.mark.parametrize("test, rho", [("welch", 0.0), ("paired", 0.0), ("paired", 0.7)])
def test_supported_and_contradicted_hold_their_level_in_their_worst_case(test, rho):
    draws = 20000
    for claim in (ZERO, ZERO3):
        for code in (Q.SUPPORTS, Q.CONTRADICTS):
            rate = verdict_rate(claim, code, null=True, test=test, rho=rho, draws=draws, seed=7 + code)
            assert rate <= LEVEL_SIDE + 3 * mcse(LEVEL_SIDE, draws), (claim.id, code, rate)


@pytest.mark.parametrize("test, rho", [("welch", 0.0), ("paired", 0.7)])
def test_smaller_holds_its_level_when_the_differences_are_the_papers(test, rho):
    """Its worst case: every true difference is the paper's (for T3 the paper's +0.44, +0.52, +0.43)."""
    draws = 20000
    t3 = next(c for c in B.manifold_claims() if c.id == "T3")
    for claim in (B.one_comparison(), t3):
        rate = verdict_rate(claim, Q.SMALLER, null=False, test=test, rho=rho, draws=draws, seed=3)
        assert rate <= LEVEL_SIDE + 3 * mcse(LEVEL_SIDE, draws), (claim.id, rate)


def test_the_simulator_finds_the_old_procedures_inflation():
    """The issue's numbers for re-testing Welch at 95% after every added seed (two rows, equal means,
    spread 0.5): 0.135 at 10 seeds, 0.21 at 20."""
    draws = 4000
    for max_seeds, issue in ((10, 0.135), (20, 0.21)):
        r = B.rates(B.old(max_seeds, one_at_a_time=True), B.one_comparison(), 0.0, draws, 5, max_seeds, alt=False)
        assert r.false_null == pytest.approx(issue, abs=3 * mcse(issue, draws))
    r = B.rates(B.old(10), B.one_comparison(effect=1.0), 0.0, draws, 5, 10, alt=False)
    assert r.false_null > 0.05  # today's --resolve (power estimate, futility stop), the size sought 1.0


def _resolve_loop(x: np.ndarray, claim: B.Claim, design: Q.Design, test: str) -> tuple[str, list[int]]:
    """--resolve on one draw through the report's code: decide, raise the open rows to the next look."""
    have = [design.looks[0]] * len(claim.means)
    refs = [("t", r) for r in range(len(claim.means))]
    while True:
        comps = [
            C.compare(
                {s: x[a, s] for s in range(have[a])},
                {s: x[b, s] for s in range(have[b])},
                rel,
                paper,
                test=test,
                rows=(refs[a], refs[b]),
                design=design,
            )
            for a, b, rel, paper in claim.pairs
        ]
        result = C.claim_result(claim.id, "t", "", comps, design)
        if result.resolved or not result.open_rows:
            return result.verdict, have
        for _, r in result.open_rows:
            have[r] = result.seeds_needed


CODE = {C.SUPPORTED: Q.SUPPORTS, C.CONTRADICTED: Q.CONTRADICTS, C.SMALLER: Q.SMALLER, C.UNRESOLVED: Q.OPEN}


@pytest.mark.parametrize("test", ["welch", "paired"])
def test_the_benchmark_runs_the_reports_decision(test):
    design = Q.Design()
    claims = {c.id: c for c in B.manifold_claims()}
    for cid in ("T2-hard", "T3", "T7", "F4"):
        for null in (True, False):
            x = B.draw(claims[cid], null, 0.5, 12, B.MAX_SEEDS, np.random.default_rng(len(cid)))
            v, seeds = B.new_procedure(x, claims[cid], design, test)
            for i in range(x.shape[0]):
                verdict, have = _resolve_loop(x[i], claims[cid], design, test)
                assert (CODE[verdict], np.mean(have)) == (v[i], pytest.approx(seeds[i])), (cid, null, i)


def _old_loop(x: np.ndarray, claim: B.Claim, max_seeds: int) -> tuple[int, list[int]]:
    """Today's --resolve on one draw: stats.decide at 95%, the futility stop, stats.seeds_needed and
    report.decide.next_step (the old decision the resolve loop ran)."""
    from orchestrator.report.decide import ClaimNeed, next_step

    have = [B.FIRST] * len(claim.means)
    keys = [f"r{r}" for r in range(len(claim.means))]
    while True:
        outs, needs, excluded, rows = [], [], False, []
        for a, b, rel, paper in claim.pairs:
            xa, xb = x[a, : have[a]].tolist(), x[b, : have[b]].tolist()
            d = S.decide(xa, xb, rel)
            outs.append(d.outcome)
            if d.outcome == "unresolved":
                rows += [keys[a], keys[b]]
                if rel != "close" and paper and (d.high < paper if paper > 0 else d.low > paper):
                    excluded = True
                needs.append(S.seeds_needed(paper, S._std(xa), S._std(xb), relation=rel))
        if "contradicts" in outs:
            return Q.CONTRADICTS, have
        if "unresolved" not in outs:
            return Q.SUPPORTS, have
        need = None if any(n is None for n in needs) else max(needs)
        step = next_step(
            [ClaimNeed(claim.id, False, tuple(dict.fromkeys(rows)), need, excluded)],
            dict(zip(keys, have)),
            dict.fromkeys(keys, 1.0),
            None,
            max_seeds,
        )
        if not step.targets:
            return Q.OPEN, have
        for k, n in step.targets.items():
            have[keys.index(k)] = n


def test_the_old_procedure_is_todays_resolve():
    claims = {c.id: c for c in B.manifold_claims()}
    for claim in (claims["T3"], claims["T5"], claims["F4"], B.one_comparison(effect=1.0)):
        for null in (True, False):
            x = B.draw(claim, null, 0.0, 15, B.MAX_SEEDS, np.random.default_rng(4))
            v, seeds = B.old_procedure(x, claim, B.MAX_SEEDS)
            for i in range(x.shape[0]):
                verdict, have = _old_loop(x[i], claim, B.MAX_SEEDS)
                assert (verdict, np.mean(have)) == (v[i], pytest.approx(seeds[i])), (claim.id, null, i)


@pytest.mark.slow
def test_the_printout_has_one_false_resolution_line():
    out = io.StringIO()
    with redirect_stdout(out):
        assert B.main(["--draws", "300"]) == 0
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("false resolution under the null")]
    assert len(lines) == 1 and re.fullmatch(r"false resolution under the null: 0\.\d{4} \(level 0\.95\)", lines[0])
    assert "old --resolve" in out.getvalue() and B.CHOSEN in out.getvalue()
