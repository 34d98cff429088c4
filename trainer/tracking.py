"""The MLflow layout, in one place: where runs live, how they are named and tagged, how one is found.

One experiment per scale (`kdgrid-mini`, ...); one MLflow run per content hash, found again by its
`kdgrid.hash` tag, so a killed run resumes into the same MLflow run and a finished one is never redone.
The trainer writes through `RunLog`; the orchestrator and the report read through `runs_by_hash`.
Each process owns explicit run ids (MlflowClient, not the fluent API): a cohort logs several runs at once.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HASH, SCALE, RECIPE, ROLE = "kdgrid.hash", "kdgrid.scale", "kdgrid.recipe", "kdgrid.role"
TABLES, ROWS, FAILURE, LOG = "kdgrid.tables", "kdgrid.rows", "kdgrid.failure", "kdgrid.log"
SEED = "kdgrid.seed"  # the planned run's seed (a string, as every tag)
# metric: a cohort's epoch training CPU split evenly, equal for one process's runs (costs regroups on it)
TRAIN_SHARE = "cost.train_share_cpu_s"
DEFAULT_DB = "kdgrid.db"
# MLflow's own tags: what the UI reads
PARENT, NOTE, SOURCE, SOURCE_TYPE = (
    "mlflow.parentRunId",
    "mlflow.note.content",
    "mlflow.source.name",
    "mlflow.source.type",
)
# MLflow 3's UI opens an experiment on its GenAI overview unless the experiment says it holds training runs
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
SYSTEM_METRICS_INTERVAL = "KDGRID_SYSTEM_METRICS_INTERVAL"  # seconds between samples; 0 turns them off


def default_uri() -> str:
    """MLFLOW_TRACKING_URI, else a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


@dataclass(frozen=True)
class Store:
    """A tracking URI, parsed: `path` is a local store's SQLite file or file-store folder (None: a server)."""

    uri: str  # absolute where the store is local, so every worker, trial and job can use it
    path: Path | None
    sqlite: bool = False


def parse_uri(uri: str | None = None) -> Store:
    """The one parser of MLflow tracking URIs (default: `default_uri()`): `sqlite:///file`, `file:folder`,
    a bare folder (MLflow's file store), or a server (any other scheme). A relative path is made absolute."""
    uri = uri or default_uri()
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_absolute():
            path = path.resolve()
            uri = f"sqlite:///{path}"
        return Store(uri, path, sqlite=True)
    if uri.startswith("file:"):
        path = Path(uri[len("file:") :].removeprefix("//")).expanduser()
        if not uri.startswith("file:///"):
            path = path.resolve()
            uri = path.as_uri()
        return Store(uri, path)
    if "://" not in uri:
        path = Path(uri).expanduser().resolve()
        return Store(str(path), path)
    return Store(uri, None)


def absolute_uri(uri: str | None = None) -> str:
    return parse_uri(uri).uri


def experiment_name(scale: str) -> str:
    return f"kdgrid-{scale}"


_TRANSIENT = (
    *("database is locked", "database table is locked", "database is busy"),  # SQLite's own words
    "queuepool limit",  # `mlflow server`'s connection pool stayed full for 30 s (a 400, which MLflow does not retry)
)
# A tracking server that is not answering: restarting (nothing listens on its port), or it died with our request
# in flight (requests' and urllib3's words, inside MLflow's "API request to ... failed with exception ...").
_UNREACHABLE = (
    "connection refused",
    "failed to establish a new connection",
    "connection aborted",
    "connection reset",
    "remote end closed connection",
    "too many 502 error responses",
    "too many 503 error responses",
    "too many 504 error responses",
)
OUTAGE_S = "KDGRID_TRACKING_OUTAGE_S"  # how long a call waits for an unreachable server (default 900 s)


def retry(fn: Callable, *args, **kwargs):
    """SQLite allows one writer at a time: several training processes retry (for up to ~1 min, on top of
    MLflow's 20 s busy timeout) instead of failing or losing a metric; so do writers that an overloaded
    `mlflow server` turns away (64 writers at once, benchmarks.bench_tracking). A server that does not answer
    (restarting, or gone with the request in flight) is waited for up to $KDGRID_TRACKING_OUTAGE_S (900 s):
    MLflow's HTTP client retries it itself with backoff (7 times, ~4 min by default), but a restart may take
    longer, and a run that trained for days must not fail for it. Anything else is raised at once."""
    delay, deadline = 0.05, None
    for attempt in itertools.count():
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException, sqlalchemy OperationalError, requests' errors
            text = str(err).lower()
            if any(t in text for t in _UNREACHABLE):
                deadline = deadline or time.monotonic() + float(os.environ.get(OUTAGE_S, "900"))
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(5.0, 0.5 * 2 ** min(attempt, 4)))
                continue
            if not any(t in text for t in _TRANSIENT) or attempt >= 29:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


_WAL_DONE: set[str] = set()


def enable_wal(uri: str) -> bool:
    """Put an existing SQLite store in write-ahead-log mode (persistent, once per file): readers no longer
    block the writer and each commit is one append, so concurrent training processes wait far less for the
    lock. MLflow itself sets a 20 s busy timeout per session. WAL needs a local disk (not NFS)."""
    store = parse_uri(uri)
    if not store.sqlite or uri in _WAL_DONE:
        return False
    path = store.path
    if not path.exists():  # never create a store here
        return False
    import sqlite3

    try:
        with sqlite3.connect(path, timeout=30) as con:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    except sqlite3.Error:
        return False
    _WAL_DONE.add(uri)
    return str(mode).lower() == "wal"


def client(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    # MLflow prints "View run ... at: URL" to stdout on closing a run of a server: stdout is kdgrid's
    # (`kdgrid report --format json` writes its data there). MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=false restores it.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return MlflowClient(tracking_uri=uri or default_uri())


def artifact_root(uri: str) -> str | None:
    """Artifacts beside a local SQLite store (./mlartifacts), not in the process's working directory."""
    store = parse_uri(uri)
    return (store.path.resolve().parent / "mlartifacts").as_uri() if store.sqlite else None


def experiment_id(c, scale: str) -> str:
    name = experiment_name(scale)
    exp = retry(c.get_experiment_by_name, name)
    if exp is None:
        try:
            exp_id = retry(
                c.create_experiment,
                name,
                artifact_location=artifact_root(c.tracking_uri),
                tags={"kdgrid.scale": scale, EXPERIMENT_KIND: TRAINING_KIND},
            )
            enable_wal(c.tracking_uri)
            return exp_id
        except Exception:  # created meanwhile by another process
            exp = retry(c.get_experiment_by_name, name)
            if exp is None:
                raise
    if exp.tags.get(EXPERIMENT_KIND) != TRAINING_KIND:  # experiments created before kdgrid set it
        retry(c.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND, TRAINING_KIND)
    enable_wal(c.tracking_uri)
    return exp.experiment_id


def runs_by_hash(c, scale: str, hashes: Iterable[str] | None = None) -> dict[str, Any]:
    """The MLflow run of each content hash (the newest where there are several)."""
    exp = retry(c.get_experiment_by_name, experiment_name(scale))
    if exp is None:
        return {}
    wanted = set(hashes) if hashes is not None else None
    out: dict[str, Any] = {}
    token = None
    while True:
        page = retry(
            c.search_runs,
            [exp.experiment_id],
            max_results=1000,
            page_token=token,
            order_by=["attributes.start_time ASC"],
        )
        for run in page:
            h = run.data.tags.get(HASH)
            if h and (wanted is None or h in wanted):
                out[h] = run
        token = page.token
        if not token:
            return out


def finished(run) -> bool:
    """Whether an MLflow run (or None: no run) ended FINISHED: the one test of "this run is done"."""
    return run is not None and run.info.status == "FINISHED"


def finished_runs(c, scale: str, hashes: Iterable[str] | None = None) -> dict[str, Any]:
    """The finished MLflow run of each of these content hashes that has one."""
    return {h: run for h, run in runs_by_hash(c, scale, hashes).items() if finished(run)}


def run_state(run) -> str:
    """finished / partial (started, not finished: killed, failed or still running) / missing."""
    if run is None:
        return "missing"
    return "finished" if finished(run) else "partial"


def fetch_artifact(c, run_id: str, path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(retry(c.download_artifacts, run_id, path, str(dst)))


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = str(list(v) if isinstance(v, tuple) else v)[:6000]
    return out


class RunLog:
    """The MLflow run of one content hash, created on first start and reopened on resume."""

    def __init__(self, c, run_id: str):
        self.c, self.run_id = c, run_id
        self.monitor = None  # MLflow's SystemMetricsMonitor, while the run trains

    @classmethod
    def open(cls, c, spec, run_hash: str, run_id: str | None = None, new: bool = False) -> RunLog:
        """Reopen this hash's run (by id, else by tag), or create it; `new` always creates one."""
        from mlflow.entities import RunStatus

        exp = experiment_id(c, spec.scale)
        if new:
            run_id = None
        elif run_id is None:
            existing = runs_by_hash(c, spec.scale, [run_hash]).get(run_hash)
            run_id = existing.info.run_id if existing is not None else None
        run = None
        if run_id is not None:
            try:
                run = retry(c.get_run, run_id)
            except Exception:  # the store was reset since the checkpoint was written
                run = None
        tags = {HASH: run_hash, SCALE: spec.scale, SOURCE: "kdgrid train", SOURCE_TYPE: "LOCAL", **spec.tags}
        if spec.recipe_name:
            tags[RECIPE] = spec.recipe_name
        if run is not None:
            name = spec.name if spec.name and spec.name != run.info.run_name else None
            retry(c.update_run, run_id, status=RunStatus.to_string(RunStatus.RUNNING), name=name)
            if FAILURE in run.data.tags:
                retry(c.delete_tag, run_id, FAILURE)
            if run.data.tags.get(PARENT):  # a run shared by several grids stays where it was first trained
                tags.pop(PARENT, None)
            log = cls(c, run_id)
            log.set_tags(tags)  # the grid may have grown: refresh which tables and rows use this run
            return log
        run = retry(c.create_run, exp, tags=tags, run_name=spec.name or run_hash)
        return cls(c, run.info.run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = retry(self.c.get_run, self.run_id).data.params
        items = [Param(k, v) for k, v in _flatten(params).items() if k not in existing]
        for i in range(0, len(items), 100):
            retry(self.c.log_batch, self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            retry(self.c.log_batch, self.run_id, tags=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if items:
            retry(self.c.log_batch, self.run_id, metrics=items)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        retry(self.c.log_artifact, self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """`text` as the artifact `artifact_file` (e.g. failure/traceback.txt), no local file needed."""
        retry(self.c.log_text, self.run_id, text, artifact_file)

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which metric `key` is logged already (what a resumed run must not log again)."""
        return {m.step for m in retry(self.c.get_metric_history, self.run_id, key)}

    def log_datasets(self, datasets: Iterable[tuple[Any, str]]) -> None:
        """(mlflow Dataset entity, context) pairs, e.g. "training" / "validation": the UI's Dataset column.
        MLflow keeps one input per (dataset, context), so logging again on resume adds nothing."""
        from mlflow.entities import DatasetInput, InputTag

        inputs = [DatasetInput(ds, tags=[InputTag("mlflow.data.context", ctx)]) for ds, ctx in datasets]
        if not inputs:
            return
        for attempt in range(5):
            try:
                return retry(self.c.log_inputs, self.run_id, datasets=inputs)
            except Exception as err:
                # MLflow checks whether the experiment has the dataset, then inserts it: two runs that start
                # together race, and the loser gets UNIQUE(experiment, name, digest). Again, it finds the row.
                if "unique constraint failed: datasets" not in str(err).lower() or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def start_system_metrics(self, gpu: int | None = None) -> None:
        """MLflow's own system metrics (CPU, memory, disk, network through psutil; GPU through pynvml) every
        $KDGRID_SYSTEM_METRICS_INTERVAL seconds (default 10; 0: off), as `system/...` metrics of this run.
        `gpu`: the CUDA device index the run trains on: only that GPU is reported (None: no GPU)."""
        from trainer.system_metrics import start_monitor

        interval = float(os.environ.get(SYSTEM_METRICS_INTERVAL, "10"))
        if interval > 0 and self.monitor is None:
            self.monitor = start_monitor(self.run_id, self.c.tracking_uri, interval, gpu)

    def stop_system_metrics(self) -> None:
        if self.monitor is not None:
            monitor, self.monitor = self.monitor, None
            monitor.finish()

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        self.stop_system_metrics()  # its last samples land before the run is closed
        if reason:
            self.set_tags({FAILURE: reason})
        retry(self.c.set_terminated, self.run_id, status)
