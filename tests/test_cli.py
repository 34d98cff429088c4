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
