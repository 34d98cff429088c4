"""The command line's options as typed values, built once per command and handed on whole."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.grid import load_recipes
from orchestrator.launch.options import DEPRECATED_SCHEDULES, LaunchOptions
from orchestrator.plan import make_plan
from orchestrator.report.build import build_report


@dataclass(frozen=True)
class GridOptions:
    """Which grid: the scale, the tables, seeds per row, the recipe (canonical name), `--set` overrides."""

    scale: str = "mini"
    tables: str = "all"
    seeds: int = 1
    recipe: str = ""
    overrides: tuple[str, ...] = ()

    def plan(self, seeds: int | None = None, row_seeds: dict[str, int] | None = None, recipe: str | None = None):
        return make_plan(
            self.scale,
            self.tables,
            seeds or self.seeds,
            recipe or self.recipe,
            list(self.overrides),
            row_seeds=row_seeds,
        )

    def argv(self) -> list[str]:
        """These options on a command line."""
        out = ["--scale", self.scale, "--tables", self.tables, "--seeds", str(self.seeds), "--recipe", self.recipe]
        return out + [x for o in self.overrides for x in ("--set", o)]


@dataclass(frozen=True)
class ClaimOptions:
    """How claims are decided: the test, the confidence level, the difference sought (None: the paper's)."""

    test: str = "welch"
    level: float = 0.95
    effect: float | None = None
    max_seeds: int = 10  # the sequential design's last look

    def report(self, plan, uri: str, overrides: tuple[str, ...] = ()):
        """The plan's report, its claims decided as these options say."""
        return build_report(
            plan, uri, overrides, test=self.test, level=self.level, effect=self.effect, max_seeds=self.max_seeds
        )


@dataclass(frozen=True)
class ResolveOptions:
    """`--resolve`'s budget: CPU-hours for the added seeds (None: unlimited), most seeds per row."""

    budget_cpu_h: float | None = None
    max_seeds: int = 10
    max_rounds: int = 50


def grid_options(args: Any, recipe: str | None = None) -> GridOptions:
    """The grid options of `args`; the recipe defaults to experiments/recipes.yaml's `default:`."""
    book = load_recipes()
    name = recipe or args.recipe
    return GridOptions(
        scale=args.scale,
        tables=args.tables,
        seeds=args.seeds,
        recipe=book.canonical(name if name is not None else book.default),
        overrides=tuple(args.overrides),
    )


def claim_options(args: Any) -> ClaimOptions:
    return ClaimOptions(test=args.test, level=args.level, effect=args.effect, max_seeds=args.max_seeds)


def launch_options(args: Any, wait: bool) -> LaunchOptions:
    """The launch options of `args`, paths and URIs made absolute."""
    if args.schedule in DEPRECATED_SCHEDULES:
        print(
            f"note: --schedule {args.schedule} is now --schedule {DEPRECATED_SCHEDULES[args.schedule]}",
            file=sys.stderr,
        )
    return LaunchOptions(
        launcher=args.launcher,
        workdir=Path(args.workdir),
        tracking_uri=args.tracking_uri,
        workers=args.workers,
        threads=args.threads,
        max_cohort=args.max_cohort,
        cohorts=not args.no_cohorts,
        schedule=args.schedule,
        cost_store=args.cost_store,
        ray_address=args.ray_address,
        slurm_config=args.slurm_config,
        wait=wait,
    ).resolved()
