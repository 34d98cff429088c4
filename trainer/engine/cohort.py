"""A cohort: the runs that train in lockstep on one data stream and one teacher, and what their steps share.

Runs with equal `cohort_key` see identical batches, so each batch is augmented once and goes through the
teacher once for all of them. `Cohort` is that shared context, built once and passed whole to the loop;
`Batch` is one micro-batch as every member sees it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from trainer.distributed import DistEnv
from trainer.engine.member import Member
from trainer.precision import Precision
from trainer.spec import ExperimentSpec


class Callback(Protocol):
    """Progress hooks; launchers and the CLI plug their displays in here."""

    def on_start(self, run_hash: str, spec: ExperimentSpec, start_epoch: int, steps: int) -> None: ...
    def on_progress(self, run_hash: str, epoch: int, step: int, metrics: dict[str, float]) -> None: ...
    def on_epoch(self, run_hash: str, epoch: int, metrics: dict[str, float]) -> None: ...
    def on_end(self, run_hash: str, status: str, reason: str | None) -> None: ...


class NonFiniteLoss(RuntimeError):
    """A loss term went NaN or infinite; the message says at which epoch and step, and which terms."""


def cohort_key(spec: ExperimentSpec) -> str:
    """Runs with equal keys see identical batches and can share one teacher forward per batch."""
    payload = {
        "teacher": spec.teacher.model_dump(mode="json") if spec.teacher else None,
        "data": spec.data.model_dump(mode="json", exclude={"num_workers"}),
        "seed": spec.seed,
        "batch_size": spec.recipe.batch_size,
        "global_batch": spec.recipe.global_batch,
        "amp": spec.recipe.amp,
    }
    if spec.recipe.precision is not None:  # one autocast for the teacher's forward and every student's
        payload["precision"] = spec.recipe.precision
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Cohort:
    """What the members' steps share: the data, the frozen teacher and the features their methods read from
    it, mixup, the process's place in the job, its precision, the progress callbacks, and the number of
    micro-batches per optimizer step. `spec`: the first run's spec, for what every member's reads the same
    (data, seed, teacher, batch, precision)."""

    spec: ExperimentSpec
    members: list[Member]
    train_data: Any
    val_data: Any
    env: DistEnv
    precision: Precision
    accumulation: int = 1
    callbacks: tuple = ()
    teacher: nn.Module | None = None
    t_blocks: tuple = ()
    mixup: Any = None

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch."""
        return len(self.train_data) // self.accumulation


@dataclass
class Batch:
    """One micro-batch as every member of the cohort sees it: images, targets (mixed, with mixup), the
    teacher's logits and tapped features, and the key its randomness (drop-path, L_rs, masks) starts from."""

    x: torch.Tensor
    target: torch.Tensor
    t_logits: torch.Tensor | None = None
    t_feats: dict | None = None
    key: int = 0
