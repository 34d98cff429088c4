"""Entry point of a training process: group specs into cohorts and train each to completion.

Used by `kdgrid train` and by every launcher's worker (a local process, a Ray trial, a Slurm task).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from trainer import engine
from trainer.distributed import init_from_env
from trainer.spec import ExperimentSpec, load_experiment


def cohorts(specs: list[ExperimentSpec]) -> list[list[ExperimentSpec]]:
    """Specs grouped by cohort key, in first-seen order."""
    groups: dict[str, list[ExperimentSpec]] = {}
    for s in specs:
        groups.setdefault(engine.cohort_key(s), []).append(s)
    return list(groups.values())


def train_specs(
    specs: list[ExperimentSpec | str | Path],
    *,
    work: str | Path = "kdgrid_runs",
    tracking_uri: str | None = None,
    threads: int | None = None,
    device: str | None = None,
    callbacks=(),
    force: bool = False,
) -> dict[str, str]:
    if threads:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    loaded = [s if isinstance(s, ExperimentSpec) else load_experiment(s) for s in specs]
    env = init_from_env(device)
    results: dict[str, str] = {}
    for group in cohorts(loaded):
        results.update(
            engine.train(group, env=env, work=work, tracking_uri=tracking_uri, callbacks=callbacks, force=force)
        )
    return results
