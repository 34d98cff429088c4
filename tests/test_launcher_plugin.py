"""A launcher is one file. This module is that file: it registers `inline` (every item in this very process,
one after another, in the order the scheduler starts them), and a smoke grid runs through it from the
command line's own entry point: the runs finish, every epoch's metrics reach MLflow, the report is written.
Nothing else in kdgrid names it: the CLI's `--launcher` choices, `execute` and the work items come from
the registry. A launcher from another package (examples/kdgrid-serial, installed with pip) is named under
the `kdgrid.launchers` entry points: listed without importing it, loaded when asked for, and a smoke grid
runs through it from the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.launch import registry
from orchestrator.launch.dispatch import Dispatch
from orchestrator.launch.outcome import parse_all
from orchestrator.launch.registry import Launcher, register
from orchestrator.launch.view import RunView
from orchestrator.launch.worker import run_item
from tests.fresh_venv import ROOT


@register
class Inline(Launcher):
    """Every item in this process, one after another."""

    name = "inline"

    def launch(self, items, ctx, outcomes) -> None:
        view = RunView([r for it in items for r in it.runs], {}, ctx.console, title="inline")
        dispatch = Dispatch(items, ctx, outcomes, view, workers=1)  # blocked students, parts, outcomes
        with view:
            while started := dispatch.assign([0], {}):
                for _, part in started:
                    results = run_item(part.payload(), work=ctx.work, tracking_uri=ctx.tracking_uri, threads=1)
                    dispatch.ended(part, parse_all(results))
        dispatch.never_started()


def test_a_registered_launcher_is_a_choice_of_the_command_line():
    from orchestrator.cli import build_parser

    assert {"local", "ray", "slurm", "inline"} <= set(registry.names())
    args = build_parser().parse_args(["reproduce", "--launcher", "inline"])
    assert args.launcher == "inline" and isinstance(registry.get("inline"), Inline)
    with pytest.raises(ValueError, match="unknown launcher 'nope': one of .*inline"):
        registry.get("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register(type("Other", (Launcher,), {"name": "inline"}))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_smoke_grid_runs_through_a_launcher_defined_in_one_file(tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main
    from orchestrator.plan import make_plan
    from tests.test_launch_local import LESS_DATA, assert_all_finished, store

    uri, work = store(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDGRID_SYSTEM_METRICS_INTERVAL", "0")
    grid = ["--scale", "smoke", "--tables", "fig4", *LESS_DATA]
    code = main(
        ["reproduce", *grid, "--launcher", "inline", "--tracking-uri", uri, "--workdir", str(work), "--out", "reports"]
    )
    out = capsys.readouterr().out
    assert code == 0, out[-5000:]
    assert "(inline launcher, critical path first" in out
    assert_all_finished(uri, make_plan("smoke", "fig4", overrides=list(LESS_DATA[1::2])), out)
    assert (tmp_path / "reports" / "report.md").exists() and (work / "logs").is_dir()


# ---------------------------------------------------------------------------------------------------
# A launcher from another package: examples/kdgrid-serial, named under the `kdgrid.launchers` entry points
# ---------------------------------------------------------------------------------------------------
SERIAL = ROOT / "examples" / "kdgrid-serial"

NAMES = """
import json, sys
from orchestrator.launch import registry
names = registry.names()
imported = "kdgrid_serial.launcher" in sys.modules
launcher = registry.get(sys.argv[1])
print(json.dumps({"names": names, "imported_by_names": imported, "class": type(launcher).__module__}))
"""


@pytest.fixture(scope="module")
def serial_site(tmp_path_factory) -> Path:
    """examples/kdgrid-serial installed with pip into a folder of its own."""
    site = tmp_path_factory.mktemp("serial-site")
    src = tmp_path_factory.mktemp("serial-src") / "kdgrid-serial"
    shutil.copytree(SERIAL, src)  # pip builds in place: keep the checkout clean
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", site, src],
        check=True,
        capture_output=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
        timeout=600,
    )
    return site


def _with(site: Path, *argv: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """A fresh interpreter with the checkout and `site` (installed packages) on its path."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}", "COLUMNS": "200"}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _entry_point(site: Path, line: str) -> None:
    """An installed distribution as pip leaves it, reduced to its `kdgrid.launchers` entry point."""
    info = site / "kdgrid_lab-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdgrid-lab\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{registry.PLUGIN_GROUP}]\n{line}\n")


def test_an_installed_package_adds_a_launcher_listed_before_it_is_imported(serial_site, tmp_path):
    out = _with(serial_site, "-c", NAMES, "serial", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["names"] == ["local", "ray", "serial", "slurm"]
    assert got["imported_by_names"] is False and got["class"] == "kdgrid_serial.launcher"
    helped = _with(serial_site, "-m", "orchestrator.cli", "reproduce", "--help", cwd=tmp_path)
    assert "--launcher {local,ray,serial,slurm}" in helped.stdout, helped.stdout
    assert (
        "kdgrid_serial"
        not in _with(serial_site, "-X", "importtime", "-m", "orchestrator.cli", "--help", cwd=tmp_path).stderr
    )


@pytest.mark.parametrize(
    "line, module, reason",
    [
        (
            "mine = kdgrid_lab_empty",
            "",
            "plug-in launcher mine (entry point group kdgrid.launchers) registered no launcher named 'mine'",
        ),
        (
            "local = kdgrid_lab_empty",
            "",
            "plug-in launcher local (entry point group kdgrid.launchers) takes a built-in's name",
        ),
        (
            "mine = kdgrid_lab_empty:Mine",
            "from orchestrator.launch.registry import Launcher\n\nclass Mine(Launcher):\n    name = 'mine'\n",
            None,
        ),
        ("mine = kdgrid_no_such_module", None, "ModuleNotFoundError: No module named 'kdgrid_no_such_module'"),
    ],
    ids=["registers nothing", "takes a built-in's name", "a class, registered by its entry point", "fails to import"],
)
def test_a_plugin_launcher_registers_the_name_its_entry_point_gives(tmp_path, line, module, reason):
    site = tmp_path / "site"
    _entry_point(site, line)
    if module is not None:
        (site / "kdgrid_lab_empty.py").write_text(module)
    name = line.split(" = ")[0]
    out = _with(site, "-c", NAMES, name, cwd=tmp_path)
    if reason is None:
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["class"] == "kdgrid_lab_empty"
        return
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("trainer.plugins.PluginError: plug-in ") and reason in last, out.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_smoke_grid_runs_through_a_launcher_from_another_package(serial_site, tmp_path):
    from orchestrator.plan import make_plan
    from tests.test_launch_local import LESS_DATA, assert_all_finished, store

    uri, work = store(tmp_path)
    out = _with(
        serial_site,
        *("-m", "orchestrator.cli", "reproduce", "--scale", "smoke", "--tables", "fig4", *LESS_DATA),
        *("--launcher", "serial", "--tracking-uri", uri, "--workdir", str(work), "--out", "reports"),
        cwd=tmp_path,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 at a time (serial launcher, critical path first" in out.stdout, out.stdout[-3000:]
    assert_all_finished(uri, make_plan("smoke", "fig4", overrides=list(LESS_DATA[1::2])), out.stdout)
    assert (tmp_path / "reports" / "report.md").exists()
