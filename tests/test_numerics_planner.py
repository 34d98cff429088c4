"""A finished run of another numerics version does not count as done: the planner lists it to train, `kdgrid
plan` shows it partial and says why, the engine trains it again in a new MLflow run (the old one is kept),
and the report names every numerics version it reads."""

from __future__ import annotations

import pytest

from orchestrator.launch.execution import missing, other_numerics
from orchestrator.plan import make_plan, run_states
from orchestrator.report.build import build_report
from trainer import numerics, tracking


def _store(tmp_path, plan, old: set[str]) -> str:
    """Every planned run FINISHED in MLflow, those in `old` tagged with the version before this code's."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    for r in plan.runs:
        log = tracking.RunLog.open(c, r.spec, r.hash)
        version = numerics.NUMERICS_VERSION - 1 if r.hash in old else numerics.NUMERICS_VERSION
        log.set_tags({numerics.TAG: version})
        log.log_metrics({"val.top1": 50.0}, step=r.spec.recipe.epochs)
        log.log_metrics({"last_top1": 50.0, "best_top1": 50.0}, step=r.spec.recipe.epochs)
        log.finish("FINISHED")
    return uri


def test_a_finished_run_of_another_numerics_version_is_planned_to_train(tmp_path):
    plan = make_plan("smoke", "fig4")
    stale = plan.students[-1]
    uri = _store(tmp_path, plan, {stale.hash})

    todo, done, found = missing(plan, uri)
    assert [r.hash for r in todo] == [stale.hash] and other_numerics(todo, found) == 1
    assert set(done) == {r.hash for r in plan.runs} - {stale.hash}

    states, note = run_states(plan, uri)
    assert states[stale.hash] == "partial" and sum(s == "finished" for s in states.values()) == len(plan.runs) - 1
    old, this = numerics.NUMERICS_VERSION - 1, numerics.NUMERICS_VERSION
    assert f"1 run(s) finished under numerics version {old}, not this code's {this}" in note

    banner = build_report(plan, uri).scale_note
    assert f"Numerics versions read: {this} in {len(plan.runs) - 1} run(s) (this code's); {old} in 1 run(s)." in banner


def test_the_report_names_the_one_version_it_reads(tmp_path):
    plan = make_plan("smoke", "fig4")
    uri = _store(tmp_path, plan, set())
    banner = build_report(plan, uri).scale_note
    assert f"Numerics version {numerics.NUMERICS_VERSION} (this code's) in all {len(plan.runs)} run(s) read." in banner
    assert missing(plan, uri)[0] == []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_engine_trains_a_finished_run_of_another_version_again_in_a_new_run(tmp_path, monkeypatch):
    from tests.test_checkpoints import small_spec, train
    from trainer.spec import parse_experiment

    monkeypatch.setenv(tracking.SYSTEM_METRICS_INTERVAL, "0")
    spec, work, uri = small_spec(), tmp_path / "runs", f"sqlite:///{tmp_path / 'm.db'}"
    h = parse_experiment(spec).content_hash()
    assert train(spec, work, uri) == {h: "finished"}
    assert train(spec, work, uri) == {h: "skipped: finished in MLflow"}  # this code's numbers: done
    c = tracking.client(uri)
    old = tracking.runs_by_hash(c, "test", [h])[h]

    version = numerics.NUMERICS_VERSION
    monkeypatch.setattr(numerics, "NUMERICS_VERSION", version + 1)  # the code now computes other numbers
    assert train(spec, work, uri) == {h: "finished"}
    new = tracking.runs_by_hash(c, "test", [h])[h]
    assert new.info.run_id != old.info.run_id and new.info.status == "FINISHED"
    assert new.data.tags[numerics.TAG] == str(version + 1)
    epochs = spec["recipe"]["epochs"]
    assert [m.step for m in c.get_metric_history(new.info.run_id, "val.top1")] == list(range(1, epochs + 1))
    kept = c.get_run(old.info.run_id)  # the old numbers stay in the store, under their version
    assert kept.info.status == "FINISHED" and kept.data.tags[numerics.TAG] == str(version)
