"""How to launch a grid: one typed value built once from the command line and handed whole to `execute`
(and to `--resolve`'s rounds), so no option is dropped on the way."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from trainer.tracking import absolute_uri

SCHEDULES = ("cost", "order")  # cost: critical path first, cohorts cut by cost; order: items in plan order
DEPRECATED_SCHEDULES = {"plan": "order"}  # `--schedule plan` named the plan order before `plan` meant the grid


def schedule_name(name: str) -> str:
    """The schedule `name` stands for (a deprecated alias maps to its new name)."""
    name = DEPRECATED_SCHEDULES.get(name, name)
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: one of {', '.join(SCHEDULES)}")
    return name


@dataclass(frozen=True)
class LaunchOptions:
    launcher: str = "local"
    workdir: Path = Path("kdgrid_runs")  # checkpoints, locks, logs
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else ./kdgrid.db
    workers: int | None = None  # parallel processes / trials / jobs (None: the launcher's default)
    threads: int = 1  # torch threads per training process
    max_cohort: int | None = None  # most runs sharing a teacher pass (None: the scale's hint)
    cohorts: bool = True  # False: every run in its own process
    schedule: str = "cost"
    cost_store: str | None = None  # the store whose cost.* metrics price the runs (None: the tracking store)
    ray_address: str | None = None
    slurm_config: str | None = None
    wait: bool = True  # reproduce waits; launch returns once the work is handed over

    def resolved(self) -> LaunchOptions:
        """Paths and URIs made absolute (every worker, trial and job must reach them), the schedule's name
        checked; idempotent."""
        return dataclasses.replace(
            self,
            workdir=Path(self.workdir).expanduser().resolve(),
            tracking_uri=absolute_uri(self.tracking_uri),
            cost_store=absolute_uri(self.cost_store) if self.cost_store else None,
            schedule=schedule_name(self.schedule),
        )

    @property
    def rates_store(self) -> str:
        """Where the cost model's rates are fitted: the cost store, else the tracking store."""
        return self.cost_store or absolute_uri(self.tracking_uri)
