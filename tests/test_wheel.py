"""kdgrid as a package (issue 30): `python -m build` gives a wheel and an sdist that carry the grid's YAML,
install only the library, pass `twine check`, and work from any folder: the unpacked wheel plans the same
runs as the checkout, and (slow) a fresh venv with the wheel installed reproduces a smoke table elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from orchestrator.grid import files
from orchestrator.plan import make_plan
from tests.fresh_venv import ROOT, dists, fresh_venv

GRID_YAML = sorted(
    f"{folder}/{p.name}" for folder in ("experiments", "ablations") for p in (ROOT / folder).glob("*.yaml")
)
# The smoke scale on less data (students and the teacher): the mechanics are the same, the test takes less time.
LESS_DATA = "--set data.train_subset=256 --set data.val_subset=128 --set teachers.cait_s24_224.data.train_subset=512"


def test_the_wheel_installs_the_library_and_the_grid_yaml_only(tmp_path_factory):
    wheel, _ = dists(tmp_path_factory)
    names = zipfile.ZipFile(wheel).namelist()
    info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"  # kdgrid-<version>.dist-info
    assert {n.split("/")[0] for n in names} == {"orchestrator", "trainer", info}
    assert sorted(n.removeprefix("orchestrator/grid/data/") for n in names if n.endswith(".yaml")) == GRID_YAML
    assert "orchestrator/grid/files.py" in names and "trainer/methods/__init__.py" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "kdgrid = orchestrator.cli:main" in entry_points


def test_the_sdist_keeps_the_checkout_layout_and_twine_passes_both(tmp_path_factory):
    wheel, sdist = dists(tmp_path_factory)
    top = sdist.name.removesuffix(".tar.gz") + "/"  # kdgrid-<version>/
    names = {n.removeprefix(top) for n in tarfile.open(sdist).getnames()}
    assert set(GRID_YAML) <= names  # the source stays at the top; the wheel above was built from this sdist
    assert {"pyproject.toml", "setup.py", "README.md", "requirements/lock.txt"} <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "orchestrator/grid/data/")) for n in names)
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("PASSED") == 2


def test_the_checkout_reads_its_own_folders():
    assert files.GRID_ROOT == ROOT and files.EXPERIMENTS == ROOT / "experiments"
    assert files.display_path(files.RECIPES_FILE) == "experiments/recipes.yaml"


PLAN_HASHES = """
import json, sys
import orchestrator
from orchestrator.grid import files
from orchestrator.plan import make_plan
plan = make_plan("smoke", ["fig4", "vitkd", sys.argv[1]], 1)
print(json.dumps({
    "orchestrator": orchestrator.__file__,
    "grid_root": str(files.GRID_ROOT),
    "recipes": files.display_path(files.RECIPES_FILE),
    "scales": files.scale_names(),
    "tables": files.extra_tables(),
    "hashes": sorted(r.spec.content_hash() for r in plan.runs),
}))
"""


def test_the_unpacked_wheel_plans_the_same_runs_from_another_folder(tmp_path_factory, tmp_path):
    """The wheel's own YAML (not the checkout's), read from a folder outside the checkout, a table of the
    user's own loaded by path beside them: the same content hashes as the checkout plans."""
    wheel, _ = dists(tmp_path_factory)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    own = tmp_path / "mine.yaml"
    own.write_text((ROOT / "ablations" / "table6.yaml").read_text().replace('table: "6"', "table: mine"))
    out = subprocess.run(
        [sys.executable, "-c", PLAN_HASHES, str(own)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert Path(got["orchestrator"]).is_relative_to(site) and Path(got["grid_root"]).is_relative_to(site)
    assert got["recipes"] == "experiments/recipes.yaml"
    assert got["scales"] == files.scale_names() and tuple(got["tables"]) == files.extra_tables()
    here = make_plan("smoke", ["fig4", "vitkd", own], 1)
    assert got["hashes"] == sorted(r.spec.content_hash() for r in here.runs)


@pytest.mark.slow
def test_the_installed_wheel_reproduces_a_smoke_table_from_any_folder(tmp_path_factory, tmp_path):
    wheel, _ = dists(tmp_path_factory)
    venv = fresh_venv(tmp_path / "venv", wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT)

    where = venv.run("python -c 'import orchestrator, trainer; print(orchestrator.__file__, trainer.__file__)'", work)
    assert where.returncode == 0, where.stderr
    assert all(Path(p).is_relative_to(venv.path) for p in where.stdout.split())

    check = venv.run("kdgrid check", work)
    assert check.returncode == 0, check.stdout + check.stderr
    plan = venv.run(f"kdgrid plan --scale smoke --tables fig4 {LESS_DATA}", work)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "→ 4 unique runs after deduplication" in plan.stdout

    run = venv.run(f"kdgrid reproduce --scale smoke --tables fig4 --seeds 1 --workers 2 {LESS_DATA}", work, 1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "runs: 4 finished" in run.stdout
    report = (work / "reports" / "report.md").read_text()
    assert "**4 planned runs: 4 finished.**" in report
    assert "## Figure 4" in report and "DeiT-Tiny, hard distillation: top-1" in report
    assert (work / "kdgrid.db").is_file() and (work / "reports" / "report.html").is_file()
