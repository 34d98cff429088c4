"""`kdgrid reproduce --resolve`: the pure decision (which rows get how many seeds, within the budget and
--max-seeds), and the loop at the smoke scale for real: it launches with the command's own launch options
(`--schedule`, `--cost-store`); on a store holding Table 6 and Figure 4 at two seeds, a budget that pays
for one claim's seeds adds seeds to that unresolved claim's rows only, trains them (teachers shared), and
stops at the budget."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from orchestrator.commands import resolve as loop
from orchestrator.report import decide as R
from orchestrator.tracking.spent import run_cpu_s
from tests.conftest import ROOT, kdgrid


# ---- pure ----------------------------------------------------------------------------------------
def need(cid, rows, n, resolved=False):
    return R.ClaimNeed(cid, resolved, tuple(rows), n)


SEEDS = {"a": 3, "b": 3, "c": 3, "d": 3, "e": 3}
COST = {"a": 10.0, "b": 10.0, "c": 20.0, "d": 10.0, "e": 10.0}


def test_cheapest_claims_first_within_the_budget():
    needs = [need("X", "ab", 5), need("Y", "cd", 4), need("Z", "e", 6), need("done", "ab", None, resolved=True)]
    # X: +2 seeds on a, b = 40 s; Y: +1 on c (20) and d (10) = 30 s; Z: +3 on e = 30 s
    step = R.next_step(needs, SEEDS, COST, budget_left_s=65, max_seeds=10)
    assert step.chosen == ["Y", "Z"] and step.cost_s == 60
    assert step.targets == {"c": 4, "d": 4, "e": 6}
    assert "0.0014 left" in step.skipped["X"]  # 5 s left of 65 after Y and Z
    assert "done" not in step.skipped and "done" not in step.chosen
    unlimited = R.next_step(needs, SEEDS, COST, budget_left_s=None, max_seeds=10)
    assert unlimited.chosen == ["Y", "Z", "X"] and unlimited.targets["a"] == 5


def test_shared_rows_are_paid_once_and_take_the_larger_target():
    needs = [need("X", "ab", 5), need("Y", "bc", 4)]
    step = R.next_step(needs, SEEDS, COST, budget_left_s=None, max_seeds=10)
    # Y first (b +1: 10, c +1: 20 = 30 < X's 40), then X pays a +2 and b only from 4 to 5
    assert step.chosen == ["Y", "X"] and step.targets == {"b": 5, "c": 4, "a": 5}
    assert step.cost_s == 30 + 20 + 10


def test_at_least_one_more_seed_and_the_limits():
    # the estimate says 2 seeds would do, but 3 did not: one more per row
    step = R.next_step([need("X", "a", 2)], SEEDS, COST, None, max_seeds=10)
    assert step.targets == {"a": 4}
    step = R.next_step([need("X", "a", 12), need("Y", "b", None)], SEEDS, COST, None, max_seeds=10)
    assert not step.targets and "over --max-seeds 10" in step.skipped["X"] and "Y" in step.skipped
    assert not R.next_step([need("X", "a", 5, resolved=True)], SEEDS, COST, None, 10).skipped
    # an interval that already excludes the size sought: no seeds, whatever the estimate says
    step = R.next_step([R.ClaimNeed("X", False, ("a",), 4, excluded=True), need("Y", "b", 4)], SEEDS, COST, None, 10)
    assert step.chosen == ["Y"] and step.targets == {"b": 4} and "excludes" in step.skipped["X"]


def test_next_round_is_the_decision_the_loop_calls():
    """The loop's one call: done when every claim has its verdict, else the rows of the open claims raised,
    priced by the runs' measured cost per seed (rows without one: the students' mean)."""
    plan = SimpleNamespace(
        row_hashes={("6", 0): ["a0", "a1"], ("6", 1): ["b0", "b1"]},
        students=[SimpleNamespace(hash=h) for h in ("a0", "a1", "b0", "b1")],
    )

    def claim(cid, resolved, rows, need):
        verdict = "supported" if resolved else "unresolved"
        return SimpleNamespace(
            id=cid, resolved=resolved, open_rows=rows, seeds_needed=need, effect_excluded=False, verdict=verdict
        )

    done = R.next_round(SimpleNamespace(claims=[claim("X", True, [], None)]), plan, {}, None, 10)
    assert done.done and not done.targets
    report = SimpleNamespace(claims=[claim("X", True, [], None), claim("Y", False, [("6", 1)], 4)])
    step = R.next_round(report, plan, {"a0": 10.0, "a1": 12.0}, budget_left_s=None, max_seeds=10)
    assert not step.done and step.chosen == ["Y"] and step.targets == {"b0": 4}
    assert step.cost_s == pytest.approx(2 * 11.0)  # b has no measured run: the students' mean, 11 s a seed


# ---- the loop at the smoke scale --------------------------------------------------------------------
def _kdgrid(*args: str, cwd: Path, timeout: float = 900):
    """`kdgrid ARGS` in a bare environment (one thread, no inherited MLflow or Ray settings); must succeed."""
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return kdgrid(*args, cwd=cwd, timeout=timeout, env=env | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, check=True)


@pytest.mark.slow
def test_resolve_adds_seeds_to_one_unresolved_claim_and_stops_at_the_budget(tmp_path, tmp_path_factory):
    from orchestrator.plan import make_plan
    from orchestrator.report.build import build_report
    from tests.test_report import report_store
    from trainer import tracking

    base, src_uri, _ = report_store(tmp_path_factory)
    shutil.copy(base / "mlflow.db", tmp_path / "mlflow.db")
    shutil.copytree(base / "work", tmp_path / "work")  # the teachers' checkpoints
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [
        "--scale",
        "smoke",
        "--tables",
        "6,fig4",
        "--seeds",
        "2",
        "--tracking-uri",
        uri,
        "--workdir",
        str(tmp_path / "work"),
        "--workers",
        "2",
    ]
    _kdgrid("reproduce", *common, "--out", str(tmp_path / "grid"), cwd=tmp_path)  # the grid's missing run

    # Before: every claim decided with 2 seeds. The difference to resolve (--effect) is set below the
    # upper ends of one claim's open intervals, so that no interval of that claim rules it out yet (that
    # stops --resolve for a claim: tested in test_claim_stats) and few seeds would resolve it; the budget
    # pays for the cheapest unresolved claim's seeds, not for a second one's.
    plan = make_plan("smoke", "6,fig4", 2)
    paper = build_report(plan, uri, max_seeds=5)  # the design the command below fixes (--max-seeds 5)
    tops = [
        min(c.high for c in claim.comparisons if c.outcome == "unresolved")
        for claim in paper.claims
        if claim.verdict == "unresolved" and all(c.relation == "beats" for c in claim.comparisons)
    ]
    assert tops and max(tops) > 0, [c.verdict for c in paper.claims]
    effect = round(0.8 * max(tops), 4)
    report = build_report(plan, uri, effect=effect, max_seeds=5)
    needs = R.needs_of(report, plan)
    assert any(not n.resolved and not n.excluded and n.seeds_needed and n.seeds_needed <= 5 for n in needs)
    seeds, cost = R.row_state(plan, run_cpu_s(uri, "smoke", [r.hash for r in plan.students]))
    costs = sorted(
        R.claim_cost(n, seeds, cost)[1]
        for n in needs
        if not n.resolved and not n.excluded and n.seeds_needed and n.seeds_needed <= 5
    )
    budget_h = costs[0] * 1.2 / 3600
    expected = R.next_step(needs, seeds, cost, budget_h * 3600, max_seeds=5)
    assert expected.chosen and expected.cost_s <= budget_h * 3600
    # Claims are raised to their next look, so a claim whose open rows the cheapest claim's seeds already
    # cover comes at no cost (T6's two claims share rows); every other claim was left out for the budget.
    for n in needs:
        if not n.resolved and n.id not in expected.chosen:
            assert n.id in expected.skipped and "CPU-h" in expected.skipped[n.id], expected
        elif n.id in expected.chosen[1:]:
            assert R.claim_cost(n, seeds, cost, expected.targets)[1] == 0
    before = set(tracking.runs_by_hash(tracking.client(uri), "smoke"))  # every run in the store

    p = _kdgrid(
        "reproduce",
        *common,
        "--out",
        str(tmp_path / "resolved"),
        "--resolve",
        "--effect",
        str(effect),
        "--budget-cpu-hours",
        f"{budget_h:.8f}",
        "--max-seeds",
        "5",
        cwd=tmp_path,
    )
    out = json.loads((tmp_path / "resolved" / "resolve.json").read_text())
    print("\n" + (tmp_path / "resolved" / "resolve.md").read_text())  # what it added and why it stopped (-s)
    # one round: the budget pays for no second one; or the next look decided every claim (the difference
    # sought is far outside the narrower intervals of a later look)
    assert out["reason"] in (loop.OUT_OF_BUDGET, loop.CANNOT, loop.RESOLVED), p.stdout[-2000:]
    assert len(out["rounds"]) == 1
    chosen = out["rounds"][0]["chosen"]
    assert chosen == expected.chosen and all(out["verdicts_before"][c] == "unresolved" for c in chosen)

    # What MLflow holds now: the seeds the decision asked for on exactly the chosen claims' open rows.
    keys = R.row_keys(plan)
    chosen_rows = {keys[r] for c in report.claims if c.id in chosen for r in c.open_rows}
    other_rows = set(keys.values()) - chosen_rows
    assert other_rows, "a claim that uses every row shows nothing"
    assert set(expected.targets) == chosen_rows
    found = tracking.runs_by_hash(tracking.client(uri), "smoke")
    new = {h: run for h, run in found.items() if h not in before}
    wide = make_plan("smoke", "6,fig4", max(expected.targets.values()))
    added = {
        wide.row_hashes[k][s]
        for k in wide.row_hashes
        if plan.row_hashes[k][0] in chosen_rows
        for s in range(2, expected.targets[plan.row_hashes[k][0]])
    }
    assert set(new) == added
    assert all(run.info.status == "FINISHED" and int(run.data.tags[tracking.SEED]) >= 2 for run in new.values())
    assert not any(run.data.tags.get(tracking.ROLE) == "teacher" for run in new.values())  # teachers reused
    # the default recipe (no --recipe given) trained the manifold rows
    manifold = [run for run in new.values() if "manifold" in (run.info.run_name or "")]
    assert all(run.data.tags[tracking.RECIPE] == "paper-mean" for run in manifold)
    # the budget: the round's measured cost is what was spent; a second claim's seeds did not fit
    assert out["spent_cpu_h"] == pytest.approx(sum(r["cpu_h"] for r in out["rounds"])) and out["spent_cpu_h"] > 0
    # the report decides claims by the named test and counts the added seeds
    md = (tmp_path / "resolved" / "report.md").read_text()
    assert "Welch's t-test" in md and "95% sequential CI" in md
    for c in chosen:
        assert out["seeds_after"][c] == min(
            expected.targets[keys[r]] for r in next(x for x in report.claims if x.id == c).open_rows
        )
    # `kdgrid report --added-seeds` finds them again from MLflow alone
    r = _kdgrid(
        "report",
        "--scale",
        "smoke",
        "--tables",
        "6,fig4",
        "--seeds",
        "2",
        "--tracking-uri",
        uri,
        "--added-seeds",
        cwd=tmp_path,
    )
    assert re.search(rf"- {out['seeds_after'][chosen[0]]} seeds per row[:,] ", r.stdout), r.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resolve_launches_with_the_commands_schedule_and_cost_store(tmp_path, write_yaml):
    """`--resolve` hands its launches the command's launch options whole: `--schedule order` starts the
    items in plan order, and `--cost-store` prices the runs with the rates fitted to that store's cost.*
    metrics while the tracking store is still empty. One run (Figure 4's no-distillation row) each."""
    from orchestrator.launch import costs

    fig4 = yaml.safe_load((ROOT / "ablations" / "figure4.yaml").read_text())
    fig4["rows"] = [r for r in fig4["rows"] if r["curve"] == "none"]
    table = write_yaml("fig4-none.yaml", fig4)
    grid = ["--scale", "smoke", "--tables", str(table), "--workers", "1"]
    grid += ["--set", "data.train_subset=256", "--set", "data.val_subset=128"]
    first, second = (f"sqlite:///{tmp_path / name}" for name in ("first.db", "second.db"))

    where = ["--tracking-uri", first, "--workdir", str(tmp_path / "w1"), "--out", str(tmp_path / "r1")]
    out = _kdgrid("reproduce", *grid, *where, "--resolve", "--schedule", "order", cwd=tmp_path).stdout
    assert re.search(r"1 work item\(s\) over 1 stage\(s\), 1 at a time \(local launcher, items in plan order\)", out)
    assert "critical path first" not in out and "--resolve: stopped: every claim is resolved" in out

    where = ["--tracking-uri", second, "--workdir", str(tmp_path / "w2"), "--out", str(tmp_path / "r2")]
    out = _kdgrid("reproduce", *grid, *where, "--resolve", "--cost-store", first, cwd=tmp_path).stdout
    fitted = re.search(
        r"rates fitted to (\d+) logged process-epoch\(s\) and set-up\(s\) of the cost store (\S+)\)\);", out
    )
    assert fitted, out
    assert fitted.group(2) == first and int(fitted.group(1)) == len(costs.observations(first, "smoke")) > 0
    assert costs.observations(second, "smoke")  # the run trained into the tracking store, not the cost store
