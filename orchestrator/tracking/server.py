"""The MLflow server `kdgrid ui` runs on the grid's store (loopback-only by default): started in its own process
group, waited for until healthy, stopped with its children."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from trainer import tracking


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


def start(uri: str, host: str, port: int) -> subprocess.Popen:
    """`mlflow server` in its own process group: it starts uvicorn as a child, and `stop` ends both."""
    return subprocess.Popen(ui_command(uri, host, port), start_new_session=True)


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
