"""`kdgrid`: the command line, parsed here and dispatched to its command (orchestrator/commands/<name>.py).

A command's module is imported only when it runs (it loads torch, mlflow, Ray, ...), so `kdgrid --help`
answers at once; the launchers are listed from their registry without importing them. Before any of
them loads, the libraries' telemetry is turned off (trainer/telemetry.py) for this process and every
process it starts, unless the user asks otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from orchestrator.launch import registry
from orchestrator.launch.options import DEPRECATED_SCHEDULES, SCHEDULES
from orchestrator.requirements import check_startup
from trainer import telemetry

DEFAULT_WORKDIR = "kdgrid_runs"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./kdgrid.db)",
    )
    p.add_argument(
        "--workdir",
        default=DEFAULT_WORKDIR,
        help="where runs keep checkpoints, locks and logs (default: ./kdgrid_runs)",
    )


def _grid(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", default="mini", help="paper | mini | smoke, or a path to a scale YAML (default: mini)")
    p.add_argument(
        "--tables", default="all", help="comma-separated table numbers, e.g. 2,5 (default: all, with Figure 4)"
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds per row (default: 1)")
    p.add_argument(
        "--recipe",
        default=None,
        help="recipe for manifold rows: paper-mean | released | paper-sum (`paper` = paper-sum); "
        "default: `default:` in experiments/recipes.yaml",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scale setting, e.g. --set data.root=/datasets/imagenet (repeatable; YAML values)",
    )


def _launch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--launcher", choices=registry.names(), default="local", help="(default: local)")
    p.add_argument("--workers", type=int, default=None, help="local: parallel worker processes (default: CPU cores)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process (default: 1)")
    p.add_argument("--ray-address", default=None, help="ray: an existing cluster's address (default: start one here)")
    p.add_argument("--slurm-config", default=None, help="slurm: launcher config YAML (resources, partition, ...)")
    p.add_argument("--no-cohorts", action="store_true", help="train every run in its own process")
    p.add_argument(
        "--max-cohort", type=int, default=None, help="most runs sharing one teacher pass (default: from the scale)"
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES + tuple(DEPRECATED_SCHEDULES),
        default="cost",
        help="local, ray: cost = critical path first, cohorts cut by estimated cost (default); "
        "order = items in plan order, cut by run count (`plan`: the old name of order)",
    )
    p.add_argument(
        "--cost-store",
        default=None,
        metavar="URI",
        help="MLflow store whose logged cost.* metrics price the runs (default: the tracking store)",
    )


def _claims(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--test",
        choices=("welch", "paired"),
        default="welch",
        help="the test deciding claims: Welch's t-test, or a paired t-test over seeds both rows "
        "share (same seed = same data order) (default: welch)",
    )
    p.add_argument(
        "--level", type=float, default=0.95, help="confidence level of the claims' intervals (default: 0.95)"
    )
    p.add_argument(
        "--max-seeds",
        type=int,
        default=10,
        help="the sequential design's last look, in seeds per row: claims are tested at looks from --seeds to "
        "this (the level holds however many `--resolve` adds); the most seeds --resolve gives a row (default: 10)",
    )
    p.add_argument(
        "--effect",
        type=float,
        default=None,
        metavar="POINTS",
        help="the difference a 'smaller than the paper's' verdict rules out, in top-1 points (default: each "
        "comparison's difference in the paper)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdgrid",
        description="Reproduce the ablation grid of 'Efficient Vision Transformers via Fine-Grained Manifold "
        "Distillation' (Tables 2-7, Figure 4): plan, launch, track in MLflow, report.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one spec file (or several, sharing a teacher pass when they can)")
    p.add_argument("specs", nargs="+", help="experiment spec YAML files")
    _common(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--force", action="store_true", help="train again even if MLflow has it finished")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("plan", help="print the planned runs of a grid, deduplicated, with their MLflow status")
    _grid(p)
    _common(p)
    p.add_argument("--dump", default=None, metavar="DIR", help="also write every planned run's resolved spec YAML here")

    p = sub.add_parser("launch", help="launch the missing runs of a grid and return")
    _grid(p)
    _common(p)
    _launch(p)

    p = sub.add_parser("reproduce", help="plan, launch what is missing, wait, and write the report")
    _grid(p)
    _common(p)
    _launch(p)
    p.add_argument("--out", default="reports", help="report folder (default: ./reports)")
    _claims(p)
    p.add_argument(
        "--resolve",
        action="store_true",
        help="after the grid, add seeds to the rows of claims without a verdict, look by look, until every "
        "claim has one, reaches its last look, or the budget is spent",
    )
    p.add_argument(
        "--budget-cpu-hours",
        type=float,
        default=None,
        help="--resolve: CPU-hours (the runs' logged cost.*) the added seeds may spend (default: unlimited)",
    )

    p = sub.add_parser("report", help="rebuild Tables 2-7 and Figure 4 from MLflow beside the paper's numbers")
    _grid(p)
    _common(p)
    p.add_argument(
        "--format",
        choices=("md", "latex", "html", "csv", "json"),
        default="md",
        help="md, latex, html: the report; csv, json: every table row as data (default: md)",
    )
    _claims(p)
    p.add_argument(
        "--added-seeds",
        action="store_true",
        help="also count the seeds beyond --seeds that MLflow has for some rows (added by `reproduce --resolve`)",
    )
    p.add_argument("--out", default=None, help="write the report (and figure) into this folder")

    p = sub.add_parser(
        "tune",
        help="search spec fields with Ray Tune (random search, ASHA), re-run the best over seeds, "
        "report where the paper's choice lands",
    )
    p.add_argument("search", help="search file, e.g. ablations/search-manifold.yaml")
    p.add_argument("--scale", default="mini", help="paper | mini | smoke, or a path to a scale YAML (default: mini)")
    p.add_argument(
        "--recipe", default=None, help="recipe of the base row (default: `default:` in experiments/recipes.yaml)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scale setting (repeatable), e.g. --set student.recipe.epochs=6",
    )
    _common(p)
    p.add_argument("--trials", type=int, default=16, help="trials to sample (Tune's num_samples; default: 16)")
    p.add_argument("--workers", type=int, default=None, help="trials at a time (default: CPUs / --threads, or GPUs)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (and Ray CPUs) per trial (default: 1)")
    p.add_argument(
        "--budget-cpu-hours",
        type=float,
        default=None,
        help="stop the search once its runs have spent this many CPU-hours (the engine's cost.cpu_s)",
    )
    p.add_argument("--budget-gpu-hours", type=float, default=None, help="the same for GPU wall-hours of its epochs")
    p.add_argument("--time-budget-s", type=float, default=None, help="Tune's wall-clock limit on the search")
    p.add_argument(
        "--rerun-top", type=int, default=3, help="re-run the best N configurations over --seeds (default: 3)"
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds for the re-runs and the paper's choice (default: 3)")
    p.add_argument("--out", default=None, help="report folder (default: reports/search-<name>-<scale>)")
    p.add_argument("--report-only", action="store_true", help="write the report from MLflow; train nothing")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster's address (default: start one here)")

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 against the same store")
    _common(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=5000)

    p = sub.add_parser(
        "audit", help="every setting of a scale's runs beside its source (paper, released code, DeiT, cls_KD)"
    )
    p.add_argument("--scale", default="paper", help="paper | mini | smoke, or a path to a scale YAML (default: paper)")
    p.add_argument("--tables", default=None, help="comma-separated tables (default: every table of ablations/)")
    p.add_argument("--recipe", default="all", help="recipes whose rows to judge: all (default), or a,b")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--sources", default=None, help="the sources file (default: experiments/sources.yaml)")
    p.add_argument("--out", default=None, help="write audit.md and audit.json into this folder (default: print)")
    p.add_argument("--format", choices=("md", "json"), default="md", help="what to print without --out")
    p.add_argument("--strict", action="store_true", help="exit 1 when a setting is UNRECORDED or has NO SOURCE")

    sub.add_parser("check", help="check the installed torch, timm, mlflow, ... against the versions kdgrid supports")
    return parser


def command_module(args: argparse.Namespace) -> str:
    """The module of orchestrator.commands that runs this command line."""
    if args.command == "reproduce" and args.resolve:
        return "resolve"
    return {"reproduce": "launch"}.get(args.command, args.command)


def main(argv: list[str] | None = None) -> int:
    telemetry.apply()  # before MLflow or Ray is imported: they read it then
    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    unsupported = check_startup() if args.command != "check" else None  # a millisecond: reads dist-info names
    if unsupported:
        print(f"error: {unsupported}", file=sys.stderr)
        return 2
    try:
        return importlib.import_module(f"orchestrator.commands.{command_module(args)}").run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        from trainer.spec import SpecError

        if isinstance(err, SpecError):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
