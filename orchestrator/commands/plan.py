"""`kdgrid plan`: the planned runs of a grid, deduplicated, with their MLflow state (and, with --dump, every
run's resolved spec)."""

from __future__ import annotations

from orchestrator.commands.options import grid_options
from orchestrator.plan import dump_plan, print_plan, run_states


def run(args) -> int:
    plan = grid_options(args).plan()
    states, note = run_states(plan, args.tracking_uri)
    print_plan(plan, states, note)
    if args.dump:
        out = dump_plan(plan, args.dump)
        print(f"wrote {len(plan.runs)} specs and plan.yaml to {out}")
    return 0
