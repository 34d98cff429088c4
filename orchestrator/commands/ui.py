"""`kdgrid ui`: the MLflow UI (`mlflow server`) on the grid's store, loopback-only by default, until Ctrl-C;
it prints where the UI opens on each grid (the experiment's runs in kdgrid's view), not MLflow's home page."""

from __future__ import annotations

import signal
import sys

from orchestrator.tracking import server
from trainer import tracking


def run(args) -> int:
    uri = args.tracking_uri or tracking.default_uri()
    store = tracking.parse_uri(uri)
    if uri.startswith(("http://", "https://")):
        print(f"error: {uri} is already a tracking server: open it in a browser", file=sys.stderr)
        return 2
    if store.path is not None and not store.path.exists():
        print(f"note: no store at {uri} yet: the UI starts on an empty one", file=sys.stderr)
    if not server.port_free(args.host, args.port):
        print(f"error: port {args.port} on {args.host} is in use: pick another with --port", file=sys.stderr)
        return 2
    url = server.url(args.host, args.port)
    proc = server.start(uri, args.host, args.port)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if not server.wait_healthy(url, proc):
            print(f"error: the MLflow server did not come up (exit code {proc.poll()})", file=sys.stderr)
            return 1
        views = server.grid_views(url)
        lines = [f"MLflow UI: {url}  (store: {uri}; Ctrl-C stops it)"]
        lines += [f"  {name}: {view}" for name, view in views] or ["  no kdgrid experiment in this store yet"]
        print("\n".join(lines), flush=True)  # one write: the server's log shares the stream
        proc.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop(proc)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
