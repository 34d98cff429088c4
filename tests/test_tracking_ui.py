"""The parts behind the MLflow UI that need no training: the tracking URI parsed once, the one test of a
finished run, WAL, the parent tag kept on reopen, the experiment kind, dataset inputs, the throughput meter,
and the report's tables as CSV/JSON (a real SQLite store)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from types import SimpleNamespace

import pytest

from trainer import tracking


def _spec(**tags):
    return SimpleNamespace(scale="unit", tags=dict(tags), recipe_name=None, name="a run")


def test_one_parser_for_tracking_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = tracking.parse_uri("sqlite:///rel/m.db")  # relative: made absolute, for every worker and job
    assert store.sqlite and store.path == tmp_path / "rel" / "m.db" and store.uri == f"sqlite:///{store.path}"
    assert tracking.parse_uri(f"sqlite:///{tmp_path}/a.db").uri == f"sqlite:///{tmp_path}/a.db"
    assert tracking.parse_uri("mlruns") == tracking.Store(str(tmp_path / "mlruns"), tmp_path / "mlruns")
    assert tracking.parse_uri("file:mlruns").uri == (tmp_path / "mlruns").as_uri()
    assert tracking.parse_uri(f"file://{tmp_path}/x").path == tmp_path / "x"
    assert tracking.parse_uri("http://127.0.0.1:5000") == tracking.Store("http://127.0.0.1:5000", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking.absolute_uri(None) == f"sqlite:///{tmp_path / 'env.db'}"
    assert tracking.artifact_root("sqlite:///rel/m.db") == (tmp_path / "rel" / "mlartifacts").as_uri()


def test_finished_runs_are_those_mlflow_has_finished(tmp_path):
    c = tracking.client(f"sqlite:///{tmp_path / 'm.db'}")
    for h, status in (("done", "FINISHED"), ("failed", "FAILED"), ("running", None)):
        log = tracking.RunLog.open(c, _spec(), h)
        if status:
            log.finish(status)
    assert set(tracking.finished_runs(c, "unit")) == {"done"}
    assert set(tracking.finished_runs(c, "unit", ["failed", "running"])) == set()
    assert tracking.finished(None) is False and tracking.run_state(None) == "missing"


def test_store_in_wal_mode_with_training_kind_and_never_created_by_enable_wal(tmp_path):
    absent = f"sqlite:///{tmp_path / 'absent.db'}"
    assert tracking.enable_wal(absent) is False and not (tmp_path / "absent.db").exists()
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    c = tracking.client(uri)
    exp = tracking.experiment_id(c, "unit")
    with sqlite3.connect(tmp_path / "m.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.get_experiment(exp).tags[tracking.EXPERIMENT_KIND] == tracking.TRAINING_KIND
    # an experiment made before kdgrid set the kind gets it on next use
    c.delete_experiment_tag(exp, tracking.EXPERIMENT_KIND)
    assert tracking.experiment_id(c, "unit") == exp
    assert c.get_experiment(exp).tags[tracking.EXPERIMENT_KIND] == tracking.TRAINING_KIND


def test_a_run_keeps_the_parent_of_the_grid_that_trained_it_first(tmp_path):
    c = tracking.client(f"sqlite:///{tmp_path / 'm.db'}")
    log = tracking.RunLog.open(c, _spec(**{tracking.PARENT: "grid-a"}), "h1")
    run = c.get_run(log.run_id)
    assert run.data.tags[tracking.PARENT] == "grid-a" and run.data.tags[tracking.SOURCE] == "kdgrid train"
    spec = _spec(**{tracking.PARENT: "grid-b", tracking.SOURCE: "kdgrid reproduce --scale unit"})
    spec.name = "a better name"
    again = tracking.RunLog.open(c, spec, "h1")
    run = c.get_run(again.run_id)
    assert again.run_id == log.run_id and run.data.tags[tracking.PARENT] == "grid-a"
    assert run.data.tags[tracking.SOURCE] == "kdgrid reproduce --scale unit" and run.info.run_name == "a better name"


def test_dataset_inputs_name_source_digest_and_counts(tmp_path):
    from trainer.dataset_inputs import datasets
    from trainer.spec import DataSpec

    spec = DataSpec(dataset="fashion_mnist", train_subset=100, val_subset=50)
    train, val = SimpleNamespace(labels=[0] * 100), SimpleNamespace(labels=[0] * 50)
    (tr, ctx_t), (va, ctx_v) = datasets(spec, train, val)
    assert (ctx_t, ctx_v) == ("training", "validation")
    assert json.loads(tr.profile)["num_train_images"] == 100 and json.loads(va.profile)["num_val_images"] == 50
    assert tr.digest != va.digest and tr.digest == datasets(spec, train, val)[0][0].digest
    other = DataSpec(dataset="fashion_mnist", train_subset=100, val_subset=50, subset_seed=1)
    assert datasets(other, train, val)[0][0].digest != tr.digest
    c = tracking.client(f"sqlite:///{tmp_path / 'm.db'}")
    log = tracking.RunLog.open(c, _spec(), "h")
    log.log_datasets(datasets(spec, train, val))
    log.log_datasets(datasets(spec, train, val))  # a resumed run logs them again: still two inputs
    inputs = c.get_run(log.run_id).inputs.dataset_inputs
    assert sorted(i.dataset.name for i in inputs) == ["Fashion-MNIST train", "Fashion-MNIST val"]


def test_epoch_meter_splits_the_loop_into_data_teacher_and_students():
    from trainer.throughput import EpochMeter

    def slow_batches(n):
        for _ in range(n):
            time.sleep(0.02)
            yield [0] * 8, [0] * 8

    meter = EpochMeter("cpu")
    for _ in meter.batches(slow_batches(5)):
        with meter.part("teacher"):
            time.sleep(0.03)
        for m, t in (("a", 0.01), ("b", 0.02)):
            with meter.part(m):
                time.sleep(t)
    meter.stop()
    a, b = meter.metrics("a", 2), meter.metrics("b", 2)
    wall = meter.wall
    assert meter.steps == 5 and meter.images == 40 and a["throughput.images_per_s"] == pytest.approx(40 / wall)
    # sleeps are lower bounds of what was timed; the parts never exceed the loop
    assert meter.data_wait >= 0.1 and meter.teacher_s >= 0.15 and meter.own["a"] >= 0.05 and meter.own["b"] >= 0.1
    assert (
        a["throughput.data_wait_share"]
        + a["throughput.teacher_share"]
        + a["throughput.own_share"]
        + b["throughput.own_share"]
        <= 1.0
    )
    for shared in (
        "throughput.images_per_s",
        "throughput.step_s",
        "throughput.data_wait_share",
        "throughput.teacher_share",
        "throughput.cohort_size",
    ):
        assert a[shared] == b[shared], shared  # the cohort's figures: the same for every member
    assert (
        a["throughput.own_step_s"] == pytest.approx(meter.own["a"] / 5)
        and a["throughput.own_step_s"] < b["throughput.own_step_s"]
    )
    assert a["memory.peak_rss_mb"] > 10


def test_report_tables_as_csv_and_json():
    from orchestrator.report import export
    from tests.test_report import _model

    t3 = _model("3", {0: [75.0, 76.0], 1: [74.0, 74.5], 2: [73.0, None]}, 2)
    report = SimpleNamespace(
        tables=[t3],
        fig4=None,
        scale="unit",
        recipe="paper",
        seeds=2,
        generated="now",
        counts={"finished": 5, "missing": 3},
        complete=False,
        command="kdgrid reproduce",
        claims=[],
    )
    rows = list(csv.DictReader(io.StringIO(export.to_csv(report))))
    assert [r["key"] for r in rows] == ["t3.r1", "t3.r2", "t3.r3", "t3.r4"]
    assert float(rows[0]["top1_last_mean"]) == pytest.approx(75.5) and float(rows[0]["top1_last_std"]) == pytest.approx(
        0.7071, abs=1e-4
    )
    assert rows[0]["Manifold losses"] == "L_ci, L_cp, L_rs" and float(rows[0]["paper_acc1"]) == 75.06
    assert rows[2]["seeds_done"] == "1" and rows[3]["top1_last_mean"] == "" and rows[3]["status"] == "missing"
    data = json.loads(export.to_json(report))
    assert data["tables"][0]["rows"][1]["top1_last_mean"] == pytest.approx(74.25)
