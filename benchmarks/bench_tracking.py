"""Concurrent writers to one MLflow store: does every metric arrive, and how long does it take?

`python -m benchmarks.bench_tracking [--writers 8,32,64] [--epochs 10] [--metrics 16] [--modes ...]`

Each writer is a process that does what a training process does through kdgrid's own `trainer.tracking`:
opens a run (`RunLog.open`), logs ~60 params, tags, its dataset, runs MLflow's system-metrics monitor
(every `--system-interval` s), logs `--metrics` metrics per epoch for `--epochs` epochs as fast as it can
(a worst case: real epochs are seconds to hours apart), logs an artifact and closes the run. All writers
start together. Afterwards the store's metric rows are counted (SQL on the database itself: one query, not
one request per history): lost = expected - stored; each run's status and artifact are read through MLflow.
MLflow's telemetry is off in the writers (issue 30: kdgrid turns it off; with it on and no network, its
session-id cleanup races a request in another thread: KeyError '_MLFLOW_TELEMETRY_SESSION_ID').

Stores (`--modes`, side by side; each round of writers gets a fresh SQLite file, or a fresh experiment on
a server that stays up across rounds, as a cluster's does):
  sqlite           a SQLite file as kdgrid uses it on one machine (WAL, retries on "database is locked")
  sqlite-mlflow    a SQLite file with MLflow's defaults only (rollback journal, no kdgrid retries)
  server-sqlite    `mlflow server` on a SQLite file, the writers talking HTTP
  server-postgres  `mlflow server` on PostgreSQL, artifacts proxied, as docker/compose.yaml runs it (a
                   throwaway cluster from Debian's `postgresql`, see tests/cluster_store.py)
Both servers run with MLflow's defaults (4 workers, a pool of 5 + 10 connections each) but without its
GenAI job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true brings it back). The server's log counts its 5xx
answers (MLflow's client retries them) and its 400s (it does not: kdgrid's `tracking.retry` does, for a
full connection pool).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

MODES = ("sqlite", "sqlite-mlflow", "server-sqlite", "server-postgres")
# Imported once by the fork server, so that 64 writers start in seconds, not minutes of imports.
PRELOAD = [
    "mlflow",
    "mlflow.entities",
    "mlflow.tracking",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.tracking.rest_store",
    "mlflow.system_metrics.system_metrics_monitor",
    "trainer.tracking",
    "trainer.system_metrics",
]


def _writer(uri: str, scale: str, idx: int, cfg: dict, barrier, out: str) -> None:
    os.environ["KDGRID_SYSTEM_METRICS_INTERVAL"] = str(cfg["system_interval"])
    sys.stdout = open(os.devnull, "w")  # MLflow prints each finished run's URL
    from mlflow.entities import Dataset

    from trainer import tracking

    if cfg["mlflow_only"]:  # what MLflow alone does: no WAL, no retries on a locked database
        tracking.enable_wal = lambda uri: False
        tracking._TRANSIENT = ()
    result = {"writer": idx, "errors": [], "run_id": None}
    t0 = None
    try:
        c = tracking.client(uri)
        spec = SimpleNamespace(scale=scale, tags={"kdgrid.role": "bench"}, recipe_name=None, name=f"writer {idx}")
        tracking.experiment_id(c, scale)  # connection made before the start
        barrier.wait(timeout=600)
        t0 = time.perf_counter()
        log = tracking.RunLog.open(c, spec, f"bench{idx:04d}")
        result["run_id"] = log.run_id
        log.log_params({"model": {f"p{i}": i for i in range(40)}, "recipe": {f"r{i}": i * 0.5 for i in range(20)}})
        log.set_tags({f"env.k{i}": str(i) for i in range(10)})
        log.log_datasets([(Dataset(name="bench", digest=f"{idx:08x}", source_type="local", source="{}"), "training")])
        log.start_system_metrics()
        for epoch in range(1, cfg["epochs"] + 1):
            log.log_metrics({f"m{k:02d}": epoch * 100 + k for k in range(cfg["metrics"])}, step=epoch)
        art = Path(out).with_suffix(".txt")
        art.write_text("x" * 1000)
        log.log_artifact(art)
        log.finish("FINISHED")
    except Exception as err:  # recorded: a writer that dies loses what it had left to write
        result["errors"].append(f"{type(err).__name__}: {str(err)[:300]}")
    result["wall_s"] = time.perf_counter() - t0 if t0 else None
    Path(out).write_text(json.dumps(result))


def _metric_rows(backend: str, run_ids: set[str]) -> dict[tuple[str, str, int], int]:
    """(run, metric, step) -> rows stored, for the bench's own metrics (m00, m01, ...) of these runs."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(backend)
    try:
        with engine.connect() as con:
            rows = con.execute(
                sqlalchemy.text("SELECT run_uuid, key, step, COUNT(*) FROM metrics GROUP BY run_uuid, key, step")
            ).all()
    finally:
        engine.dispose()
    return {(r, k, int(st)): n for r, k, st, n in rows if r in run_ids and re.fullmatch(r"m\d\d", k)}


def _count(uri: str, backend: str, results: list[dict], epochs: int, n_metrics: int) -> dict:
    """Metric steps stored (once each), rows stored twice (a retried write), and each run's state."""
    from mlflow.tracking import MlflowClient

    run_ids = {r["run_id"] for r in results if r["run_id"]}
    rows = _metric_rows(backend, run_ids)
    stored = sum(1 for (_, _, step) in rows if 1 <= step <= epochs)
    c = MlflowClient(uri)
    runs = [c.get_run(r) for r in run_ids]
    expected = len(results) * epochs * n_metrics
    return {
        "expected": expected,
        "stored": stored,
        "lost": expected - stored,
        "duplicates": sum(rows.values()) - len(rows),
        "finished": sum(run.info.status == "FINISHED" for run in runs),
        "artifacts": sum(any(f.path.endswith(".txt") for f in c.list_artifacts(r)) for r in run_ids),
        "runs_with_system_metrics": sum(any(k.startswith("system/") for k in run.data.metrics) for run in runs),
    }


def run_round(ctx, uri: str, backend: str, mode: str, base: Path, writers: int, cfg: dict) -> dict:
    from trainer import tracking

    base.mkdir(parents=True, exist_ok=True)
    scale = f"bench-w{writers}"
    saved = tracking.enable_wal
    if mode == "sqlite-mlflow":  # the store and experiment exist before the writers start, without WAL
        tracking.enable_wal = lambda uri: False
    try:
        tracking.experiment_id(tracking.client(uri), scale)
    finally:
        tracking.enable_wal = saved
    barrier = ctx.Barrier(writers + 1)  # every writer connected; then all start together
    cfg = {**cfg, "mlflow_only": mode == "sqlite-mlflow"}
    procs, outs = [], [str(base / f"writer{i}.json") for i in range(writers)]
    for i in range(writers):
        p = ctx.Process(target=_writer, args=(uri, scale, i, cfg, barrier, outs[i]))
        p.start()
        procs.append(p)
    barrier.wait(timeout=900)
    start = time.perf_counter()
    for p in procs:
        p.join(timeout=1800)
    wall = time.perf_counter() - start
    results = [
        json.loads(Path(o).read_text()) if Path(o).exists() else {"run_id": None, "errors": ["no result"]} for o in outs
    ]
    counted = _count(uri, backend, results, cfg["epochs"], cfg["metrics"])
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


@contextlib.contextmanager
def store(mode: str, base: Path) -> Iterator[tuple[Callable[[int], tuple[str, str]], Path | None]]:
    """(writers -> (tracking URI, its database) for that round, the server's log or None)."""
    base.mkdir(parents=True, exist_ok=True)
    if mode in ("sqlite", "sqlite-mlflow"):
        yield (lambda w: (f"sqlite:///{base / f'w{w}.db'}",) * 2), None
        return
    from tests import cluster_store

    log = base / "server.log"
    with contextlib.ExitStack() as stack:
        if mode == "server-postgres":
            backend = stack.enter_context(cluster_store.postgres())
        else:
            backend = f"sqlite:///{base / 'mlflow.db'}"
        url = stack.enter_context(cluster_store.mlflow_server(backend, base / "artifacts", log))
        yield (lambda w: (url, backend)), log


def http_answers(log: Path | None, since: int) -> tuple[dict[str, int], int]:
    """({"5xx": n, "400": n} in the server's access log after byte `since`, the log's size now): MLflow's
    client retries a 5xx itself; a 400 reaches the caller."""
    if log is None:
        return {"5xx": 0, "400": 0}, 0
    text = log.read_bytes()[since:]
    codes = re.findall(rb'HTTP/1\.1" (\d\d\d)', text)
    return {"5xx": sum(c.startswith(b"5") for c in codes), "400": codes.count(b"400")}, since + len(text)


def table(rows: list[dict], cfg: dict, root: Path) -> str:
    lines = [
        f"writers x {cfg['epochs']} epochs x {cfg['metrics']} metrics, all starting together; system metrics every "
        f"{cfg['system_interval']} s (stores in {root}):",
        f"{'writers':>7} {'store':<16} {'expected':>8} {'stored':>8} {'lost':>5} {'dup':>4} {'errors':>6} "
        f"{'http 5xx':>8} {'http 400':>8} {'finished':>8} {'sysmetrics':>10} {'wall s':>7} {'metrics/s':>9}"
        "  first error",
    ]
    for r in sorted(rows, key=lambda r: (r["writers"], MODES.index(r["mode"]))):
        w = r["writers"]
        lines.append(
            f"{w:>7} {r['mode']:<16} {r['expected']:>8} {r['stored']:>8} {r['lost']:>5} {r['duplicates']:>4} "
            f"{r['writer_errors']:>6} {r['http_5xx']:>8} {r['http_400']:>8} {r['finished']:>4}/{w:<3} "
            f"{r['runs_with_system_metrics']:>6}/{w:<3} {r['wall_s']:>7} {r['metrics_per_s']:>9}  "
            f"{r['first_error'][:100]}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", default="8,32,64", help="comma-separated writer counts, one round each")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--metrics", type=int, default=16, help="metrics per epoch")
    ap.add_argument("--system-interval", type=float, default=10.0, help="s between system-metric samples")
    ap.add_argument("--modes", default="sqlite,server-sqlite,server-postgres", help=f"any of {', '.join(MODES)}")
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temporary folder)")
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown modes {sorted(unknown)}: use {', '.join(MODES)}")
    counts = [int(w) for w in args.writers.split(",")]
    cfg = {"epochs": args.epochs, "metrics": args.metrics, "system_interval": args.system_interval}
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_tracking-"))
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # before the fork server imports MLflow
    rows = []
    for mode in modes:
        with store(mode, root / mode) as (uri_of, log):
            for w in counts:
                seen = http_answers(log, 0)[1]
                r = run_round(ctx, *uri_of(w), mode, root / mode / f"w{w}", w, cfg)
                answers = http_answers(log, seen)[0]
                r.update(http_5xx=answers["5xx"], http_400=answers["400"])
                rows.append(r)
                print(json.dumps(r), flush=True)
    print("\n" + table(rows, cfg, root))
    return 0 if all(r["lost"] == 0 for r in rows if r["mode"] != "sqlite-mlflow") else 1


if __name__ == "__main__":
    sys.exit(main())
