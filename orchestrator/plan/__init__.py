"""The plan: every (table row x seed) of the grid resolved to an ExperimentSpec, deduplicated by content hash.

A student run's spec is the scale's defaults (models, data, student recipe) <- the named recipe (rows that
take one) <- the row's overrides (terms, alpha, beta, k, blocks); seeds are 0..N-1. Rows of different
tables that resolve to the same spec (same content hash) are trained once: the paper's shared rows
(CaiT-S24 -> DeiT-Tiny manifold in Tables 2-6 and Figure 4, Table 6's k=0 = Table 3's L_ci + L_cp, Table
7's manifold rows = Table 2's, Figure 4's hard curve = Table 2's row) merge, nothing else does.

Teachers a scale trains (`source: train`) are planned runs too: role teacher, one fixed seed, trained once
and reused by every student and seed; they are the students' `deps`, and a student's teacher is
`source: run, run: <the teacher run's hash>`.

Display metadata (not hashed): `name`, `scale`, `recipe_name` and the tags. `recipe_name` is the named
recipe for rows that take one, and otherwise what the run is whatever `--recipe` says: "hard" (DeiT's hard
distillation, `hard` in experiments/recipes.yaml), "none" (no distillation), "vitkd", ... or "teacher".

Modules: `model` (Plan, PlannedRun, RowRef), `specs` (a row to its spec, problems located), `pipeline`
(make_plan's steps), `devices` (world size and accumulation), `describe`, `output` (print, dump),
`status` (what the tracking store has).
"""

from __future__ import annotations

from orchestrator.plan.describe import batch_line, describe
from orchestrator.plan.devices import on_devices, world_size
from orchestrator.plan.model import Plan, PlannedRun, RowRef
from orchestrator.plan.output import STATE_STYLE, dump_plan, print_plan
from orchestrator.plan.pipeline import make_plan
from orchestrator.plan.status import run_states

__all__ = [
    "STATE_STYLE",
    "Plan",
    "PlannedRun",
    "RowRef",
    "batch_line",
    "describe",
    "dump_plan",
    "make_plan",
    "on_devices",
    "print_plan",
    "run_states",
    "world_size",
]
