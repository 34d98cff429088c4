"""Pure: the group-sequential test that decides a claim's comparisons over a pre-set schedule of seeds.

`--resolve` adds seeds and decides again; re-testing at a fixed level after every round inflates the error
(optional stopping). Here each comparison is tested only at pre-set looks (seeds per row, e.g. 3, 5, 7, 10),
at per-look levels from an alpha-spending function (Lan & DeMets 1983) whose boundaries account for the
correlation between looks (recursive integration, Jennison & Turnbull 2000, ch. 19). The t statistic at
each look is referred to the normal-theory boundary's nominal level (the significance-level approach,
J&T ch. 3.8), the boundaries built at a level calibrated by simulation so that the t-tests hold it at a
few seeds (`calibrated`); benchmarks/bench_claims.py measures that the error holds. Stopping early (a
verdict, the budget) only removes looks, so it can only lower the error.

Everything here is vectorised over leading axes (simulated draws) so that the benchmark runs the very
code the report and `--resolve` run, on many draws at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SPENDING = ("obf", "pocock", "hsd", "power", "mixture")
MAX_SEEDS = 10  # `--max-seeds`' default: the last look
FIRST_LOOK = 3  # seeds per row at the first look (the grid's seeds)
GROWTH = 1.4  # each look has about 40% more seeds than the one before

# comparison outcomes at a look, and claim verdicts (codes for arrays)
OPEN, SUPPORTS, CONTRADICTS, SMALLER = 0, 1, 2, 3


# ---- the look schedule and the boundaries ----------------------------------------------------------
def schedule(first: int = FIRST_LOOK, last: int = MAX_SEEDS, growth: float = GROWTH) -> tuple[int, ...]:
    """Seeds per row at each look: from `first`, about `growth` times more each look, ending at `last`."""
    first, last = max(2, first), max(2, last)
    if first >= last:
        return (last,)
    looks = [first]
    while True:
        n = max(looks[-1] + 1, math.floor(looks[-1] * growth + 0.5))
        if n >= last:
            break
        looks.append(n)
    return (*looks, last)


def spend(t: np.ndarray | float, alpha: float, spending: str = "obf", param: float | None = None) -> np.ndarray:
    """Cumulative one-sided error spent by information fraction t (Lan & DeMets 1983; Hwang, Shih & DeCani
    1990; the power family of Kim & DeMets 1987)."""
    from scipy.stats import norm

    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    if spending == "obf":  # O'Brien-Fleming type
        return 2 * norm.sf(norm.isf(alpha / 2) / np.sqrt(np.maximum(t, 1e-300)))
    if spending == "pocock":  # Pocock type
        return alpha * np.log1p((math.e - 1) * t)
    if spending == "hsd":  # Hwang-Shih-DeCani, gamma = param
        g = -4.0 if param is None else param
        return alpha * t if g == 0 else alpha * (1 - np.exp(-g * t)) / (1 - math.exp(-g))
    if spending == "power":  # alpha t^rho
        return alpha * t ** (3.0 if param is None else param)
    raise ValueError(f"unknown spending function {spending!r}: one of obf, pocock, hsd, power")


_LO, _HI, _STEP = -8.0, 10.0, 0.025  # the integration grid for Z_k (standard normal scale)


def _simpson(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    m = max(2, 2 * math.ceil((hi - lo) / _STEP / 2))
    z = np.linspace(lo, hi, m + 1)
    w = np.ones(m + 1)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return z, w * (hi - lo) / m / 3


def _crossing(z: np.ndarray, f: np.ndarray, r: float, s: float, c: float) -> float:
    """P(Z_{k-1} stayed in, Z_k >= c), Z_k = r Z_{k-1} + s e: `f` is Z_{k-1}'s sub-density times weights."""
    from scipy.stats import norm

    return float(np.dot(f, norm.sf((c - r * z) / s)))


def _carry(z: np.ndarray, f: np.ndarray, r: float, s: float, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Z_k's sub-density (times Simpson weights) on [lo, hi], paths that stayed in before."""
    z2, w2 = _simpson(lo, hi)
    kernel = np.exp(-0.5 * ((z2[:, None] - r * z[None, :]) / s) ** 2) / (s * math.sqrt(2 * math.pi))
    return z2, w2 * (kernel @ f)


def _first(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.stats import norm

    z, w = _simpson(lo, hi)
    return z, w * norm.pdf(z)


@lru_cache(maxsize=256)
def boundaries(
    fractions: tuple[float, ...], alpha: float, spending: str = "obf", param: float | None = None
) -> tuple[float, ...]:
    """One-sided upper boundaries z_1..z_K at information fractions t_k for a one-sided level `alpha`:
    under no difference, P(Z_1 < z_1, ..., Z_{k-1} < z_{k-1}, Z_k >= z_k) = spend(t_k) - spend(t_{k-1})."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    t = np.asarray(fractions, dtype=float)
    inc = np.diff(np.concatenate([[0.0], spend(t, alpha, spending, param)]))
    out: list[float] = []
    z = f = None
    for k in range(len(t)):
        if k == 0:
            c = float(norm.isf(inc[0])) if inc[0] > 0 else math.inf
            z, f = _first(_LO, min(c, _HI))
        else:
            r = math.sqrt(t[k - 1] / t[k])
            s = math.sqrt(1 - r * r)
            if inc[k] <= 0:
                c = math.inf
            else:
                c = brentq(
                    lambda x, z=z, f=f, r=r, s=s, i=inc[k]: _crossing(z, f, r, s, x) - i, -_HI, 4 * _HI, xtol=1e-10
                )
            z, f = _carry(z, f, r, s, _LO, min(c, _HI))
        out.append(c)
    return tuple(out)


def exit_probability(
    upper: tuple[float, ...], fractions: tuple[float, ...], lower: tuple[float, ...] | None = None
) -> float:
    """P(some Z_k >= upper_k, or <= lower_k, before the other) under no difference: a design's total error."""
    from scipy.stats import norm

    t = np.asarray(fractions, dtype=float)
    lower = lower or tuple(-math.inf for _ in upper)
    lo = [max(_LO, x) for x in lower]
    hi = [min(_HI, x) for x in upper]
    total = float(norm.sf(upper[0]) + norm.cdf(lower[0]))
    z, f = _first(lo[0], hi[0])
    for k in range(1, len(t)):
        r = math.sqrt(t[k - 1] / t[k])
        s = math.sqrt(1 - r * r)
        total += _crossing(z, f, r, s, upper[k]) + float(np.dot(f, norm.cdf((lower[k] - r * z) / s)))
        z, f = _carry(z, f, r, s, lo[k], hi[k])
    return total


# ---- the design ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Design:
    """How comparisons are decided: the looks (seeds per row), the level, and the spending function
    (`mixture`: Lai's t-mixture confidence sequence instead, valid at any look; `param` its prior precision)."""

    looks: tuple[int, ...] = schedule()
    level: float = 0.95
    spending: str = "obf"
    param: float | None = None

    def __post_init__(self):
        if self.spending not in SPENDING:
            raise ValueError(f"unknown spending {self.spending!r}: one of {', '.join(SPENDING)}")
        if list(self.looks) != sorted(set(self.looks)) or self.looks[0] < 2:
            raise ValueError(f"looks must increase from at least 2 seeds: {self.looks}")

    @property
    def alpha(self) -> float:
        return 1 - self.level

    def nominal(self, alpha: float, test: str | None = None) -> tuple[float, ...]:
        """Per-look one-sided nominal levels of a one-sided test at `alpha`: the normal-theory boundaries'
        (test None), or theirs at the level `calibrated` for that t-test."""
        if test is not None:
            alpha = calibrated(self.looks, self.spending, self.param, alpha, test)
        return _nominal(self.looks, self.spending, self.param, alpha)

    def describe(self) -> str:
        looks = ", ".join(map(str, self.looks))
        if self.spending == "mixture":
            return f"Lai's t-mixture confidence sequence (prior precision {self.param or 1:g}), looks at {looks} seeds"
        name = {
            "obf": "O'Brien-Fleming-type",
            "pocock": "Pocock-type",
            "hsd": f"Hwang-Shih-DeCani (gamma {self.param if self.param is not None else -4:g})",
            "power": f"power-family (rho {self.param if self.param is not None else 3:g})",
        }[self.spending]
        return f"a group-sequential design with {name} alpha spending (Lan-DeMets), looks at {looks} seeds per row"


def _nominal(looks: tuple[int, ...], spending: str, param: float | None, alpha: float) -> tuple[float, ...]:
    fractions = tuple(n / looks[-1] for n in looks)
    return tuple(_norm_sf(c) for c in boundaries(fractions, alpha, spending, param))


CALIBRATION_PATHS = 40_000


@lru_cache(maxsize=256)
def calibrated(looks: tuple[int, ...], spending: str, param: float | None, alpha: float, test: str) -> float:
    """The one-sided level to build the boundaries at so that the t-tests at the looks cross them with
    probability `alpha` under no difference. The significance-level approach alone overshoots at a few
    seeds (the t statistics of successive looks are less correlated than the normal theory's): paired at
    3-10 seeds, 0.028 for 0.025. Simulated once per design (fixed seed; equal spreads for Welch) and
    interpolated; never above `alpha`."""
    from scipy.stats import t as t_dist

    rng = np.random.default_rng(20251207)
    a = rng.standard_normal((CALIBRATION_PATHS, looks[-1]))
    b = rng.standard_normal((CALIBRATION_PATHS, looks[-1]))
    p = []
    for n in looks:
        diff, se, df = _t_parts(a[:, :n], b[:, :n], test)
        p.append(t_dist.sf(diff / se, df))
    p = np.stack(p, axis=1)

    def error(level: float) -> float:
        return float((p < np.asarray(_nominal(looks, spending, param, level))).any(axis=1).mean())

    hi, e_hi = alpha, error(alpha)
    if e_hi <= alpha:
        return alpha
    for f in (0.9, 0.8, 0.65, 0.5):  # down until the error is under alpha, then interpolate (it grows with the level)
        lo, e_lo = alpha * f, error(alpha * f)
        if e_lo <= alpha:
            return float(lo + (hi - lo) * (alpha - e_lo) / (e_hi - e_lo))
        hi, e_hi = lo, e_lo
    return lo


def _norm_sf(c: float) -> float:
    return 0.0 if math.isinf(c) else float(0.5 * math.erfc(c / math.sqrt(2)))


def design_for(seeds: int = FIRST_LOOK, max_seeds: int = MAX_SEEDS, level: float = 0.95, **kw) -> Design:
    """The design of a grid trained with `seeds` per row (`--seeds`; one seed: a first look at 3) and
    `--max-seeds`: looks from the grid's seeds to the last. Fixed before any result is seen."""
    return Design(schedule(seeds if seeds >= 2 else FIRST_LOOK, max_seeds), level, **kw)


# ---- vectorised decisions ------------------------------------------------------------------------
@dataclass
class Looks:
    """A comparison at each look it reached: arrays over (..., look)."""

    n: tuple[int, ...]  # seeds per row at each look
    diff: np.ndarray
    low: np.ndarray  # one-sided lower bound at the support side's level
    high: np.ndarray  # one-sided upper bound at the contradiction side's (Bonferroni) level
    df: np.ndarray
    p: np.ndarray  # the fixed-sample two-sided p-value at that look (for the record)


def _t_parts(a: np.ndarray, b: np.ndarray, test: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = a.shape[-1]
    if test == "paired":
        d = a - b
        se = d.std(axis=-1, ddof=1) / math.sqrt(n)
        return d.mean(axis=-1), se, np.full(se.shape, n - 1.0)
    if test != "welch":
        raise ValueError(f"unknown test {test!r}: welch or paired")
    va, vb = a.var(axis=-1, ddof=1) / n, b.var(axis=-1, ddof=1) / n
    se2 = va + vb
    with np.errstate(invalid="ignore", divide="ignore"):
        df = np.where(se2 > 0, se2**2 / ((va**2 + vb**2) / (n - 1)), 2 * n - 2.0)
    return a.mean(axis=-1) - b.mean(axis=-1), np.sqrt(se2), df


def _mixture_radius(sd: np.ndarray, n: int, alpha: float, c: float) -> np.ndarray:
    """Half-width of Lai's (1976) t-mixture confidence sequence for a normal mean at n observations,
    prior N(0, 1/c) on the standardised mean: valid at every n at once (Ville's inequality). The same as
    Lindon et al. (2022)'s anytime-valid t-test with phi = c."""
    big_r = (n + c) * (1 - (alpha**2 * c / (n + c)) ** (1 / n))
    if big_r >= n:
        return np.full(np.shape(sd), np.inf)
    return sd * math.sqrt(big_r * (n - 1) / (n * (n - big_r)))


def looks(a: np.ndarray, b: np.ndarray, design: Design, *, test: str = "welch", comparisons: int = 1) -> Looks:
    """Every look of `design` that rows A and B reached: a[..., s], b[..., s] are seed s's top-1 (paired:
    the same seeds in the same order). The lower bound is at one-sided alpha/2 (a claim is supported only
    when every comparison is: an intersection-union test needs no adjustment); the upper bound at
    alpha/2/comparisons (a claim is contradicted, or smaller than the paper's, when any one comparison is:
    Bonferroni over the claim's comparisons)."""
    from scipy.stats import t as t_dist

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    reached = [k for k, n in enumerate(design.looks) if n <= min(a.shape[-1], b.shape[-1])]
    ns = tuple(design.looks[k] for k in reached)
    lo_a, hi_a = design.alpha / 2, design.alpha / 2 / comparisons
    parts = [_t_parts(a[..., :n], b[..., :n], test) for n in ns]
    shape = a.shape[:-1]
    out = {key: np.empty((*shape, len(ns))) for key in ("diff", "low", "high", "df", "p")}
    nominal = None if design.spending == "mixture" else (design.nominal(lo_a, test), design.nominal(hi_a, test))
    for j, (k, n, (diff, se, df)) in enumerate(zip(reached, ns, parts)):
        if nominal is None:  # a confidence sequence on the per-seed differences (any looks)
            sd = (a[..., :n] - b[..., :n]).std(axis=-1, ddof=1)
            c = design.param or 1.0
            down, up = _mixture_radius(sd, n, 2 * lo_a, c), _mixture_radius(sd, n, 2 * hi_a, c)
        else:
            down = np.where(se > 0, t_dist.isf(nominal[0][k], df) * se, 0.0)
            up = np.where(se > 0, t_dist.isf(nominal[1][k], df) * se, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(se > 0, 2 * t_dist.sf(np.abs(diff) / se, df), np.where(diff == 0, 1.0, 0.0))
        for key, v in (("diff", diff), ("low", diff - down), ("high", diff + up), ("df", df), ("p", p)):
            out[key][..., j] = v
    return Looks(ns, **out)


def outcomes(
    low: np.ndarray, high: np.ndarray, relation: str = "beats", margin: float = 0.5, effect: float | None = None
) -> np.ndarray:
    """Each look's outcome, once decided kept (a sequential test stops at its first crossing): SUPPORTS when
    the lower bound clears 0 (close: -margin), CONTRADICTS when the upper bound is below it, SMALLER when the
    upper bound rules out `effect` (the paper's difference; "beats" with a positive one only), else OPEN."""
    bound = -margin if relation == "close" else 0.0
    if np.shape(low)[-1] == 0:
        return np.zeros(np.shape(low), dtype=int)
    now = np.where(low > bound, SUPPORTS, np.where(high < bound, CONTRADICTS, OPEN))
    decided = np.maximum.accumulate(now != OPEN, axis=-1)
    first = np.argmax(now != OPEN, axis=-1)
    kept = np.where(decided, np.take_along_axis(now, first[..., None], axis=-1), OPEN)
    if relation == "beats" and effect is not None and effect > 0:
        smaller = np.maximum.accumulate(high < effect, axis=-1)
        kept = np.where((kept == OPEN) & smaller, SMALLER, kept)
    return kept


def verdicts(codes: np.ndarray) -> np.ndarray:
    """A claim's verdict at each look from its comparisons' outcomes (..., comparison, look): CONTRADICTS
    when any contradicts; SUPPORTS when all support; SMALLER when any is smaller than the paper's; else OPEN."""
    any_con = (codes == CONTRADICTS).any(axis=-2)
    all_sup = (codes == SUPPORTS).all(axis=-2)
    any_small = (codes == SMALLER).any(axis=-2)
    return np.where(any_con, CONTRADICTS, np.where(all_sup, SUPPORTS, np.where(any_small, SMALLER, OPEN)))


def stop(claim: np.ndarray) -> np.ndarray:
    """The look a claim stops at: its first verdict, else its last look (index into the looks axis)."""
    decided = claim != OPEN
    return np.where(decided.any(axis=-1), np.argmax(decided, axis=-1), claim.shape[-1] - 1)
