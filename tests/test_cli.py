"""The command line: `kdgrid --help` answers without importing the heavy stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_help_imports_no_heavy_module():
    code = (
        "import sys; from orchestrator.cli import build_parser; build_parser().format_help(); "
        "heavy = [m for m in ('torch', 'timm', 'mlflow', 'ray', 'submitit', 'matplotlib') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    for cmd in ("train", "plan", "launch", "reproduce", "report", "ui", "check"):
        assert cmd in out.stdout


def test_launch_options_are_built_once_and_the_old_schedule_name_still_works(tmp_path, capsys):
    from orchestrator.cli import build_parser
    from orchestrator.commands.options import launch_options

    args = build_parser().parse_args(
        ["reproduce", "--schedule", "plan", "--cost-store", "sqlite:///c.db", "--workdir", str(tmp_path / "w")]
    )
    opts = launch_options(args, wait=True)
    assert opts.schedule == "order" and "--schedule plan is now --schedule order" in capsys.readouterr().err
    assert opts.cost_store.startswith("sqlite:////") and opts.workdir == tmp_path / "w" and opts.wait
    assert opts.resolved() == opts  # built once: resolving again changes nothing


def test_a_detached_launch_runs_the_same_grid_with_the_same_options(tmp_path, monkeypatch):
    """`kdgrid launch` with the local or Ray launcher hands a `reproduce` its options on a command line."""
    from orchestrator.cli import build_parser
    from orchestrator.commands.launch import launch_argv
    from orchestrator.commands.options import grid_options, launch_options

    monkeypatch.chdir(tmp_path)
    line = ["--scale", "smoke", "--tables", "fig4", "--recipe", "paper", "--set", "data.val_subset=64"]
    line += [
        "--workers",
        "2",
        "--threads",
        "2",
        "--schedule",
        "order",
        "--no-cohorts",
        "--cost-store",
        "sqlite:///c.db",
    ]
    args = build_parser().parse_args(["launch", *line])
    grid, opts = grid_options(args), launch_options(args, wait=False)
    assert grid.recipe == "paper-sum"  # canonical
    again = build_parser().parse_args(["reproduce", *grid.argv(), *launch_argv(opts)])
    assert grid_options(again) == grid and launch_options(again, wait=False) == opts
