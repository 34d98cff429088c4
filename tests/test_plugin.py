"""Methods from other packages (issue 30): an installed package that names a module under the
`kdgrid.methods` entry-point group adds its method to the registry, its table plans by path, and no
earlier run's hash moves; a plug-in that fails or takes another method's names stops kdgrid, named.
(slow) docs/plugins.md's walk-through, run as written in a fresh venv with kdgrid from its wheel: the
example package's method and table plan, train and appear in the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.plan import make_plan
from tests.fresh_venv import ROOT, dists, fresh_venv
from tests.test_docs_commands import shell_lines

EXAMPLE = ROOT / "examples" / "kdgrid-cosine"
PAGE = ROOT / "docs" / "plugins.md"


def _python(code: str, *args: str, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with the checkout and `site` (installed packages) on its path."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _dist_info(site: Path, name: str, entry_points: str) -> None:
    """An installed distribution as pip leaves it, reduced to what entry points need."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[kdgrid.methods]\n{entry_points}\n")


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    """The example package installed with pip into a folder of its own."""
    site = tmp_path_factory.mktemp("example-site")
    src = tmp_path_factory.mktemp("example-src") / "kdgrid-cosine"
    shutil.copytree(EXAMPLE, src)  # pip builds in place: keep the checkout clean
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", site, src],
        check=True,
        capture_output=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
        timeout=600,
    )
    return site


PLAN = """
import json, sys
from trainer import methods
from trainer.spec import DistillationSpec
from orchestrator.plan import make_plan
plan = make_plan("smoke", ["fig4", sys.argv[1]], 1)
print(json.dumps({
    "registry": sorted(methods.REGISTRY),
    "spec_fields": sorted(DistillationSpec.model_fields),
    "runs": {r.spec.content_hash(): [r.spec.name, r.spec.model_dump(mode="json")["distillation"]] for r in plan.runs},
}))
"""


def test_an_installed_package_adds_its_method_and_its_table_plans_by_path(example_site, tmp_path):
    out = _python(PLAN, str(EXAMPLE / "cosine.yaml"), site=example_site, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert "cosine" in got["registry"] and "cosine" in got["spec_fields"]
    cosine = {h: d["cosine"] for h, (_, d) in got["runs"].items() if d.get("cosine") is not None}
    assert sorted(w["weight"] for w in cosine.values()) == [0.5, 1.0]
    # Installed or not, the plug-in moves no other run's hash: fig4 and the table's baselines plan the same here.
    without = {r.spec.content_hash() for r in make_plan("smoke", ["fig4"], 1).runs}
    assert without <= set(got["runs"]) and set(got["runs"]) - without == set(cosine)


@pytest.mark.parametrize(
    "module, entry_point, reason",
    [
        (None, "broken = kdgrid_no_such_module", "ModuleNotFoundError: No module named 'kdgrid_no_such_module'"),
        (
            "from trainer.methods import Method, register\n\n@register\nclass Hard(Method):\n    key = 'hard2'\n"
            "    rows = {'hard': 'Hard'}\n",
            "clash = kdgrid_clash",
            "takes hard, already trainer.methods.logit.LogitKD's",
        ),
    ],
    ids=["fails to import", "takes a built-in's row method"],
)
def test_a_plugin_that_cannot_load_stops_kdgrid_named(tmp_path, module, entry_point, reason):
    site = tmp_path / "site"
    _dist_info(site, "kdgrid-lab", entry_point)
    if module:
        (site / "kdgrid_clash.py").write_text(module)
    out = _python("import trainer.methods", site=site, cwd=tmp_path)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("trainer.plugins.PluginError: plug-in ")
    assert f"{entry_point} (entry point group kdgrid.methods, from kdgrid-lab 0.1) failed to load" in last
    assert reason in last


def walkthrough() -> list[str]:
    """The command lines of docs/plugins.md, in order."""
    return [line for _, line in shell_lines(PAGE.read_text())]


def test_the_page_shows_the_example_package_files_and_its_commands():
    page = PAGE.read_text()
    for f in ("kdgrid_cosine/method.py", "pyproject.toml", "cosine.yaml"):
        assert f'--8<-- "kdgrid-cosine/{f}"' in page  # included whole by mkdocs (pymdownx.snippets)
    assert walkthrough() == [
        "pip install ./examples/kdgrid-cosine",
        "kdgrid plan --scale smoke --tables examples/kdgrid-cosine/cosine.yaml",
        "kdgrid reproduce --scale smoke --tables examples/kdgrid-cosine/cosine.yaml --seeds 1",
    ]


@pytest.mark.slow
def test_the_docs_walkthrough_trains_the_plugin_method_and_reports_its_table(tmp_path_factory, tmp_path):
    wheel, _ = dists(tmp_path_factory)
    venv = fresh_venv(tmp_path / "venv", wheel)
    lab = tmp_path / "lab"
    shutil.copytree(ROOT / "examples", lab / "examples")
    results = []
    for line in walkthrough():
        results.append(venv.run(line, lab, timeout=1800))
        assert results[-1].returncode == 0, f"{line}\n{results[-1].stdout[-3000:]}\n{results[-1].stderr[-3000:]}"
    _, plan, run = results
    assert "→ 5 unique runs after deduplication" in plan.stdout and "│ cosine " in plan.stdout
    assert "runs: 5 finished" in run.stdout
    report = (lab / "reports" / "report.md").read_text()
    assert "**5 planned runs: 5 finished.**" in report
    assert "## Cosine distillation of DeiT-Tiny from CaiT-S24" in report
    table = report.split("## Cosine distillation")[1].split("\n## ")[0]
    rows = [r for r in table.splitlines() if r.startswith("| Cosine")]
    assert len(rows) == 2 and all("missing" not in r for r in rows), table
