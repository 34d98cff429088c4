"""orchestrator/report/sequential.py against published values: the recursive integration gives Pocock's and
O'Brien & Fleming's constants (Jennison & Turnbull 2000, Tables 2.1 and 2.3) and the Lan-DeMets spending
boundaries as gsDesign / ldbounds print them; the t-mixture confidence sequence covers at every n at once;
a comparison's outcome is its first crossing. Pure: a few seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.report import sequential as Q

FIVE = (0.2, 0.4, 0.6, 0.8, 1.0)


def _equal(k: int) -> tuple[float, ...]:
    return tuple((i + 1) / k for i in range(k))


@pytest.mark.parametrize(
    "k, pocock, obf",
    [
        # Jennison & Turnbull (2000), Table 2.1 (C_P(K, 0.05)) and Table 2.3 (C_B(K, 0.05)), two-sided 0.05
        (2, 2.178, 1.977),
        (5, 2.413, 2.040),
    ],
)
def test_pocock_and_obrien_fleming_constants(k, pocock, obf):
    """A constant boundary C (Pocock) or C sqrt(K/k) (O'Brien-Fleming) on both sides, equally spaced looks:
    the published C, to its three decimals, is where the total error crosses 0.05."""
    t = _equal(k)

    def error(c: float, shape) -> float:
        up = tuple(c * s for s in shape)
        return Q.exit_probability(up, t, tuple(-u for u in up))

    flat, decreasing = [1.0] * k, [math.sqrt(k / (i + 1)) for i in range(k)]
    assert error(pocock - 5e-4, flat) > 0.05 > error(pocock + 5e-4, flat)
    assert error(obf - 5e-4, decreasing) > 0.05 > error(obf + 5e-4, decreasing)


def test_lan_demets_spending_boundaries():
    """Five equally spaced looks, one-sided 0.025 (each side of a two-sided 0.05 design), as gsDesign
    (sfLDOF, sfLDPocock) and ldbounds (Reboussin, DeMets, Kim & Lan 2000) print them."""
    obf = Q.boundaries(FIVE, 0.025, "obf")
    assert obf == pytest.approx((4.877, 3.357, 2.680, 2.290, 2.031), abs=6e-4)
    pocock = Q.boundaries(FIVE, 0.025, "pocock")
    assert pocock == pytest.approx((2.438, 2.427, 2.410, 2.397, 2.386), abs=6e-4)
    # the boundaries spend what the function says: their total error is the level
    for b in (obf, pocock, Q.boundaries((0.3, 0.5, 0.7, 1.0), 0.01, "hsd", -4.0)):
        alpha = 0.01 if len(b) == 4 else 0.025
        assert Q.exit_probability(b, FIVE if len(b) == 5 else (0.3, 0.5, 0.7, 1.0)) == pytest.approx(alpha, rel=1e-4)


def test_spending_functions_spend_the_level_by_the_last_look():
    t = np.linspace(0.05, 1, 20)
    for family, param in (("obf", None), ("pocock", None), ("hsd", -4.0), ("hsd", 1.0), ("power", 2.0)):
        s = Q.spend(t, 0.025, family, param)
        assert s[-1] == pytest.approx(0.025) and np.all(np.diff(s) > 0), family
    # O'Brien-Fleming-type spends almost nothing early; Pocock-type much more
    assert Q.spend(0.3, 0.025, "obf") < 1e-3 < Q.spend(0.3, 0.025, "pocock")


def test_schedule():
    assert Q.schedule() == (3, 4, 6, 8, 10) and Q.Design().looks == Q.schedule()
    assert Q.schedule(2, 10) == (2, 3, 4, 6, 8, 10) and Q.schedule(3, 20)[-1] == 20
    assert Q.schedule(5, 5) == (5,) and Q.schedule(3, 4) == (3, 4)
    with pytest.raises(ValueError):
        Q.Design(looks=(4, 3))


def test_a_one_look_design_is_the_fixed_sample_test():
    from scipy import stats

    d = Q.Design(looks=(6,))
    assert d.nominal(0.025)[0] == pytest.approx(0.025)
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, (50, 6)), rng.normal(0, 1, (50, 6))
    rec = Q.looks(a, b, d)
    ci = stats.ttest_ind(a, b, axis=-1, equal_var=False).confidence_interval(0.95)
    assert rec.low[:, 0] == pytest.approx(ci.low) and rec.high[:, 0] == pytest.approx(ci.high)


def test_the_t_mixture_confidence_sequence_covers_at_every_n_at_once():
    """Lai's (1976) t-mixture: over n = 2..200 seeds, the mean stays inside the sequence on at least 95% of
    paths (Ville's inequality), where re-testing the fixed 95% t interval at every n does not."""
    from scipy import stats

    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 2.0, (2000, 200))
    ns = np.arange(2, 201)
    mean = np.cumsum(x, axis=1)[:, 1:] / ns
    sd = np.array([x[:, :n].std(axis=1, ddof=1) for n in ns]).T
    radius = np.stack([Q._mixture_radius(sd[:, i], n, 0.05, 1.0) for i, n in enumerate(ns)], axis=1)
    missed = (np.abs(mean) > radius).any(axis=1).mean()
    assert missed <= 0.05
    fixed = stats.t.isf(0.025, ns - 1) * sd / np.sqrt(ns)
    assert (np.abs(mean) > fixed).any(axis=1).mean() > 0.2
    # the same half-width as Lindon et al. (2022)'s anytime-valid t-test (savvi), with phi = c and nu = n - 1
    n, c, alpha, s = 8, 1.0, 0.05, 1.3
    r = c / (c + n)
    q = (r * alpha**2) ** (1 / n)
    assert Q._mixture_radius(np.array(s), n, alpha, c) == pytest.approx(
        s / math.sqrt(n) * math.sqrt((n - 1) * (1 - q) / (q - r))
    )


def test_outcomes_keep_the_first_crossing_and_claims_stop_at_their_first_verdict():
    low = np.array([[-1.0, 0.2, -0.1], [-1.0, -0.5, -0.6], [-1.0, -0.9, -0.8]])
    high = np.array([[1.0, 0.9, 0.8], [1.0, -0.1, 0.3], [1.0, 0.3, 0.2]])
    out = Q.outcomes(low, high, "beats", 0.5, effect=0.4)
    assert out.tolist() == [
        [Q.OPEN, Q.SUPPORTS, Q.SUPPORTS],  # supported at look 2, kept
        [Q.OPEN, Q.CONTRADICTS, Q.CONTRADICTS],
        [Q.OPEN, Q.SMALLER, Q.SMALLER],  # the upper end below the paper's +0.4
    ]
    assert Q.outcomes(low, high, "close", 0.5).tolist()[0] == [Q.OPEN, Q.SUPPORTS, Q.SUPPORTS]  # above -0.5
    close = Q.outcomes(np.array([-2.0, -2.0]), np.array([-0.4, -0.6]), "close", 0.5, effect=0.4)
    assert close.tolist() == [Q.OPEN, Q.CONTRADICTS]  # below -0.5; no "smaller" for a closeness claim
    claim = Q.verdicts(out[None])  # one claim of three comparisons
    assert claim.tolist() == [[Q.OPEN, Q.CONTRADICTS, Q.CONTRADICTS]] and Q.stop(claim).tolist() == [1]
    assert Q.verdicts(out[[0, 2]][None]).tolist() == [[Q.OPEN, Q.SMALLER, Q.SMALLER]]
    assert Q.verdicts(out[[0]][None]).tolist() == [[Q.OPEN, Q.SUPPORTS, Q.SUPPORTS]]
    assert Q.stop(np.array([Q.OPEN, Q.OPEN])) == 1  # no verdict: the last look
