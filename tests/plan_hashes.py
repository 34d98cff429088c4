"""The content hashes of the paper's grid (Tables 2-7, Figure 4) per scale and recipe, 3 seeds.

`python -m tests.plan_hashes` rewrites tests/data/plan_hashes.json from the current code; it was written
once before the method registry (issue 13) and test_plan_hashes.py checks the code still plans the same
runs, so stores trained before stay valid. Regenerate it only when an issue requires the hashes to change.
"""

from __future__ import annotations

import json
from pathlib import Path

FIXTURE = Path(__file__).parent / "data" / "plan_hashes.json"
SCALES = ("smoke", "mini", "paper")
RECIPES = ("paper-mean", "paper-sum", "released")
TABLES = "2,3,4,5,6,7,fig4"
SEEDS = 3


def plan_hashes(scale: str, recipe: str) -> dict:
    """{"rows": {"t2.r1": [hash per seed]}, "runs": {hash: [role, deps...]}} of one scale and recipe."""
    from orchestrator.plan import make_plan

    plan = make_plan(scale, TABLES, SEEDS, recipe)
    rows = {}
    for t in plan.tables:
        for i in range(len(t.rows)):
            rows[t.row_key(i)] = plan.row_hashes[(t.table, i)]
    runs = {r.hash: [r.role, *r.deps] for r in plan.runs}
    return {"rows": rows, "runs": runs}


def all_hashes() -> dict:
    return {f"{s}/{r}": plan_hashes(s, r) for s in SCALES for r in RECIPES}


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(all_hashes(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
