"""Read MLflow, and only MLflow, into one `RunResult` per planned run.

One paged search over the scale's experiment finds every run by its `kdgrid.hash` tag; the per-epoch
history of `val.top1` is fetched only for the runs Figure 4 draws. Nothing else is read: not the work
directory, not checkpoints. A missing store, or a SQLite file that does not exist yet, reads as empty
(and is not created).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from trainer import tracking

# MLflow run status -> what the report calls it
_STATUS = {"FINISHED": "finished", "RUNNING": "running", "SCHEDULED": "running", "FAILED": "failed", "KILLED": "killed"}


@dataclass
class RunResult:
    """What MLflow knows about one content hash."""

    hash: str
    status: str = "missing"  # finished | running | failed | killed | missing
    run_id: str | None = None
    experiment_id: str | None = None
    name: str | None = None
    epoch: int | None = None  # epochs completed: the step of the latest `val.top1`
    epochs: int | None = None  # epochs planned (the run's `recipe.epochs`)
    last_top1: float | None = None
    best_top1: float | None = None
    teacher_top1: float | None = None
    reason: str | None = None  # kdgrid.failure
    updated_ms: int | None = None  # timestamp of the newest metric
    tags: dict[str, str] = field(default_factory=dict)
    history: list[tuple[int, float]] | None = None  # (epoch, val.top1), when asked for
    protocol: dict[str, str] = field(default_factory=dict)  # what ran: the run's `protocol.*` params
    heads: dict[str, float] = field(default_factory=dict)  # a distilled DeiT's heads: last_cls_top1, best_dist_top1 ...

    def top1(self, head: str | None = None, metric: str = "last") -> float | None:
        """The final-epoch ("last") or best-epoch top-1 of the model's output, or of one head of a distilled
        DeiT alone (head "cls" or "dist"; "avg" and None are the output, the heads' average)."""
        if head in (None, "avg"):
            return self.last_top1 if metric == "last" else self.best_top1
        return self.heads.get(f"{metric}_{head}_top1")

    @property
    def short_id(self) -> str:
        return self.run_id[:8] if self.run_id else "-"

    @property
    def finished(self) -> bool:
        return self.status == "finished" and self.last_top1 is not None


@dataclass
class Collected:
    uri: str
    scale: str
    results: dict[str, RunResult]
    error: str | None = None  # the store could not be read: why

    def get(self, h: str) -> RunResult:
        return self.results.get(h) or RunResult(hash=h)


def store_absent(uri: str) -> bool:
    """A local store (SQLite file, file: folder, bare path) that does not exist yet: empty, and reading it
    must not create it."""
    path = tracking.parse_uri(uri).path
    return path is not None and not path.exists()


def _int(v: Any) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def result_of(run, planned_epochs: int | None = None) -> RunResult:
    """A RunResult from an MLflow Run entity (as returned by search_runs)."""
    data = run.data
    metrics = data.metrics
    steps = {m.key: (m.step, m.timestamp) for m in data.to_proto().metrics}
    epoch = steps.get("val.top1", (None, None))[0]
    updated = max((t for _, t in steps.values()), default=None)
    epochs = _int(data.params.get("recipe.epochs")) or planned_epochs
    return RunResult(
        hash=data.tags.get(tracking.HASH, ""),
        status=_STATUS.get(run.info.status, run.info.status.lower()),
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        name=run.info.run_name,
        epoch=int(epoch) if epoch is not None else (0 if run.info.status != "FINISHED" else epochs),
        epochs=epochs,
        last_top1=metrics.get("last_top1"),
        best_top1=metrics.get("best_top1"),
        teacher_top1=metrics.get("teacher.top1"),
        reason=data.tags.get(tracking.FAILURE),
        updated_ms=updated,
        tags=dict(data.tags),
        protocol={k[len("protocol.") :]: v for k, v in data.params.items() if k.startswith("protocol.")},
        heads={k: v for k, v in metrics.items() if k.endswith(("_cls_top1", "_dist_top1"))},
    )


def collect(scale: str, tracking_uri: str, planned: dict[str, int | None], histories: Iterable[str] = ()) -> Collected:
    """Results of the planned hashes ({hash: planned epochs}) in `scale`'s experiment.

    `histories`: hashes whose `val.top1` history (Figure 4's curves) is fetched too.
    """
    out = Collected(uri=tracking_uri, scale=scale, results={h: RunResult(hash=h, epochs=e) for h, e in planned.items()})
    if store_absent(tracking_uri):
        return out
    try:
        c = tracking.client(tracking_uri)
        found = tracking.runs_by_hash(c, scale, planned)
        for h, run in found.items():
            out.results[h] = result_of(run, planned.get(h))
        for h in histories:
            r = out.results.get(h)
            if r is None or r.run_id is None:
                continue
            hist = tracking.retry(c.get_metric_history, r.run_id, "val.top1")
            by_step = {}
            for m in sorted(hist, key=lambda m: (m.step, m.timestamp)):
                by_step[int(m.step)] = float(m.value)  # a resumed epoch logged twice: the newest counts
            r.history = sorted(by_step.items())
    except Exception as err:  # unreachable server, foreign database, ...: report it, do not crash
        out.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    return out
