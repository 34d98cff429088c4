"""Concurrent writers to one MLflow store: does every metric arrive?

`python -m benchmarks.bench_tracking [--writers 8] [--epochs 40] [--metrics 16] [--modes ...]`

Each writer is a process that does what a training process does through kdgrid's own `trainer.tracking`:
opens a run (`RunLog.open`), logs ~60 params, tags, its datasets, runs MLflow's system-metrics monitor
(sampling every 0.5 s), logs `--metrics` metrics per epoch for `--epochs` epochs as fast as it can (a
worst case: real epochs are seconds to hours apart), logs an artifact and closes the run. All writers start
together. Afterwards the metric history of every run is counted: lost = expected - stored.

Modes, side by side in one call, each in a fresh store:
  sqlite-mlflow   SQLite, MLflow's defaults only (rollback journal; kdgrid's WAL and lock retries turned off)
  sqlite          SQLite as kdgrid uses it (WAL journal, retries on "database is locked")
  server          `mlflow server` on 127.0.0.1 over a SQLite file, the writers talking HTTP
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

SCALE = "bench"


def _writer(uri: str, idx: int, epochs: int, n_metrics: int, barrier, mlflow_only: bool, out: str) -> None:
    os.environ["KDGRID_SYSTEM_METRICS_INTERVAL"] = "0.5"
    from trainer import tracking

    if mlflow_only:  # what MLflow alone does: no WAL, no retries on a locked database
        tracking.enable_wal = lambda uri: False
        tracking._TRANSIENT = ()
    result = {"writer": idx, "errors": [], "run_id": None, "written": 0}
    t0 = None
    try:
        c = tracking.client(uri)
        spec = SimpleNamespace(scale=SCALE, tags={"kdgrid.role": "bench"}, recipe_name=None, name=f"writer {idx}")
        from mlflow.entities import Dataset

        tracking.experiment_id(c, SCALE)  # imports and connection done before the start
        barrier.wait(timeout=600)
        t0 = time.perf_counter()
        log = tracking.RunLog.open(c, spec, f"bench{idx:04d}")
        result["run_id"] = log.run_id
        log.log_params({"model": {f"p{i}": i for i in range(40)}, "recipe": {f"r{i}": i * 0.5 for i in range(20)}})
        log.set_tags({f"env.k{i}": str(i) for i in range(10)})

        log.log_datasets([(Dataset(name="bench", digest=f"{idx:08x}", source_type="local", source="{}"), "training")])
        log.start_system_metrics()
        for epoch in range(1, epochs + 1):
            log.log_metrics({f"m{k:02d}": epoch * 100 + k for k in range(n_metrics)}, step=epoch)
            result["written"] += n_metrics
        art = Path(out).with_suffix(".txt")
        art.write_text("x" * 1000)
        log.log_artifact(art)
        log.finish("FINISHED")
    except Exception as err:  # recorded: a writer that dies loses what it had left to write
        result["errors"].append(f"{type(err).__name__}: {str(err)[:300]}")
    result["wall_s"] = time.perf_counter() - t0 if t0 else None
    Path(out).write_text(json.dumps(result))


def _count(uri: str, results: list[dict], epochs: int, n_metrics: int) -> dict:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    stored = system = 0
    steps_ok = True
    for r in results:
        if not r["run_id"]:
            continue
        run = c.get_run(r["run_id"])
        for k in range(n_metrics):
            hist = c.get_metric_history(r["run_id"], f"m{k:02d}")
            stored += len(hist)
            steps_ok &= sorted(m.step for m in hist) == list(range(1, len(hist) + 1))
        system += sum(1 for k in run.data.metrics if k.startswith("system/")) > 0
    expected = len(results) * epochs * n_metrics
    return {
        "expected": expected,
        "stored": stored,
        "lost": expected - stored,
        "steps_ok": steps_ok,
        "runs_with_system_metrics": system,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(db: Path, artifacts: Path):
    port = _free_port()
    log = open(db.with_suffix(".server.log"), "w")
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--default-artifact-root",
            artifacts.as_uri(),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return p, url
        except OSError:
            time.sleep(0.5)
    p.terminate()
    raise RuntimeError(f"mlflow server did not start: see {db.with_suffix('.server.log')}")


def run_mode(mode: str, base: Path, writers: int, epochs: int, n_metrics: int) -> dict:
    base.mkdir(parents=True, exist_ok=True)
    db = base / "mlflow.db"
    server = None
    if mode == "server":
        server, uri = _server(db, base / "artifacts")
    else:
        uri = f"sqlite:///{db}"
    try:
        from trainer import tracking

        if mode == "sqlite-mlflow":  # the store and experiment exist before the writers start, without WAL
            saved = tracking.enable_wal
            tracking.enable_wal = lambda uri: False
            tracking.experiment_id(tracking.client(uri), SCALE)
            tracking.enable_wal = saved
        else:
            tracking.experiment_id(tracking.client(uri), SCALE)
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(writers + 1)  # spawned interpreters import mlflow first; then all start together
        procs, outs = [], []
        for i in range(writers):
            out = str(base / f"writer{i}.json")
            outs.append(out)
            p = ctx.Process(target=_writer, args=(uri, i, epochs, n_metrics, barrier, mode == "sqlite-mlflow", out))
            p.start()
            procs.append(p)
        barrier.wait(timeout=600)
        start = time.perf_counter()
        for p in procs:
            p.join(timeout=900)
        wall = time.perf_counter() - start
        results = [
            json.loads(Path(o).read_text()) if Path(o).exists() else {"run_id": None, "errors": ["no result"]}
            for o in outs
        ]
        counted = _count(uri, results, epochs, n_metrics)
        errors = [e for r in results for e in r["errors"]]
        return {
            "mode": mode,
            "writers": writers,
            **counted,
            "writer_errors": len(errors),
            "first_error": errors[0] if errors else "",
            "wall_s": round(wall, 1),
            "metrics_per_s": round(counted["stored"] / wall, 1) if wall > 0 else None,
        }
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--metrics", type=int, default=16, help="metrics per epoch")
    ap.add_argument("--modes", default="sqlite-mlflow,sqlite,server")
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temporary folder)")
    args = ap.parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_tracking-"))
    rows = []
    for mode in args.modes.split(","):
        r = run_mode(mode, root / mode, args.writers, args.epochs, args.metrics)
        rows.append(r)
        print(json.dumps(r), flush=True)
    print(
        f"\n{args.writers} writers x {args.epochs} epochs x {args.metrics} metrics, all starting together "
        f"(stores in {root}):"
    )
    print(
        f"{'mode':<14} {'expected':>8} {'stored':>8} {'lost':>5} {'errors':>6} {'sysmetrics':>10} {'wall s':>7}"
        f" {'metrics/s':>9}  first error"
    )
    for r in rows:
        print(
            f"{r['mode']:<14} {r['expected']:>8} {r['stored']:>8} {r['lost']:>5} {r['writer_errors']:>6} "
            f"{r['runs_with_system_metrics']:>6}/{r['writers']:<3} {r['wall_s']:>7} {r['metrics_per_s']:>9}  "
            f"{r['first_error'][:100]}"
        )
    return 0 if all(r["lost"] == 0 for r in rows if r["mode"] != "sqlite-mlflow") else 1


if __name__ == "__main__":
    sys.exit(main())
