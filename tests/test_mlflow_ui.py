"""The grid as the MLflow UI shows it, through a real `mlflow server` (started by `kdgrid ui`) on 127.0.0.1.

A smoke grid (Table 3 and Figure 4: one teacher, six students, one run shared by two rows) is trained by
`kdgrid reproduce` against the server, then run again (nothing to train: the grid's run is reused). The
REST API must then show one parent run with every unique run as its child, the report and the tables
on the parent, datasets, system metrics and throughput metrics on each child; headless Chromium renders
the UI's run list with the grid nested.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import time
import urllib.parse
import urllib.request

import pytest

from tests.browser import CHROMIUM
from tests.conftest import kdgrid
from tests.test_report import ui_server

pytestmark = pytest.mark.slow

TABLES = "3,fig4"


def _get(url: str, endpoint: str, **params) -> dict:
    with urllib.request.urlopen(f"{url}{endpoint}?{urllib.parse.urlencode(params)}", timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"{url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _raw(url: str, run_id: str, path: str) -> bytes:
    q = urllib.parse.urlencode({"run_id": run_id, "path": path})
    with urllib.request.urlopen(f"{url}/get-artifact?{q}", timeout=30) as r:
        return r.read()


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


@pytest.fixture(scope="module")
def served_grid(tmp_path_factory):
    from orchestrator.plan import make_plan

    base = tmp_path_factory.mktemp("ui-grid")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    env = {**os.environ, "KDGRID_SYSTEM_METRICS_INTERVAL": "1"}
    with ui_server(uri, base) as (url, _port):
        args = (
            "reproduce",
            "--scale",
            "smoke",
            "--tables",
            TABLES,
            "--tracking-uri",
            url,
            "--workdir",
            str(base / "work"),
            "--out",
            str(base / "reports"),
            "--workers",
            "2",
        )
        out = kdgrid(*args, cwd=base, timeout=1500, env=env)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        again = kdgrid(*args, cwd=base, timeout=600, env=env)  # nothing to train; the grid's run is reused
        assert again.returncode == 0 and "nothing to launch" in again.stdout, again.stdout[-2000:]
        yield url, make_plan("smoke", TABLES, 1), base


def _runs(url: str) -> tuple[str, list[dict]]:
    exp = _get(url, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="kdgrid-smoke")["experiment"]
    runs = _post(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000})[
        "runs"
    ]
    return exp, runs


def test_rest_api_shows_the_nested_grid(served_grid):
    from orchestrator.report import export  # noqa: F401  (the CSV columns below are export's)
    from trainer import tracking

    url, plan, _ = served_grid
    exp, runs = _runs(url)
    exp_tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
    assert exp_tags[tracking.EXPERIMENT_KIND] == tracking.TRAINING_KIND  # the UI opens on the runs

    parents = [r for r in runs if _tags(r).get(tracking.ROLE) == "grid"]
    assert len(parents) == 1, [r["info"]["run_name"] for r in parents]  # one, and the rerun reused it
    parent = parents[0]
    pid = parent["info"]["run_id"]
    assert _tags(parent)["kdgrid.grid"] == "smoke/paper-mean"  # the default recipe
    children = {_tags(r)[tracking.HASH]: r for r in runs if _tags(r).get(tracking.PARENT) == pid}
    assert set(children) == {r.hash for r in plan.runs}  # every unique run, the teacher included, once
    assert len(plan.runs) == 7 and len(runs) == 8  # 4 + 3 rows - 1 shared + the teacher; and the parent

    for r in plan.runs:
        run = children[r.hash]
        tags, metrics = _tags(run), _metrics(run)
        assert run["info"]["run_name"] == r.spec.name and run["info"]["status"] == "FINISHED"
        assert tags[tracking.SOURCE].startswith(f"kdgrid reproduce --scale smoke --tables {TABLES}")
        note = tags[tracking.NOTE]
        for use in r.uses:  # the description names every table row the run stands for
            assert f"`{use.key}`" in note
        # datasets: training and validation, with their image counts
        inputs = run["inputs"]["dataset_inputs"]
        by_ctx = {
            next(t["value"] for t in i["tags"] if t["key"] == "mlflow.data.context"): i["dataset"] for i in inputs
        }
        assert set(by_ctx) == {"training", "validation"}
        profile = json.loads(by_ctx["training"]["profile"])
        assert profile["num_train_images"] == r.spec.data.train_subset and profile["num_val_images"] == 512
        assert by_ctx["training"]["name"] == "Fashion-MNIST train" and by_ctx["training"]["digest"]
        # MLflow's system metrics and kdgrid's throughput, per epoch
        assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics
        for key in (
            "throughput.images_per_s",
            "throughput.step_s",
            "throughput.data_wait_share",
            "throughput.teacher_share",
            "throughput.own_step_s",
            "memory.peak_rss_mb",
        ):
            hist = _get(url, "/api/2.0/mlflow/metrics/get-history", run_id=run["info"]["run_id"], metric_key=key)
            assert [m["step"] for m in hist["metrics"]] == list(range(1, r.spec.recipe.epochs + 1)), key
        assert metrics["throughput.images_per_s"] > 0 and 0 <= metrics["throughput.data_wait_share"] < 1
        assert (metrics["throughput.teacher_share"] > 0) == (r.role == "student" and r.spec.teacher is not None)
        assert metrics["memory.peak_rss_mb"] > 100

    # a run shared by two rows is one child, its rows as tags
    shared = [r for r in plan.runs if len(r.uses) > 1]
    assert len(shared) == 1 and {u.key for u in shared[0].uses} == {"t3.r1", "fig4.manifold"}
    assert {"t3.r1", "fig4.manifold"} <= set(_tags(children[shared[0].hash])[tracking.ROWS].split(","))

    # the report on the parent: every format, the figure, and each table as CSV and JSON (log_table)
    files = {
        f["path"]
        for d in ("report/tables-3-fig4", "tables/tables-3-fig4")
        for f in _get(url, "/api/2.0/mlflow/artifacts/list", run_id=pid, path=d).get("files", [])
    }
    assert {
        "report/tables-3-fig4/" + f for f in ("report.md", "report.html", "report.tex", "figure4.png", "report.json")
    } <= files
    assert {"tables/tables-3-fig4/" + f for f in ("table3.csv", "table3.json", "figure4.csv", "figure4.json")} <= files
    logged_tables = json.loads(_tags(parent)["mlflow.loggedArtifacts"])
    assert {"path": "tables/tables-3-fig4/table3.json", "type": "table"} in logged_tables
    md = _raw(url, pid, "report/tables-3-fig4/report.md").decode()
    assert "## Table 3:" in md and "7 planned runs: 7 finished." in md
    # the CSV's numbers are the children's final top-1 (one seed: the mean is the value)
    rows = list(csv.DictReader(io.StringIO(_raw(url, pid, "tables/tables-3-fig4/table3.csv").decode())))
    assert len(rows) == 4
    for row in rows:
        (p,) = plan.row_runs("3", int(row["row"]) - 1)
        assert float(row["top1_last_mean"]) == pytest.approx(_metrics(children[p.hash])["last_top1"])
        assert row["run_ids"] == children[p.hash]["info"]["run_id"]
    table = json.loads(_raw(url, pid, "tables/tables-3-fig4/table3.json"))
    assert len(table["data"]) == 4 and "top1_last_mean" in table["columns"]  # written once, not appended on rerun


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: as root, `apt-get install -y chromium`")
def test_chromium_shows_the_nested_grid(served_grid, tmp_path):
    """The UI's run list in headless Chromium, opened on the URL a second `kdgrid ui` on the grid's store prints
    for it (kdgrid's saved view, its columns): the experiment opens on training runs, the grid's run is one
    row, and expanding it shows every child.
    With KDGRID_KEEP_SCREENSHOT=path the screenshot is kept (docs/mlflow-ui-grid.png was made so)."""
    from orchestrator.tracking import grid_run
    from tests.browser import Browser

    url, plan, base = served_grid
    exp, _runs_ = _runs(url)
    names = [r.spec.name for r in plan.runs]
    shown = "document.body && document.body.innerText"
    printed: list[str] = []
    with (
        ui_server(f"sqlite:///{base / 'mlflow.db'}", base, printed) as (url, _),
        Browser(tmp_path / "profile", 1600, 1000) as b,
    ):
        deadline = time.monotonic() + 30  # the lines after the address come through ui_server's reader thread
        while not (found := [x for x in printed if x.startswith("  kdgrid-smoke: ")]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert found, printed
        view = found[0].split(": ", 1)[1].strip()
        assert view == grid_run.view_url(url, exp["experiment_id"]), printed
        b.goto(view)
        assert b.wait_for(f"{shown}.includes('grid · smoke · paper-mean recipe')", 180), b.js("document.body.innerText")
        text = b.js("document.body.innerText")
        assert "Model registry" in text and "Judges" not in text  # the model-training pages, not GenAI's
        assert not any(n in text for n in names)  # collapsed: the children are under the grid's row
        b.js("""(() => { [...document.querySelectorAll('button[aria-label=Close]')].forEach(x => x.click());
                        const cell = [...document.querySelectorAll('[role=gridcell]')]
                          .find(c => c.innerText.includes('grid · smoke · paper-mean recipe'));
                        cell.querySelector('button').click(); })()""")
        assert b.wait_for(f"{shown}.includes('teacher · CaiT-S24')", 60)
        rows = b.js("[...document.querySelectorAll('.ag-center-cols-container [role=row]')].length")
        assert rows == len(plan.runs) + 1  # the grid and its seven runs
        links = b.js("[...document.querySelectorAll('[role=gridcell] a')].map(a => a.innerText)")
        for n in names:  # every child's full name is on the page (the cells may truncate what they show)
            assert n in links, (n, links)
        header = "document.querySelector('.ag-header').innerText"
        for col in ("last_top1", "best_top1", "kdgrid.seed", "Dataset", "Source"):  # kdgrid's columns
            # tag columns appear once the UI has loaded the runs' tag keys (after the metric columns)
            assert b.wait_for(f"{header}.includes({col!r})", 30), (col, b.js(header))
        data = b.screenshot(tmp_path / "ui.png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1600, 1000)
    assert len(data) > 60_000, len(data)  # a rendered table, not a blank page
    keep = os.environ.get("KDGRID_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(tmp_path / "ui.png", keep)
