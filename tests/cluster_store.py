"""The cluster's tracking store, started on this machine: a throwaway PostgreSQL from Debian's `postgresql`
package and `mlflow server` on it, both on 127.0.0.1, as docker/compose.yaml runs them (PostgreSQL holds the
runs; the server proxies the artifacts). Used by tests/test_postgres_store.py and benchmarks.bench_tracking.
PostgreSQL refuses to run as root: as root, the cluster runs as the `postgres` user that the package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

USER = "mlflow"  # the database role and database, named as in docker/compose.yaml


class Unavailable(RuntimeError):
    """PostgreSQL is not installed, or did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bindir() -> Path | None:
    """The newest installed server's programs: Debian keeps them off PATH, in /usr/lib/postgresql/<N>/bin."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found.sort(key=lambda p: int(re.search(r"/(\d+)/bin/", p).group(1)))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


def _owner() -> pwd.struct_passwd | None:
    """Who runs the server: this user, or `postgres` when this is root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable("running as root, and there is no `postgres` user to run PostgreSQL as") from None


def _run(cmd: list[str], owner, **kwargs) -> subprocess.CompletedProcess:
    user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if owner else {}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **user, **kwargs)
    if out.returncode != 0:
        raise Unavailable(f"{' '.join(cmd[:2])} failed ({out.returncode}): {out.stdout[-1500:]}{out.stderr[-1500:]}")
    return out


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A new PostgreSQL cluster on 127.0.0.1 (a free port, password authentication), its data in a temporary
    folder that is removed afterwards; yields the SQLAlchemy URI of its `mlflow` database (driver psycopg 3,
    named: SQLAlchemy 2.0 would read a bare postgresql:// as psycopg2)."""
    bins = bindir()
    if bins is None:
        raise Unavailable("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    owner = _owner()
    # Not pytest's tmp_path: its parents are private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="kdgrid-pg-"))
    proc = None
    try:
        password = secrets.token_hex(12)
        (root / "pw").write_text(password + "\n")
        if owner:
            for p in (root, root / "pw"):
                os.chown(p, owner.pw_uid, owner.pw_gid)
        data = root / "data"
        _run(
            [str(bins / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={root / 'pw'}", "--auth=scram-sha-256"]
            + ["-E", "UTF8", "--locale=C", "--no-sync"],
            owner,
        )
        port = free_port()
        log = open(root / "postgres.log", "w")
        user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if owner else {}
        proc = subprocess.Popen(
            [str(bins / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root)]
            + ["-c", "listen_addresses=127.0.0.1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **user,
        )
        env = {**os.environ, "PGPASSWORD": password}
        address = ["-h", "127.0.0.1", "-p", str(port), "-U", USER]
        deadline = time.monotonic() + 60
        while subprocess.run([str(bins / "pg_isready"), *address], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"postgres did not start: {(root / 'postgres.log').read_text()[-2000:]}")
            time.sleep(0.3)
        _run([str(bins / "createdb"), *address, USER], None, env=env)
        yield f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{port}/{USER}"
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path, workers: int | None = None) -> Iterator[str]:
    """`mlflow server` on a free port of 127.0.0.1, artifacts proxied into `artifacts` (as the compose file
    runs it); yields its URL; its log goes to `log`. MLflow's job runner (GenAI jobs: 7 huey consumers, each
    importing MLflow and polling) is off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says otherwise: kdgrid
    runs no jobs, and on 2 cores they made each request ~4x slower."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", backend_uri, "--serve-artifacts", "--artifacts-destination", str(artifacts)]
    if workers:
        cmd += ["--workers", str(workers)]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, "PYTHONUNBUFFERED": "1"}  # log as it goes
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # the first start creates MLflow's tables
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """The server and its uvicorn workers (its process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=60)
            return
        except subprocess.TimeoutExpired:
            continue
