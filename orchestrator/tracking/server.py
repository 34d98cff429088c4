"""`kdgrid ui`: the MLflow UI (`mlflow server`) on the same store as the grid, loopback-only by default."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from orchestrator.report.collect import store_absent
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
    root = tracking._artifact_root(uri)  # artifacts beside a SQLite store, where the trainer puts them
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


def serve(tracking_uri: str | None, host: str = "127.0.0.1", port: int = 5000) -> int:
    uri = tracking_uri or tracking.default_uri()
    if uri.startswith(("http://", "https://")):
        print(f"error: {uri} is already a tracking server: open it in a browser", file=sys.stderr)
        return 2
    if store_absent(uri):
        print(f"note: no store at {uri} yet: the UI starts on an empty one", file=sys.stderr)
    if not port_free(host, port):
        print(f"error: port {port} on {host} is in use: pick another with --port", file=sys.stderr)
        return 2
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    # its own process group: mlflow starts uvicorn as a child, and stopping the UI stops both
    proc = subprocess.Popen(ui_command(uri, host, port), start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if not wait_healthy(url, proc):
            rc = proc.poll()
            print(f"error: the MLflow server did not come up (exit code {rc})", file=sys.stderr)
            return 1
        print(f"MLflow UI: {url}  (store: {uri}; experiments kdgrid-<scale>; Ctrl-C stops it)", flush=True)
        proc.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(proc)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen) -> None:
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
