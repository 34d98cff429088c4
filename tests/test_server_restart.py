"""The tracking server restarts while the grid trains: the runs wait for it and go on, and no metric is lost.

`trainer.tracking.retry` waits for a server that does not answer (connection refused while it restarts, a
connection it dropped with a request in flight). MLflow's own HTTP retries are turned off here
(MLFLOW_HTTP_REQUEST_MAX_RETRIES=0) so that kdgrid's are what carries the runs through the restart.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import sqlite3
import subprocess
import threading
import time

import pytest
import requests

from tests import cluster_store
from tests.conftest import kdgrid_command, kdgrid_env
from tests.test_chaos import OVERRIDES, SMOKE
from trainer import tracking

# Logged once per epoch by every run: each must hold exactly one value per epoch, steps 1..epochs.
PER_EPOCH = ("val.top1", "val.top5", "val.loss", "val.best_top1", "train.loss", "lr", "eval_time_s", "cost.cpu_s")


@contextlib.contextmanager
def _serving_after(port: int, after_s: float):
    """An HTTP server that starts listening on `port` `after_s` seconds from now (until then: refused)."""
    started: list[http.server.HTTPServer] = []

    def start() -> None:
        started.append(http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler))
        started[0].serve_forever()

    timer = threading.Timer(after_s, start)
    timer.start()
    try:
        yield
    finally:
        timer.join(after_s + 5)
        for server in started:
            server.shutdown()
            server.server_close()


@pytest.mark.slow
def test_retry_waits_for_a_server_that_refuses_connections_then_gives_up(monkeypatch):
    """Connection refused (nothing listens yet) is waited out; past $KDGRID_TRACKING_OUTAGE_S it is raised."""
    port = cluster_store.free_port()
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(requests.ConnectionError, match="Connection refused"):
        requests.get(url, timeout=5)  # what a restarting server answers
    monkeypatch.setenv(tracking.OUTAGE_S, "2")
    t0 = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        tracking.retry(requests.get, url, timeout=5)
    assert 2 <= time.monotonic() - t0 < 10
    monkeypatch.setenv(tracking.OUTAGE_S, "60")
    with _serving_after(port, 1.5):  # the server comes back: the same call succeeds
        t0 = time.monotonic()
        assert tracking.retry(requests.get, url, timeout=30).status_code == 200
        assert time.monotonic() - t0 >= 1.0


def _epoch_logged(db, n: int) -> bool:
    """Some run has logged epoch `n` in the server's store (read-only)."""
    with contextlib.suppress(sqlite3.OperationalError):
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return bool(con.execute("SELECT 1 FROM metrics WHERE key = 'val.top1' AND step >= ?", (n,)).fetchone())
    return False


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_mlflow_server_restart_mid_grid_loses_no_metric(tmp_path, capsys):
    from orchestrator.plan import make_plan

    plan = make_plan("smoke", "fig4", overrides=OVERRIDES)
    db, artifacts, log = tmp_path / "server.db", tmp_path / "artifacts", tmp_path / "server.log"
    port = cluster_store.free_port()
    server = cluster_store.start_mlflow_server(f"sqlite:///{db}", artifacts, log, port)
    url = f"http://127.0.0.1:{port}"
    args = ["reproduce", *SMOKE, "--tracking-uri", url, "--workdir", str(tmp_path / "work"), "--workers", "2"]
    env = {
        **os.environ,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",  # kdgrid's retry alone rides out the restart
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
        tracking.SYSTEM_METRICS_INTERVAL: "0",
    }
    out = tmp_path / "reproduce.log"
    try:
        with open(out, "w") as f:
            p = subprocess.Popen(
                kdgrid_command(*args, "--out", str(tmp_path / "reports")),
                cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT, env=kdgrid_env(env), start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 900
        while not _epoch_logged(db, 1):  # the runs are training
            assert p.poll() is None and time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.2)
        cluster_store.stop_group(server, (signal.SIGKILL,))  # the server dies with requests in flight
        down = time.monotonic()
        time.sleep(10)  # the runs go on training and find nobody listening
        server = cluster_store.start_mlflow_server(f"sqlite:///{db}", artifacts, log, port)
        outage = time.monotonic() - down
        code = p.wait(900)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    try:
        text = out.read_text()
        assert code == 0, text[-5000:]
        c = tracking.client(url)
        runs = tracking.runs_by_hash(c, plan.scale)
        expected = {(r.hash, k): list(range(1, r.spec.recipe.epochs + 1)) for r in plan.runs for k in PER_EPOCH}
        logged = {(h, k): sorted(m.step for m in c.get_metric_history(runs[h].info.run_id, k)) for h, k in expected}
        lost = sum(len(set(want) - set(logged[key])) for key, want in expected.items())
        twice = sum(len(logged[key]) - len(set(logged[key])) for key in expected)
        with capsys.disabled():
            print(
                f"\nmlflow server restart: down {outage:.0f} s (SIGKILL, restarted on port {port}) while "
                f"{len(plan.runs)} runs trained; {sum(map(len, expected.values()))} per-epoch values expected, "
                f"{sum(map(len, logged.values()))} logged: {lost} lost, {twice} duplicated"
            )
        assert [runs[r.hash].info.status for r in plan.runs] == ["FINISHED"] * len(plan.runs)
        assert lost == 0 and twice == 0 and logged == expected
        assert (tmp_path / "reports" / "report.md").exists()
    finally:
        cluster_store.stop_group(server)
