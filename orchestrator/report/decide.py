"""`--resolve`'s decision, pure: which rows get how many more seeds this round, for which claims.

`next_round` is the one boundary the loop (orchestrator/commands/resolve.py) calls: given the report (its
claims, decided by the sequential design, orchestrator/report/sequential.py) and what the finished runs cost,
it returns a `Step`. A claim with a verdict, or at its design's last look, gets no more seeds; every other
claim's open rows are raised to its next look, never to a number read off the results (that would break the
level the design holds); cheapest claims first, while the estimated cost (the rows' mean CPU-seconds per
seed) fits the budget left. Stopping a claim early, for its verdict or the budget, only removes looks.

A row is keyed by its seed-0 run's hash (`make_plan(row_seeds=...)`), so the rows that stand for the same
run (the CaiT-S24 -> DeiT-Tiny manifold row of Tables 2-6 and Figure 4) get their seeds once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.report.claims import INCOMPLETE


@dataclass(frozen=True)
class ClaimNeed:
    """What the decision needs to know of one claim."""

    id: str
    resolved: bool
    rows: tuple[str, ...]  # row keys of its open comparisons (seed-0 hashes)
    seeds_needed: int | None  # per row, at the claim's next look; None: it is at its last look
    excluded: bool = False  # an interval already rules out the size sought (the old futility stop)


@dataclass
class Step:
    targets: dict[str, int] = field(default_factory=dict)  # row key -> seeds it should have
    chosen: list[str] = field(default_factory=list)  # claims seeds are added for
    skipped: dict[str, str] = field(default_factory=dict)  # claim -> why not
    cost_s: float = 0.0  # estimated CPU-seconds of the added runs
    done: bool = False  # every claim has its verdict: nothing to add


def claim_cost(
    need: ClaimNeed, seeds_now: dict[str, int], cost_per_seed: dict[str, float], targets: dict[str, int] | None = None
) -> tuple[dict[str, int], float]:
    """(row -> seeds, estimated CPU-s) to bring a claim's open rows to its estimate (at least one more
    seed each), on top of `targets` already chosen."""
    targets = targets or {}
    want = {r: max(need.seeds_needed or 0, seeds_now[r] + 1) for r in need.rows}
    cost = sum(max(0, n - max(seeds_now[r], targets.get(r, 0))) * cost_per_seed[r] for r, n in want.items())
    return want, cost


def _why_not(n: ClaimNeed) -> str | None:
    """Why seeds cannot resolve a claim, whatever the budget (None: they may)."""
    if n.excluded:
        return (
            "its interval already excludes a difference of the size sought: it is smaller, "
            "so more seeds would not resolve it (--effect sets a smaller size)"
        )
    if n.seeds_needed is None:
        return "its last look passed without a verdict (--max-seeds sets the last look, before the grid trains)"
    if not n.rows:
        return "no row to add seeds to"
    return None


def next_step(
    needs: Iterable[ClaimNeed],
    seeds_now: dict[str, int],
    cost_per_seed: dict[str, float],
    budget_left_s: float | None,
    max_seeds: int,
) -> Step:
    """Which rows get how many seeds this round."""
    step = Step()
    open_needs = [n for n in needs if not n.resolved]
    for n in open_needs:
        if (why := _why_not(n)) is not None:
            step.skipped[n.id] = why
    candidates = [n for n in open_needs if n.id not in step.skipped]
    candidates.sort(key=lambda n: (claim_cost(n, seeds_now, cost_per_seed)[1], n.id))
    for n in candidates:
        want, cost = claim_cost(n, seeds_now, cost_per_seed, step.targets)
        top = max(want.values())
        if top > max_seeds:
            step.skipped[n.id] = f"needs {top} seeds per row, over --max-seeds {max_seeds}"
            continue
        if budget_left_s is not None and step.cost_s + cost > budget_left_s:
            step.skipped[n.id] = (
                f"needs {top} seeds per row: ~{cost / 3600:.4f} CPU-h, "
                f"{max(0.0, budget_left_s - step.cost_s) / 3600:.4f} left"
            )
            continue
        for r, k in want.items():
            step.targets[r] = max(step.targets.get(r, seeds_now[r]), k)
        step.cost_s += cost
        step.chosen.append(n.id)
    return step


def row_keys(plan: Any) -> dict[tuple[str, int], str]:
    """(table, row index) -> the row's key: its seed-0 run's hash."""
    return {k: v[0] for k, v in plan.row_hashes.items() if v}


def needs_of(report: Any, plan: Any) -> list[ClaimNeed]:
    keys = row_keys(plan)
    return [
        ClaimNeed(
            c.id,
            c.resolved,
            tuple(dict.fromkeys(keys[r] for r in c.open_rows if r in keys)),
            c.seeds_needed,
            c.effect_excluded,
        )
        for c in report.claims
        if c.verdict != INCOMPLETE
    ]


def row_state(plan: Any, costs: dict[str, float]) -> tuple[dict[str, int], dict[str, float]]:
    """(row key -> planned seeds, row key -> mean CPU-s per seed); rows with no measured run get the mean
    of the student runs that have one."""
    seeds, cost = {}, {}
    for hs in plan.row_hashes.values():
        key = hs[0]
        seeds[key] = len(hs)
        measured = [costs[h] for h in hs if h in costs]
        if measured:
            cost[key] = sum(measured) / len(measured)
    student = [costs[r.hash] for r in plan.students if r.hash in costs]
    fallback = sum(student) / len(student) if student else 0.0
    return seeds, {k: cost.get(k, fallback) for k in seeds}


def next_round(
    report: Any, plan: Any, run_cpu_s: dict[str, float], budget_left_s: float | None, max_seeds: int
) -> Step:
    """The decision `--resolve` makes each round: `report`'s claims as decided, `run_cpu_s` the CPU-seconds
    each finished run of `plan` logged. A `Step` with `done` when every claim has its verdict."""
    needs = needs_of(report, plan)
    if all(n.resolved for n in needs):
        return Step(done=True)
    seeds_now, cost = row_state(plan, run_cpu_s)
    return next_step(needs, seeds_now, cost, budget_left_s, max_seeds)
