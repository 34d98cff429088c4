"""The MLflow server `kdgrid ui` runs on the grid's store (loopback-only by default): started in its own process
group with telemetry off and without MLflow's GenAI job runner (`server_env`), waited for until healthy,
stopped with its children; and the grids it serves (`grid_views`: where the UI opens on each)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping

from orchestrator.tracking import grid_run
from trainer import telemetry, tracking

# MLflow 3's GenAI job runner (prompt optimisation, scorers) starts 7 idle processes with the server,
# which slow a small machine several-fold; kdgrid's grids never use it.
NO_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_command(uri: str, host: str, port: int) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    root = tracking.artifact_root(uri)  # artifacts beside a SQLite store, where the trainer puts them
    if root:
        cmd += ["--artifacts-destination", root]
    return cmd


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def server_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: this one, telemetry off and no job runner, unless the user set them."""
    env = dict(os.environ if environ is None else environ)
    return {**NO_JOBS, **env, **telemetry.environment(env)}


def start(uri: str, host: str, port: int) -> subprocess.Popen:
    """`mlflow server` in its own process group: it starts uvicorn as a child, and `stop` ends both."""
    return subprocess.Popen(ui_command(uri, host, port), start_new_session=True, env=server_env())


def url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def stop(proc: subprocess.Popen) -> None:
    """Stop the server's process group (the one started above), politely first."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _post(url: str, endpoint: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"{url}{endpoint}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def grid_views(url: str) -> list[tuple[str, str]]:
    """(experiment, URL) of each kdgrid experiment the server at `url` holds, most recently changed first:
    where the UI opens on its runs, the grids' rows among them, in kdgrid's saved view (grid_run.VIEW)."""
    body = {"max_results": 1000, "filter": "name LIKE 'kdgrid-%'", "order_by": ["last_update_time DESC"]}
    found = _post(url, "/api/2.0/mlflow/experiments/search", body).get("experiments", [])
    return [(e["name"], grid_run.view_url(url, e["experiment_id"])) for e in found]
