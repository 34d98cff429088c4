"""`kdgrid reproduce --resolve`: after the grid, add seeds to the rows of unresolved claims, and only to
those, until every claim is resolved, the power estimate says none left can resolve within the budget
(CPU-hours, or `--max-seeds` per row), or the budget is spent.

Each round: decide the claims (the report's test, orchestrator/report/claims.py); for each unresolved
claim, the seeds per row that would resolve a difference of the paper's size (or `--effect`) at the
measured spread (none for a claim whose interval already excludes that difference: it is smaller, and
seeds would only narrow the interval around it); cheapest claims first, raise their open rows to that many
seeds (at least one more) while the estimated cost (the rows' mean CPU-seconds per seed, from the `cost.*` metrics the engine
logs) fits the budget left; plan those row x seed pairs (content hashes: a row shared by several tables
is one run, new seeds of students share their teachers and train as cohorts), launch them, and measure
what they cost. `next_step` is the decision, pure; `resolve` the loop around it.

A row is keyed by its seed-0 run's hash (`make_plan(row_seeds=...)`), so the rows that stand for the same
run (the CaiT-S24 -> DeiT-Tiny manifold row of Tables 2-6 and Figure 4) get their seeds once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESOLVED = "every claim is resolved"
OUT_OF_BUDGET = "budget spent"
CANNOT = "no unresolved claim can resolve within the budget left and --max-seeds"
NO_PROGRESS = "the runs added in the last round did not finish"


@dataclass(frozen=True)
class ClaimNeed:
    """What the decision needs to know of one claim."""

    id: str
    resolved: bool
    rows: tuple[str, ...]  # row keys of its open comparisons (seed-0 hashes)
    seeds_needed: int | None  # per row; None: more than the power calculation's limit
    excluded: bool = False  # an interval already rules out the size sought: seeds would not resolve it


@dataclass
class Step:
    targets: dict[str, int] = field(default_factory=dict)  # row key -> seeds it should have
    chosen: list[str] = field(default_factory=list)  # claims seeds are added for
    skipped: dict[str, str] = field(default_factory=dict)  # claim -> why not
    cost_s: float = 0.0  # estimated CPU-seconds of the added runs


def claim_cost(
    need: ClaimNeed, seeds_now: dict[str, int], cost_per_seed: dict[str, float], targets: dict[str, int] | None = None
) -> tuple[dict[str, int], float]:
    """(row -> seeds, estimated CPU-s) to bring a claim's open rows to its estimate (at least one more
    seed each), on top of `targets` already chosen."""
    targets = targets or {}
    want = {r: max(need.seeds_needed or 0, seeds_now[r] + 1) for r in need.rows}
    cost = sum(max(0, n - max(seeds_now[r], targets.get(r, 0))) * cost_per_seed[r] for r, n in want.items())
    return want, cost


def next_step(
    needs: Iterable[ClaimNeed],
    seeds_now: dict[str, int],
    cost_per_seed: dict[str, float],
    budget_left_s: float | None,
    max_seeds: int,
) -> Step:
    """Which rows get how many seeds this round. Pure."""
    step = Step()
    open_needs = [n for n in needs if not n.resolved]
    for n in open_needs:
        if n.excluded:
            step.skipped[n.id] = (
                "its interval already excludes a difference of the size sought: it is smaller, "
                "so more seeds would not resolve it (--effect sets a smaller size)"
            )
        elif n.seeds_needed is None:
            step.skipped[n.id] = "a difference of this size needs more seeds than the power calculation allows"
        elif not n.rows:
            step.skipped[n.id] = "no row to add seeds to"
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


# ---- the loop -------------------------------------------------------------------------------------
def row_keys(plan: Any) -> dict[tuple[str, int], str]:
    """(table, row index) -> the row's key: its seed-0 run's hash."""
    return {k: v[0] for k, v in plan.row_hashes.items() if v}


def needs_of(report: Any, plan: Any) -> list[ClaimNeed]:
    from orchestrator.report.claims import INCOMPLETE

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


def run_costs(uri: str, scale: str, hashes: Iterable[str], cache: dict[str, float] | None = None) -> dict[str, float]:
    """CPU-seconds each finished run logged (`cost.setup_cpu_s` + every epoch's `cost.cpu_s`)."""
    from trainer import tracking

    cache = {} if cache is None else cache
    want = [h for h in hashes if h not in cache]
    if want:
        c = tracking.client(uri)
        for h, run in tracking.runs_by_hash(c, scale, want).items():
            if run.info.status != "FINISHED":
                continue
            cache[h] = sum(
                m.value
                for key in ("cost.setup_cpu_s", "cost.cpu_s")
                for m in tracking.retry(c.get_metric_history, run.info.run_id, key)
            )
    return {h: cache[h] for h in hashes if h in cache}


def row_state(plan: Any, costs: dict[str, float]) -> tuple[dict[str, int], dict[str, float]]:
    """(row key -> planned seeds, row key -> mean CPU-s per seed); rows with no measured run get the mean
    of the student runs that have one."""
    seeds, cost = {}, {}
    for (t, i), hs in plan.row_hashes.items():
        key = hs[0]
        seeds[key] = len(hs)
        measured = [costs[h] for h in hs if h in costs]
        if measured:
            cost[key] = sum(measured) / len(measured)
    student = [costs[r.hash] for r in plan.students if r.hash in costs]
    fallback = sum(student) / len(student) if student else 0.0
    return seeds, {k: cost.get(k, fallback) for k in seeds}


@dataclass
class Round:
    n: int
    chosen: list[str]
    skipped: dict[str, str]
    added: dict[str, list[int]]  # row label -> seeds added
    runs: int  # new runs trained
    estimated_cpu_h: float
    cpu_h: float  # measured
    wall_s: float


@dataclass
class Outcome:
    reason: str
    rounds: list[Round]
    spent_cpu_h: float
    budget_cpu_h: float | None
    verdicts_before: dict[str, str]
    verdicts_after: dict[str, str]
    seeds_after: dict[str, int]  # claim -> fewest seeds per row
    wall_s: float

    def lines(self) -> list[str]:
        out = [
            f"--resolve: stopped: {self.reason}; {len(self.rounds)} round(s), "
            f"{sum(r.runs for r in self.rounds)} run(s) added, {self.spent_cpu_h:.4f} CPU-h spent"
            + (f" of {self.budget_cpu_h:g}" if self.budget_cpu_h is not None else "")
            + f", {self.wall_s:.0f} s wall"
        ]
        for r in self.rounds:
            out.append(
                f"  round {r.n}: for {', '.join(r.chosen)}: "
                + "; ".join(f"{row} +seeds {','.join(map(str, s))}" for row, s in r.added.items())
                + f" ({r.runs} runs, estimated {r.estimated_cpu_h:.4f} CPU-h, measured {r.cpu_h:.4f}, {r.wall_s:.0f} s)"
            )
        for cid, before in self.verdicts_before.items():
            after = self.verdicts_after.get(cid, before)
            out.append(f"  {cid}: {before} -> {after} ({self.seeds_after.get(cid, 0)} seeds per row)")
        return out


def _label(plan: Any, key: str) -> str:
    rows = [f"{'fig4' if t == 'fig4' else 't' + t}.r{i + 1}" for (t, i), hs in plan.row_hashes.items() if hs[0] == key]
    return "=".join(rows)


def resolve(
    *,
    scale: str,
    tables: str,
    seeds: int,
    recipe: str,
    overrides: list[str],
    tracking_uri: str,
    budget_cpu_h: float | None,
    max_seeds: int,
    effect: float | None = None,
    test: str = "welch",
    level: float = 0.95,
    launch_kw: dict | None = None,
    console=None,
    max_rounds: int = 50,
) -> tuple[Any, Any, Outcome]:
    """Train the grid, then add seeds until the claims resolve or the budget says stop.
    Returns (the final plan, its report, the outcome)."""
    from rich.console import Console

    from orchestrator.launch import execute, summarize
    from orchestrator.plan import make_plan
    from orchestrator.report.build import build_report

    console = console or Console(soft_wrap=True)
    launch_kw = dict(launch_kw or {})
    t0 = time.perf_counter()
    row_seeds: dict[str, int] = {}
    plan = make_plan(scale, tables, seeds, recipe, overrides)
    outcomes, ctx, items = execute(plan, tracking_uri=tracking_uri, console=console, **launch_kw)
    summarize(outcomes, ctx, items)
    cache: dict[str, float] = {}
    rounds: list[Round] = []
    spent = 0.0
    report = build_report(plan, tracking_uri, tuple(overrides), test=test, level=level, effect=effect)
    before = {c.id: c.verdict for c in report.claims}
    reason = RESOLVED
    for n in range(1, max_rounds + 1):
        needs = needs_of(report, plan)
        if all(x.resolved for x in needs):
            reason = RESOLVED
            break
        left = None if budget_cpu_h is None else budget_cpu_h * 3600 - spent
        if left is not None and left <= 0:
            reason = OUT_OF_BUDGET
            break
        seeds_now, cost = row_state(plan, run_costs(tracking_uri, plan.scale, [r.hash for r in plan.students], cache))
        step = next_step(needs, seeds_now, cost, left, max_seeds)
        for cid, why in step.skipped.items():
            console.print(f"--resolve: {cid} left unresolved: {why}", highlight=False)
        if not step.targets:
            reason = CANNOT
            break
        row_seeds.update(step.targets)
        new_plan = make_plan(scale, tables, seeds, recipe, overrides, row_seeds=row_seeds)
        added = [r for r in new_plan.runs if r.hash not in {p.hash for p in plan.runs}]
        console.print(
            f"--resolve round {n}: for {', '.join(step.chosen)}: {len(added)} run(s), estimated "
            f"{step.cost_s / 3600:.4f} CPU-h",
            highlight=False,
        )
        t1 = time.perf_counter()
        outcomes, ctx, items = execute(new_plan, tracking_uri=tracking_uri, console=console, **launch_kw)
        summarize(outcomes, ctx, items)
        measured = run_costs(tracking_uri, new_plan.scale, [r.hash for r in added], cache)
        spent += sum(measured.values())
        by_row: dict[str, list[int]] = {}
        for k, target in step.targets.items():
            by_row[_label(new_plan, k)] = list(range(seeds_now[k], target))
        rounds.append(
            Round(
                n,
                step.chosen,
                step.skipped,
                by_row,
                len(added),
                step.cost_s / 3600,
                sum(measured.values()) / 3600,
                time.perf_counter() - t1,
            )
        )
        plan = new_plan
        report = build_report(plan, tracking_uri, tuple(overrides), test=test, level=level, effect=effect)
        if not measured:
            reason = NO_PROGRESS
            break
    outcome = Outcome(
        reason,
        rounds,
        spent / 3600,
        budget_cpu_h,
        before,
        {c.id: c.verdict for c in report.claims},
        {c.id: c.seeds_used for c in report.claims},
        time.perf_counter() - t0,
    )
    return plan, report, outcome


def cmd_resolve(args) -> int:
    from rich.console import Console

    from orchestrator.launch import absolute_uri
    from orchestrator.report import render, write_reports

    console = Console(soft_wrap=True)
    uri = absolute_uri(args.tracking_uri)
    launch_kw = dict(
        launcher=args.launcher,
        work=Path(args.workdir).expanduser().resolve(),
        workers=args.workers,
        threads=args.threads,
        max_cohort=args.max_cohort,
        cohorts=not args.no_cohorts,
        wait=True,
        ray_address=args.ray_address,
        slurm_config=args.slurm_config,
    )
    plan, report, outcome = resolve(
        scale=args.scale,
        tables=args.tables,
        seeds=args.seeds,
        recipe=args.recipe,
        overrides=list(args.overrides),
        tracking_uri=uri,
        budget_cpu_h=args.budget_cpu_hours,
        max_seeds=args.max_seeds,
        effect=args.effect,
        test=args.test,
        level=args.level,
        launch_kw=launch_kw,
        console=console,
    )
    out = Path(args.out)
    write_reports(plan, uri, out, formats=("md", "html", "latex"), report=report)
    (out / "resolve.json").write_text(json.dumps(asdict(outcome), indent=2))
    (out / "resolve.md").write_text("\n".join(outcome.lines()) + "\n")
    print(render.markdown(report))
    for line in outcome.lines():
        console.print(line, highlight=False, markup=False)
    return 0


def added_seeds(
    scale: str, tables: str, seeds: int, recipe: str, overrides: list[str], tracking_uri: str, max_seeds: int = 20
) -> dict[str, int]:
    """{row key: seeds} for the rows whose seeds 0..n-1 (n > `seeds`) are all finished in MLflow: what
    `--resolve` added, so that `kdgrid report --added-seeds` counts them."""
    from orchestrator.plan import make_plan
    from trainer import tracking

    wide = make_plan(scale, tables, max_seeds, recipe, overrides)
    found = tracking.runs_by_hash(tracking.client(tracking_uri), wide.scale, [r.hash for r in wide.runs])
    done = {h for h, run in found.items() if tracking.run_state(run) == "finished"}
    out = {}
    for hs in wide.row_hashes.values():
        n = 0
        while n < len(hs) and hs[n] in done:
            n += 1
        if n > seeds:
            out[hs[0]] = max(out.get(hs[0], 0), n)
    return out
