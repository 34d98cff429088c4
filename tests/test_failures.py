"""A run that fails is reported with its reason and its log, the runs that needed it are reported blocked
with why, and everything else still finishes."""
from __future__ import annotations

import re

import pytest

from tests.test_launch_local import LESS_DATA, kdgrid, mlflow_runs, store
from trainer import tracking


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_nan_teacher_fails_with_reason_and_log_students_blocked_rest_finishes(tmp_path):
    from orchestrator.plan import make_plan

    uri, work = store(tmp_path)
    absurd = "teachers.cait_s24_224.recipe.lr=1.0e+30"  # the teacher's loss becomes NaN in its first epoch
    out = kdgrid("reproduce", "--scale", "smoke", "--tables", "fig4", "--tracking-uri", uri, "--workdir", str(work),
                 "--out", str(tmp_path / "reports"), "--set", absurd, *LESS_DATA, cwd=tmp_path)
    text = out.stdout
    assert out.returncode == 1, text + out.stderr  # something failed

    plan = make_plan("smoke", "fig4", overrides=[absurd, *LESS_DATA[1::2]])
    teacher = plan.teachers[0]
    students = [r for r in plan.students if r.deps]
    baseline = next(r for r in plan.students if not r.deps)

    m = re.search(rf"FAILED +{teacher.hash[:8]} .*: (non-finite loss[^\n]*)\n +log: (\S+)", text)
    assert m, text
    log = m.group(2)
    assert log.startswith(str(work / "logs")) and open(log).read().count(teacher.hash) >= 1
    for r in students:
        assert re.search(rf"BLOCKED +{r.hash[:8]} .*teacher {teacher.hash[:8]} .*did not finish .*non-finite loss",
                         text), text

    runs = mlflow_runs(uri)
    assert runs[teacher.hash].info.status == "FAILED"
    assert "non-finite loss" in runs[teacher.hash].data.tags[tracking.FAILURE]
    assert runs[baseline.hash].info.status == "FINISHED"  # the rest went on
    assert not any(r.hash in runs for r in students)  # blocked runs never start
    assert (tmp_path / "reports" / "report.md").exists()  # the report still comes out
