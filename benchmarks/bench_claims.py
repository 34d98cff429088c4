"""`python -m benchmarks.bench_claims [--draws N] [--max-seeds N] [--seed S]`: how often `--resolve`'s
decision procedure resolves a claim wrongly, how often it resolves a true one, and how many seeds it uses,
on synthetic rows (no training): the old procedure (Welch at 95% re-tested every round, rows raised to the
power estimate, futility stop) and the group-sequential designs of orchestrator/report/sequential.py side
by side. The new procedure runs the very functions the report runs (sequential.looks / outcomes /
verdicts / stop, as claims.decide calls them; tests/test_bench_claims.py checks both give the same
verdicts); the old one is a vectorised copy of stats.decide + stats.seeds_needed + resolve.next_step
(checked against them in the same test).

A row's top-1 at seed s is its mean + spread * (sqrt(rho) Z_s + sqrt(1 - rho) E_row,s): a seed shared by
the rows (common random numbers) correlates them by rho. Under the null every row of a claim has the same
mean; under the paper's differences each row has the paper's Acc1. The inputs are the table below.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from orchestrator.report import claims as C
from orchestrator.report import sequential as Q
from orchestrator.report import stats as S

# ---- inputs ---------------------------------------------------------------------------------------
# Per-row seed spread (std of the final top-1 over 3 seeds) on the mini grid, from
# docs/results/mini-paper-mean/report.md, by (table, the paper's Acc1 of the row). To be replaced by
# spreads measured over more seeds.
SPREADS: dict[tuple[str, float], float] = {
    ("2", 74.48): 1.03, ("2", 81.16): 0.44, ("2", 73.86): 1.12, ("2", 80.11): 0.38, ("2", 74.39): 0.64,
    ("2", 81.27): 0.30, ("2", 74.46): 0.51, ("2", 80.25): 0.19, ("2", 75.06): 0.32, ("2", 81.48): 0.10,
    ("3", 75.06): 0.32, ("3", 74.62): 0.11, ("3", 74.54): 0.29, ("3", 74.63): 0.53,
    ("4", 75.06): 0.32, ("4", 74.72): 0.21, ("4", 74.90): 0.31, ("4", 74.73): 0.70,
    ("5", 74.50): 0.50, ("5", 75.06): 0.32, ("5", 74.30): 0.62, ("5", 74.31): 0.27,
    ("6", 74.62): 0.11, ("6", 75.06): 0.32, ("6", 74.95): 0.31, ("6", 74.81): 0.30,
    ("7", 74.31): 0.17, ("7", 74.46): 0.51, ("7", 81.41): 0.22, ("7", 81.48): 0.10,
    ("fig4", 72.2): 0.44, ("fig4", 74.39): 0.64, ("fig4", 75.06): 0.32,
}  # fmt: skip
CORRELATIONS = (0.0, 0.7)  # between rows at equal seeds: to be replaced by the measured ones
DRAWS = 4000
FIRST = 3  # the grid's seeds per row
MAX_SEEDS = 10  # --max-seeds' default
# candidate designs: (label, spending, param, growth of the look schedule; 1 = one seed at a time)
CANDIDATES = (
    ("OBF-type", "obf", None, Q.GROWTH),
    ("OBF-type, +1 seed a look", "obf", None, 1.0),
    ("Pocock-type", "pocock", None, Q.GROWTH),
    ("HSD gamma -4", "hsd", -4.0, Q.GROWTH),
    ("power rho 2", "power", 2.0, Q.GROWTH),
    ("t-mixture CS c=1", "mixture", 1.0, Q.GROWTH),
    ("t-mixture CS c=1, +1 seed", "mixture", 1.0, 1.0),
)
CHOSEN = "OBF-type"


@dataclass(frozen=True)
class Claim:
    id: str
    means: tuple[float, ...]  # the paper's Acc1 of each row
    sds: tuple[float, ...]
    pairs: tuple[tuple[int, int, str, float], ...]  # (row A, row B, relation, the paper's A - B)


def manifold_claims() -> list[Claim]:
    """The claims of Tables 2-7 and Figure 4 (final epoch) with the mini grid's spreads."""
    defs = [(c.id, c.table, [(p.a, p.b, p.relation) for p in c.pairs]) for c in C.CLAIMS if c.table.isdigit()]
    defs.append(("F4", "fig4", [(75.06, 72.2, "beats"), (75.06, 74.39, "beats")]))
    out = []
    for cid, table, pairs in defs:
        rows = list(dict.fromkeys(x for a, b, _ in pairs for x in (a, b)))
        out.append(
            Claim(
                cid,
                tuple(rows),
                tuple(SPREADS[(table, r)] for r in rows),
                tuple((rows.index(a), rows.index(b), rel, round(a - b, 2)) for a, b, rel in pairs),
            )
        )
    return out


def one_comparison(spread: float = 0.5, effect: float = 0.5) -> Claim:
    """The issue's setup: one comparison of two rows, spread 0.5, the size sought `effect`."""
    return Claim("one comparison", (effect, 0.0), (spread, spread), ((0, 1, "beats", effect),))


def draw(claim: Claim, null: bool, rho: float, draws: int, seeds: int, rng: np.random.Generator) -> np.ndarray:
    """Top-1 per (draw, row, seed): under the null every row at the first row's mean."""
    means = np.full(len(claim.means), claim.means[0]) if null else np.asarray(claim.means)
    shared = rng.standard_normal((draws, 1, seeds))
    own = rng.standard_normal((draws, len(means), seeds))
    return means[None, :, None] + np.asarray(claim.sds)[None, :, None] * (
        math.sqrt(rho) * shared + math.sqrt(1 - rho) * own
    )


# ---- the new procedure: the report's sequential decision -----------------------------------------
def new_procedure(x: np.ndarray, claim: Claim, design: Q.Design, test: str) -> tuple[np.ndarray, np.ndarray]:
    """(verdict code, seeds per row used) per draw: the claim decided at every look (claims.decide's rule),
    stopping at its first verdict; a comparison decided earlier stops raising its rows."""
    m = len(claim.pairs)
    codes = []
    for a, b, rel, paper in claim.pairs:
        rec = Q.looks(x[:, a], x[:, b], design, test=test, comparisons=m)
        codes.append(Q.outcomes(rec.low, rec.high, rel, S.CLOSE_MARGIN, paper))
    grid = np.stack(codes, axis=-2)  # (draw, comparison, look)
    claim_v = Q.verdicts(grid)
    at = Q.stop(claim_v)
    verdict = np.take_along_axis(claim_v, at[:, None], -1)[:, 0]
    looks = np.asarray(design.looks)
    decided = np.isin(grid, (Q.SUPPORTS, Q.CONTRADICTS))
    first = np.where(decided.any(-1), decided.argmax(-1), grid.shape[-1] - 1)  # (draw, comparison)
    last = np.minimum(first, at[:, None])  # the look each comparison stopped raising its rows at
    seeds = np.zeros((x.shape[0], len(claim.means)), dtype=int)
    for j, (a, b, _, _) in enumerate(claim.pairs):
        for r in (a, b):
            seeds[:, r] = np.maximum(seeds[:, r], looks[last[:, j]])
    return verdict, seeds.mean(axis=1)


# ---- the old procedure: today's --resolve, vectorised -----------------------------------------------
def _welch(x: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std of x[d, :n[d]] per draw."""
    mask = np.arange(x.shape[1])[None, :] < n[:, None]
    mean = np.where(mask, x, 0).sum(1) / n
    var = (np.where(mask, x - mean[:, None], 0) ** 2).sum(1) / (n - 1)
    return mean, np.sqrt(var)


def _old_need(effect: float, sa, sb, relation: str, level: float, max_seeds: int) -> np.ndarray:
    """stats.seeds_needed at Welch, vectorised up to max_seeds (beyond: max_seeds + 1, as is 'None')."""
    from scipy import stats as sps

    over = np.full(sa.shape, max_seeds + 1)
    shift = effect + S.CLOSE_MARGIN if relation == "close" else effect
    if (effect == 0 and relation != "close") or (relation == "close" and shift <= 0):
        return over

    def power(n: int, idx: np.ndarray) -> np.ndarray:  # stats.power_at, Welch with n seeds per row
        va, vb = sa[idx] ** 2 / n, sb[idx] ** 2 / n
        se = np.sqrt(va + vb)
        with np.errstate(invalid="ignore", divide="ignore"):
            df = np.where(se > 0, (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (n - 1)), 2 * n - 2.0)
            ncp = abs(shift) / np.where(se > 0, se, 1.0)
            return np.where(se > 0, sps.nct.sf(sps.t.ppf(1 - (1 - level) / 2, df), df, ncp), 1.0)

    need = over.copy()
    todo = np.flatnonzero(power(max_seeds, np.arange(sa.size)) >= S.POWER)  # most fail here: skip the rest
    for n in range(2, max_seeds + 1):  # the smallest n with the power (it grows with n)
        if not todo.size:
            break
        ok = power(n, todo) >= S.POWER
        need[todo[ok]] = n
        todo = todo[~ok]
    return need


def old_procedure(
    x: np.ndarray,
    claim: Claim,
    max_seeds: int,
    *,
    effect: float | None = None,
    one_at_a_time: bool = False,
    first: int = FIRST,
    level: float = S.LEVEL,
) -> tuple[np.ndarray, np.ndarray]:
    """(verdict code, seeds per row) per draw under today's `--resolve` policy: every round each comparison
    is decided by Welch at `level` on the seeds its rows have; an unresolved claim stops when an open
    interval excludes the size sought (futility) or its power estimate (80%) exceeds --max-seeds, else its
    open rows rise to that estimate (at least one more seed). `one_at_a_time`: one more seed a round, no
    estimate, no futility stop."""
    from scipy import stats as sps

    d, rows, _ = x.shape
    n = np.full((d, rows), first)
    live = np.ones(d, bool)
    verdict = np.zeros(d, int)
    while live.any():
        outs, opened, stop, needs = [], np.zeros((d, rows), bool), ~live, []
        for a, b, rel, paper in claim.pairs:
            (ma, sa), (mb, sb) = _welch(x[:, a], n[:, a]), _welch(x[:, b], n[:, b])
            va, vb = sa**2 / n[:, a], sb**2 / n[:, b]
            se = np.sqrt(va + vb)
            with np.errstate(invalid="ignore", divide="ignore"):
                df = np.where(se > 0, (va + vb) ** 2 / (va**2 / (n[:, a] - 1) + vb**2 / (n[:, b] - 1)), 2.0)
            half = np.where(se > 0, sps.t.ppf(1 - (1 - level) / 2, df) * se, 0.0)
            low, high = ma - mb - half, ma - mb + half
            bound = -S.CLOSE_MARGIN if rel == "close" else 0.0
            out = np.where(low > bound, Q.SUPPORTS, np.where(high < bound, Q.CONTRADICTS, Q.OPEN))
            outs.append(out)
            is_open = out == Q.OPEN
            opened[:, a] |= is_open
            opened[:, b] |= is_open
            if not one_at_a_time:
                size = effect if effect is not None else paper
                if rel == "beats" and size != 0:  # the futility stop
                    stop |= is_open & ((high < size) if size > 0 else (low > size))
                need = np.zeros(d, int)
                sel = is_open & live
                need[sel] = _old_need(size, sa[sel], sb[sel], rel, level, max_seeds)
                needs.append(need)
        outs = np.stack(outs)
        now = np.where(
            (outs == Q.CONTRADICTS).any(0),
            Q.CONTRADICTS,
            np.where((outs == Q.OPEN).any(0), Q.OPEN, Q.SUPPORTS),
        )
        verdict = np.where(live, now, verdict)
        want = n + 1 if one_at_a_time else np.maximum(np.max(needs, axis=0)[:, None], n + 1)
        target = np.where(opened, want, n)
        live = live & (now == Q.OPEN) & ~stop & (target.max(1) <= max_seeds)
        n = np.where(live[:, None], target, n)
    return verdict, n.mean(axis=1)


# ---- the tables ----------------------------------------------------------------------------------
@dataclass
class Rates:
    false_null: float  # supported or contradicted, every row equal
    smaller_null: float  # smaller than the paper's, every row equal (a right verdict there)
    seeds_null: float
    supported: float  # under the paper's differences (power)
    wrong_alt: float  # contradicted or smaller under the paper's differences
    seeds_alt: float


def rates(procedure, claim: Claim, rho: float, draws: int, seed: int, max_seeds: int, alt: bool = True) -> Rates:
    """The procedure's rates on `draws` claims under the null and (alt) under the paper's differences."""
    rng = np.random.default_rng(seed)
    v0, n0 = procedure(draw(claim, True, rho, draws, max_seeds, rng), claim)
    v1, n1 = procedure(draw(claim, False, rho, draws, max_seeds, rng), claim) if alt else (v0[:0], n0[:0])
    return Rates(
        float(np.isin(v0, (Q.SUPPORTS, Q.CONTRADICTS)).mean()),
        float((v0 == Q.SMALLER).mean()),
        float(n0.mean()),
        float((v1 == Q.SUPPORTS).mean()) if alt else math.nan,
        float(np.isin(v1, (Q.CONTRADICTS, Q.SMALLER)).mean()) if alt else math.nan,
        float(n1.mean()) if alt else math.nan,
    )


def new(design: Q.Design, test: str):
    return lambda x, claim: new_procedure(x, claim, design, test)


def old(max_seeds: int, **kw):
    return lambda x, claim: old_procedure(x, claim, max_seeds, **kw)


def design_of(spending: str, param: float | None, growth: float, max_seeds: int) -> Q.Design:
    looks = tuple(range(FIRST, max_seeds + 1)) if growth == 1.0 else Q.schedule(FIRST, max_seeds, growth)
    return Q.Design(looks, S.LEVEL, spending, param)


def null_line(claims: list[Claim], draws: int, seed: int, max_seeds: int, test: str = "welch") -> float:
    """The chosen design's false-resolution rate under the null: the worst over the manifold claims, the
    issue's one-comparison claim and CORRELATIONS."""
    spending, param, growth = next((s, p, g) for label, s, p, g in CANDIDATES if label == CHOSEN)
    proc = new(design_of(spending, param, growth, max_seeds), test)
    return max(
        rates(proc, c, rho, draws, seed + i, max_seeds, alt=False).false_null
        for i, c in enumerate([one_comparison(), *claims])
        for rho in CORRELATIONS
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_claims")
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--max-seeds", type=int, default=MAX_SEEDS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    claims = manifold_claims()
    d, ms, sd = args.draws, args.max_seeds, args.seed
    mcse = math.sqrt(0.05 * 0.95 / d)
    print(
        f"claims benchmark: {d} draws per claim and setting (Monte-Carlo s.e. {mcse:.4f} at a rate of 0.05), "
        f"{FIRST} seeds per row at the start, --max-seeds {ms}, level {S.LEVEL}; spreads: the mini grid's "
        f"(3 seeds); correlation between rows at equal seeds: {', '.join(map(str, CORRELATIONS))}\n"
    )
    print("check of the simulator, the issue's setup (one comparison, equal means, spread 0.5, Welch, rho 0):")
    for label, proc, claim in (
        ("old --resolve, size sought 0.5", old(ms), one_comparison(effect=0.5)),
        ("old --resolve, size sought 1.0", old(ms), one_comparison(effect=1.0)),
        ("old, one more seed a round", old(ms, one_at_a_time=True), one_comparison()),
    ):
        r = rates(proc, claim, 0.0, d, sd, ms)
        print(f"  {label:<34} false resolution {r.false_null:.3f}, {r.seeds_null:.1f} seeds per row")
    print()
    head = (
        f"{'procedure':<28}{'test':<8}{'rho':>4} | {'null: false':>11} {'worst':>6} {'smaller':>8} {'seeds':>6} |"
        f" {'paper: supported':>16} {'wrong':>6} {'seeds':>6}"
    )
    print("every design, mean over the 10 manifold claims (worst: the claim with the highest false rate):")
    print(head)
    procs = [("old --resolve", "welch", old(ms))]
    procs += [
        (label, test, new(design_of(sp, par, g, ms), test))
        for label, sp, par, g in CANDIDATES
        for test in ("welch", "paired")
        if not (sp == "mixture" and test == "paired")  # the mixture is on the per-seed differences anyway
    ]
    per_claim: dict[str, dict[float, list[Rates]]] = {}
    for label, test, proc in procs:
        for rho in CORRELATIONS:
            rs = [rates(proc, c, rho, d, sd + i, ms) for i, c in enumerate(claims)]
            if label in ("old --resolve", CHOSEN) and test == "welch":
                per_claim.setdefault(label, {})[rho] = rs
            print(
                f"{label:<28}{test:<8}{rho:>4} | {np.mean([r.false_null for r in rs]):>11.4f}"
                f" {max(r.false_null for r in rs):>6.3f} {np.mean([r.smaller_null for r in rs]):>8.3f}"
                f" {np.mean([r.seeds_null for r in rs]):>6.2f} | {np.mean([r.supported for r in rs]):>16.3f}"
                f" {np.mean([r.wrong_alt for r in rs]):>6.3f} {np.mean([r.seeds_alt for r in rs]):>6.2f}"
            )
    print(f"\nper claim, Welch: old --resolve vs the new procedure ({CHOSEN})")
    print(
        f"{'claim':<16}{'m':>2}{'rho':>5} | old: {'false':>6} {'supported':>9} {'seeds':>6} |"
        f" new: {'false':>6} {'smaller':>7} {'supported':>9} {'wrong':>6} {'seeds0':>6} {'seeds1':>6}"
    )
    for rho in CORRELATIONS:
        for c, o, n in zip(claims, per_claim["old --resolve"][rho], per_claim[CHOSEN][rho]):
            print(
                f"{c.id:<16}{len(c.pairs):>2}{rho:>5} | {o.false_null:>11.4f} {o.supported:>9.3f} {o.seeds_alt:>6.2f}"
                f" | {n.false_null:>11.4f} {n.smaller_null:>7.3f} {n.supported:>9.3f} {n.wrong_alt:>6.3f}"
                f" {n.seeds_null:>6.2f} {n.seeds_alt:>6.2f}"
            )
    x = null_line(claims, d, sd, ms)
    took = time.perf_counter() - t0
    print(f"\n(the worst over the one-comparison claim and the manifold claims, rho {CORRELATIONS}; {took:.0f} s)")
    print(f"false resolution under the null: {x:.4f} (level {S.LEVEL})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
