"""What a training process tells its launcher, as values: the engine's callbacks (a run started, stepped,
ended an epoch, ended) and the local pool's item start and end. They cross process boundaries pickled
(multiprocessing) or as JSON (Ray Tune results)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from orchestrator.launch.outcome import Outcome


@dataclass(frozen=True)
class RunStarted:
    run: str
    start_epoch: int
    steps: int  # per epoch
    epochs: int


@dataclass(frozen=True)
class RunProgress:
    run: str
    epoch: int
    step: int
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EpochEnded:
    run: str
    epoch: int  # 0-based: the epoch that ended
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunEnded:
    run: str
    status: str
    reason: str | None = None

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.status, self.reason or "")


RunEvent = RunStarted | RunProgress | EpochEnded | RunEnded
_TYPES = {t.__name__: t for t in (RunStarted, RunProgress, EpochEnded, RunEnded)}


@dataclass(frozen=True)
class ItemStarted:
    worker: int
    item: str


@dataclass(frozen=True)
class ItemEnded:
    worker: int
    item: str
    results: dict[str, Outcome]


def to_json(event: RunEvent) -> str:
    return json.dumps([type(event).__name__, dataclasses.asdict(event)])


def from_json(text: str) -> RunEvent:
    name, fields = json.loads(text)
    return _TYPES[name](**fields)


class Emitter:
    """An engine callback (trainer.engine.Callback) that turns its calls into events for `send`."""

    def __init__(self, send):
        self.send = send

    def on_start(self, run_hash, spec, start_epoch, steps) -> None:
        self.send(RunStarted(run_hash, start_epoch, steps, spec.recipe.epochs))

    def on_progress(self, run_hash, epoch, step, metrics) -> None:
        self.send(RunProgress(run_hash, epoch, step, dict(metrics)))

    def on_epoch(self, run_hash, epoch, metrics) -> None:
        self.send(EpochEnded(run_hash, epoch, dict(metrics)))

    def on_end(self, run_hash, status, reason) -> None:
        self.send(RunEnded(run_hash, status, reason))
