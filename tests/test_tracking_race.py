"""Runs that start together log the same dataset: MLflow checks for the experiment's dataset, then inserts it,
so concurrent writers race on UNIQUE(experiment, name, digest). RunLog.log_datasets must survive that race
(it failed a grid's no-distillation run when two workers opened their runs at once)."""

from __future__ import annotations

import multiprocessing as mp

import pytest

WRITERS = 4


def _writer(uri: str, experiment_id: str, barrier, results) -> None:
    import mlflow
    from mlflow.entities import Dataset

    from trainer import tracking

    log = tracking.RunLog.__new__(tracking.RunLog)  # the RunLog of an open run: its client and run id
    log.c = mlflow.MlflowClient(uri)
    log.run_id = log.c.create_run(experiment_id).info.run_id  # as the engine opens its run, then logs inputs
    ds = Dataset(
        name="Fashion-MNIST train",
        digest="ee5d7364afc979b1",
        source_type="local",
        source='{"uri": "/usr/share/datasets/fashion-mnist"}',
    )
    barrier.wait()  # all writers insert the same dataset at the same moment
    try:
        log.log_datasets([(ds, "training")])
        results.put("ok")
    except Exception as err:  # reported to the test, which names it
        results.put(f"{type(err).__name__}: {err}"[:300])


@pytest.mark.slow
def test_runs_that_start_together_log_the_same_dataset(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = mlflow.MlflowClient(uri)
    exp = c.create_experiment("race")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(uri, exp, barrier, results)) for _ in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert outcomes == ["ok"] * WRITERS, outcomes
    runs = c.search_runs([exp])
    assert len(runs) == WRITERS
    for r in runs:  # every run has its input
        inputs = r.inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("Fashion-MNIST train", "ee5d7364afc979b1")]
