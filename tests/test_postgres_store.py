"""The cluster's tracking store, for real: `mlflow server` on PostgreSQL with the artifacts proxied, as
docker/compose.yaml runs it (here: Debian's `postgresql` on 127.0.0.1, see tests/cluster_store.py).

A one-row table (a CaiT-XXS24 teacher and a manifold-distilled DeiT-Tiny) is trained at smoke scale by
`kdgrid reproduce` against the server; the report reads both runs back through it. The runs and metrics
must be in PostgreSQL, and the checkpoints and predictions in the server's artifact folder, byte for byte
the trainer's files, downloadable through the server. In CI (CI=true) a PostgreSQL that cannot start fails.
An overloaded server's "connection pool full" answer (seen at 64 writers) is retried by kdgrid's writers.
"""

from __future__ import annotations

import contextlib
import json
import os

import pytest
import yaml

from tests import cluster_store
from tests.test_report import kdgrid

TABLE = {
    "table": "pgsmoke",
    "title": "A teacher and a student, tracked on PostgreSQL",
    "columns": [
        {"header": "Teacher", "field": "teacher"},
        {"header": "Acc1", "field": "teacher_acc1", "format": "{:.1f}"},
        {"header": "Distillation method", "field": "method"},
        {"header": "Student", "field": "student"},
        {"header": "Acc1", "field": "paper_acc1", "format": "{:.2f}"},
    ],
    "rows": [
        {
            "teacher": "cait_xxs24_224",
            "teacher_acc1": 77.6,
            "method": "manifold",
            "student": "deit_tiny_distilled_patch16_224",
            "paper_acc1": 74.46,
        }
    ],
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server URL, PostgreSQL URI, artifact folder, base folder) with the smoke table trained through it."""
    base = tmp_path_factory.mktemp("pg-store")
    with contextlib.ExitStack() as stack:
        try:
            pg = stack.enter_context(cluster_store.postgres())
        except cluster_store.Unavailable as err:
            if os.environ.get("CI"):
                pytest.fail(f"PostgreSQL must run in CI (scripts/bootstrap.sh test installs it): {err}")
            pytest.skip(f"no PostgreSQL here: {err}")
        artifacts = base / "artifacts"
        url = stack.enter_context(cluster_store.mlflow_server(pg, artifacts, base / "server.log"))
        table = base / "pgsmoke.yaml"
        table.write_text(yaml.safe_dump(TABLE, sort_keys=False))
        args = ("--scale", "smoke", "--tables", str(table), "--tracking-uri", url, "--workdir", str(base / "work"))
        out = kdgrid("reproduce", *args, "--out", str(base / "reports"), "--workers", "2", cwd=base, timeout=1500)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        yield url, pg, artifacts, base, args


@pytest.mark.slow
def test_the_report_reads_the_grid_back_through_the_server(served):
    url, _, _, base, args = served
    out = kdgrid("report", *args, "--format", "json", cwd=base, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["complete"] and report["counts"] == {"finished": 2}, report["counts"]
    (row,) = report["tables"][0]["rows"]
    assert row["status"] == "ok" and row["seeds_done"] == 1 and 0 <= row["top1_last_mean"] <= 100
    assert row["teacher_acc1_grid"] is not None  # the teacher's run, read back too
    md = (base / "reports" / "report.md").read_text()  # what reproduce wrote at the end
    assert "2 planned runs: 2 finished." in md


@pytest.mark.slow
def test_runs_live_in_postgres_and_artifacts_come_through_the_proxy(served, tmp_path):
    import psycopg

    from trainer import tracking, workdir

    url, pg, artifacts, base, _ = served
    with psycopg.connect(pg.replace("+psycopg", "", 1)) as con:  # libpq reads the plain URI
        exp = con.execute("SELECT experiment_id, artifact_location FROM experiments WHERE name = 'kdgrid-smoke'")
        exp_id, location = exp.fetchone()
        runs = con.execute(
            "SELECT r.run_uuid, r.status, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "AND t.key = %s WHERE r.experiment_id = %s",
            (tracking.HASH, exp_id),
        ).fetchall()
        metrics = con.execute("SELECT count(*) FROM metrics WHERE key = 'val.top1'").fetchone()[0]
    assert location.startswith("mlflow-artifacts:")  # proxied: clients never see the artifact folder
    assert len(runs) == 2 and {status for _, status, _ in runs} == {"FINISHED"}
    assert metrics == 2 * 2  # two runs, two epochs each

    c = tracking.client(url)
    for run_id, _, run_hash in runs:
        local = workdir.run_dir(base / "work", run_hash) / "final.pt"  # what the trainer wrote
        (stored,) = artifacts.rglob(f"{run_id}/artifacts/checkpoints/final.pt")
        assert stored.read_bytes() == local.read_bytes()
        fetched = tracking.fetch_artifact(c, run_id, "checkpoints/final.pt", tmp_path / run_id)
        assert fetched.read_bytes() == local.read_bytes()
        assert list(artifacts.rglob(f"{run_id}/artifacts/predictions/predictions.json"))
    assert not (base / "mlruns").exists() and not (base / "mlartifacts").exists()  # nothing written beside


def test_writers_retry_a_server_whose_connection_pool_is_full():
    """What `mlflow server` answers when its SQLAlchemy pool stays full for 30 s: a 400, which MLflow's HTTP
    client does not retry (benchmarks.bench_tracking, 64 writers: runs lost). kdgrid's retry waits it out."""
    from mlflow.exceptions import RestException

    from trainer import tracking

    full = {
        "error_code": "BAD_REQUEST",
        "message": "QueuePool limit of size 5 overflow 10 reached, connection "
        "timed out, timeout 30.00 (Background on this error at: https://sqlalche.me/e/21/3o7r)",
    }
    calls = []

    def log_batch():
        calls.append(1)
        if len(calls) < 3:
            raise RestException(full)
        return "logged"

    assert tracking.retry(log_batch) == "logged" and len(calls) == 3
    bad = RestException({"error_code": "BAD_REQUEST", "message": "Invalid value for metric 'x'"})

    def invalid():
        calls.append(1)
        raise bad

    calls.clear()
    with pytest.raises(RestException, match="Invalid value"):
        tracking.retry(invalid)
    assert len(calls) == 1  # any other 400 is raised at once
