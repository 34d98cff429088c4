"""`kdgrid reproduce --resolve`: after the grid, add seeds to the rows of unresolved claims, and only to
those, until every claim is resolved, no claim left can resolve within the budget (CPU-hours, or
`--max-seeds` per row), or the budget is spent.

Each round: the report decides the claims; `report.decide.next_round` (pure) says which rows get how many
seeds; those row x seed pairs are planned (content hashes: a row shared by several tables is one run, new
seeds of students share their teachers and train as cohorts) and launched with the command's own launch
options; what they cost is measured from the `cost.*` metrics the engine logs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from orchestrator.commands.options import (
    ClaimOptions,
    GridOptions,
    ResolveOptions,
    claim_options,
    grid_options,
    launch_options,
)
from orchestrator.commands.publish import deliver
from orchestrator.launch.execution import execute, summarize
from orchestrator.launch.options import LaunchOptions
from orchestrator.report.decide import Step, next_round
from orchestrator.tracking import grid_run
from orchestrator.tracking.spent import run_cpu_s

RESOLVED = "every claim is resolved"
OUT_OF_BUDGET = "budget spent"
CANNOT = "no unresolved claim can resolve within the budget left and --max-seeds"
NO_PROGRESS = "the runs added in the last round did not finish"
ROUND_LIMIT = "the limit on rounds"


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
class Resolution:
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


def run(args) -> int:
    console = Console(soft_wrap=True)
    grid, opts, claims = grid_options(args), launch_options(args, wait=True), claim_options(args)
    budget = ResolveOptions(budget_cpu_h=args.budget_cpu_hours, max_seeds=args.max_seeds)
    plan, report, resolution = resolve(grid, opts, claims, budget, console)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"resolve": out / "resolve.md", "resolve-json": out / "resolve.json"}
    extra["resolve-json"].write_text(json.dumps(asdict(resolution), indent=2))
    extra["resolve"].write_text("\n".join(resolution.lines()) + "\n")
    deliver(plan, opts.tracking_uri, report, out, "reproduce", console, extra)
    for line in resolution.lines():
        console.print(line, highlight=False, markup=False)
    return 0


def resolve(grid: GridOptions, opts: LaunchOptions, claims: ClaimOptions, budget: ResolveOptions, console):
    """Train the grid, then add seeds round by round until the claims resolve or the budget says stop.
    Returns (the final plan, its report, the Resolution)."""
    t0 = time.perf_counter()
    launches = Launches(opts, console)
    plan = grid.plan()
    launches.train(plan)
    report = _report(plan, grid, claims, launches.uri)
    before = {c.id: c.verdict for c in report.claims}
    row_seeds: dict[str, int] = {}
    rounds: list[Round] = []
    for n in range(1, budget.max_rounds + 1):
        left = None if budget.budget_cpu_h is None else (budget.budget_cpu_h - sum(r.cpu_h for r in rounds)) * 3600
        step = next_round(report, plan, launches.cpu_s(plan, [r.hash for r in plan.students]), left, budget.max_seeds)
        reason = _stop(step, left, console)
        if reason:
            break
        row_seeds.update(step.targets)
        new_plan = grid.plan(row_seeds=row_seeds)
        done, measured = _round(n, step, plan, new_plan, launches)
        rounds.append(done)
        plan, report = new_plan, _report(new_plan, grid, claims, launches.uri)
        if not measured:
            reason = NO_PROGRESS
            break
    else:
        reason = ROUND_LIMIT
    resolution = Resolution(
        reason,
        rounds,
        sum(r.cpu_h for r in rounds),
        budget.budget_cpu_h,
        before,
        {c.id: c.verdict for c in report.claims},
        {c.id: c.seeds_used for c in report.claims},
        time.perf_counter() - t0,
    )
    return plan, report, resolution


class Launches:
    """The command's launches, every one with the same options, and what their runs cost."""

    def __init__(self, opts: LaunchOptions, console):
        self.opts, self.console, self.uri = opts, console, str(opts.tracking_uri)
        self.cache: dict[str, float] = {}  # CPU-s of finished runs: it does not change

    def train(self, plan) -> None:
        grid_run.prepare(plan, self.uri, "reproduce")  # new runs nest under the grid's run
        summarize(execute(plan, self.opts, self.console))

    def cpu_s(self, plan, hashes) -> dict[str, float]:
        return run_cpu_s(self.uri, plan.scale, hashes, self.cache)


def _stop(step: Step, left_s: float | None, console) -> str | None:
    """Why the loop stops before this step (None: it goes on), saying why each skipped claim is left."""
    if step.done:
        return RESOLVED
    if left_s is not None and left_s <= 0:
        return OUT_OF_BUDGET
    for cid, why in step.skipped.items():
        console.print(f"--resolve: {cid} left unresolved: {why}", highlight=False)
    return None if step.targets else CANNOT


def _round(n: int, step: Step, plan, new_plan, launches: Launches) -> tuple[Round, dict[str, float]]:
    """Train the runs `new_plan` adds to `plan`. Returns the round and the added runs' measured CPU-s."""
    known = {p.hash for p in plan.runs}
    added = [r for r in new_plan.runs if r.hash not in known]
    launches.console.print(
        f"--resolve round {n}: for {', '.join(step.chosen)}: {len(added)} run(s), estimated "
        f"{step.cost_s / 3600:.4f} CPU-h",
        highlight=False,
    )
    t1 = time.perf_counter()
    launches.train(new_plan)
    measured = launches.cpu_s(new_plan, [r.hash for r in added])
    seeds_now = {hs[0]: len(hs) for hs in plan.row_hashes.values()}
    by_row = {_label(new_plan, k): list(range(seeds_now[k], target)) for k, target in step.targets.items()}
    cpu_h = sum(measured.values()) / 3600
    wall = time.perf_counter() - t1
    return Round(n, step.chosen, step.skipped, by_row, len(added), step.cost_s / 3600, cpu_h, wall), measured


def _report(plan, grid: GridOptions, claims: ClaimOptions, uri: str):
    return claims.report(plan, uri, grid.overrides)


def _label(plan, key: str) -> str:
    rows = [f"{'fig4' if t == 'fig4' else 't' + t}.r{i + 1}" for (t, i), hs in plan.row_hashes.items() if hs[0] == key]
    return "=".join(rows)
