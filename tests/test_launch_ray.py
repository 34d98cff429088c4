"""The smoke grid through the Ray launcher, on a Ray started for the call on this machine (127.0.0.1):
every planned run is trained as part of a Tune trial (a cohort) and finishes in MLflow with its metrics."""
from __future__ import annotations

import pytest

from tests.test_launch_local import LESS_DATA, assert_all_finished, kdgrid, store


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_smoke_grid_through_ray(tmp_path):
    from orchestrator.plan import make_plan

    uri, work = store(tmp_path)
    out = kdgrid("reproduce", "--scale", "smoke", "--launcher", "ray", "--tracking-uri", uri, "--workdir", str(work),
                 "--out", str(tmp_path / "reports"), *LESS_DATA, cwd=tmp_path, timeout=1100)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    plan = make_plan("smoke", overrides=list(LESS_DATA[1::2]))
    assert_all_finished(uri, plan, out.stdout)
    assert list((work / "ray").glob("kdgrid-smoke-*-stage1"))  # the Tune experiments, one per stage
    assert (tmp_path / "reports" / "report.md").exists()
