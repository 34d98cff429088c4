"""What a plan is: the runs of the grid (deduplicated, dependencies first) and which table rows each
stands for."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.grid import AblationTable
from trainer.spec import ExperimentSpec


@dataclass(frozen=True)
class RowRef:
    """One row of one table."""

    table: str  # "2".."7" or "fig4"
    index: int  # 0-based row index in the YAML
    key: str  # short label, e.g. "t2.r9" or "fig4.manifold"


@dataclass
class PlannedRun:
    hash: str  # spec.content_hash()
    spec: ExperimentSpec  # fully resolved, with name/tags/scale/recipe_name set
    role: str  # "student" | "teacher"
    uses: list[RowRef]  # rows (in the requested tables) that this run stands for
    deps: list[str]  # hashes of runs that must finish first (its teacher run)
    seed: int


@dataclass
class Plan:
    scale: str
    recipe: str
    seeds: int
    tables: list[AblationTable]  # the requested tables (and figure4 when included)
    runs: list[PlannedRun]  # deduplicated, dependencies first (teachers before students)
    rows_before_dedup: int  # (row, seed) pairs + teacher runs, before merging
    launch: dict  # the scale's `launch:` hints (max_cohort, resources...), {} if none
    row_hashes: dict[tuple[str, int], list[str]] = field(default_factory=dict, repr=False)  # (table, index) -> per seed
    # Every row of the full grid (requested or not) -> its seed-0 run: which rows are the same run as a row
    # named elsewhere ("t2.r9": the released code's reference).
    row_keys: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_hash = {r.hash: r for r in self.runs}

    def run(self, h: str) -> PlannedRun:
        return self._by_hash[h]

    def row_runs(self, table: str, index: int) -> list[PlannedRun]:
        """The runs of one row, one per seed, in seed order."""
        return [self._by_hash[h] for h in self.row_hashes[(str(table), index)]]

    def table(self, table: str) -> AblationTable:
        return next(t for t in self.tables if t.table == str(table))

    @property
    def students(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.role == "student"]

    @property
    def teachers(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.role == "teacher"]
