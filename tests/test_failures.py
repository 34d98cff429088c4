"""A run that fails is reported with its reason and its log, the runs that needed it are reported blocked
with why, and everything else still finishes."""

from __future__ import annotations

import re

import pytest

from tests.conftest import kdgrid, kdgrid_command, kdgrid_env
from tests.test_launch_local import LESS_DATA, mlflow_runs, store
from tests.test_slurm import _squeue_state, config, needs_slurm
from trainer import tracking


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_nan_teacher_fails_with_reason_and_log_students_blocked_rest_finishes(tmp_path):
    from orchestrator.plan import make_plan

    uri, work = store(tmp_path)
    absurd = "teachers.cait_s24_224.recipe.lr=1.0e+30"  # the teacher's loss becomes NaN in its first epoch
    out = kdgrid(
        "reproduce",
        "--scale",
        "smoke",
        "--tables",
        "fig4",
        "--tracking-uri",
        uri,
        "--workdir",
        str(work),
        "--out",
        str(tmp_path / "reports"),
        "--set",
        absurd,
        *LESS_DATA,
        cwd=tmp_path,
    )
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
        assert re.search(
            rf"BLOCKED +{r.hash[:8]} .*teacher {teacher.hash[:8]} .*did not finish .*non-finite loss", text
        ), text

    runs = mlflow_runs(uri)
    assert runs[teacher.hash].info.status == "FAILED"
    assert "non-finite loss" in runs[teacher.hash].data.tags[tracking.FAILURE]
    assert runs[baseline.hash].info.status == "FINISHED"  # the rest went on
    assert not any(r.hash in runs for r in students)  # blocked runs never start
    assert (tmp_path / "reports" / "report.md").exists()  # the report still comes out


@needs_slurm
@pytest.mark.timeout(600)
def test_cancelled_slurm_job_is_reported_with_state_and_logs(tmp_path):
    """Slurm: the teacher's job is cancelled while it trains; reproduce reports it with Slurm's state and
    its logs, the students (already queued behind it) are blocked with why, and the baseline finishes."""
    import subprocess
    import time

    uri, work = store(tmp_path)
    cmd = kdgrid_command(
        "reproduce",
        "--scale",
        "smoke",
        "--tables",
        "fig4",
        "--launcher",
        "slurm",
        "--slurm-config",
        config(tmp_path, array=True),
        "--tracking-uri",
        uri,
        "--workdir",
        str(work),
        "--out",
        str(tmp_path / "reports"),
        "--set",
        "data.train_subset=512",
        "--set",
        "data.val_subset=128",
    )
    log = tmp_path / "reproduce.log"
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT, env=kdgrid_env())
    try:
        deadline = time.monotonic() + 300
        while not (m := re.search(r"teacher item\(s\) as Slurm job\(s\) (\d+)", log.read_text())):
            assert p.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        job = m.group(1)
        while _squeue_state(job) != "RUNNING":
            assert p.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        subprocess.run(["scancel", job], check=True)
        p.wait(400)
    finally:
        if p.poll() is None:
            p.kill()
    text = log.read_text()
    assert p.returncode == 1, text
    m = re.search(rf"FAILED +\w+ teacher[^:]*: Slurm job {job} CANCELLED[^\n]*\(log (\S+), Slurm log (\S+)\)", text)
    assert m, text
    assert m.group(1).startswith(str(work / "logs")) and m.group(2).endswith(f"{job}_0_log.err")
    students = re.findall(
        r"BLOCKED +\w+ CaiT-S24→DeiT-Tiny [^\n]*teacher \w+ \(teacher · CaiT-S24\) did not finish "
        rf"\(failed: Slurm job {job} CANCELLED",
        text,
    )
    assert len(students) == 2, text
    assert re.search(r"runs: 2 blocked, 1 failed, 1 finished", text), text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_teacher_that_cannot_be_loaded_fails_the_run_recorded_and_a_rerun_trains_it(tmp_path, monkeypatch):
    """A failure before the epoch loop (the teacher is loaded after the runs are opened): the run ends FAILED
    with the reason and the traceback, its lock is released, and once the teacher is fixed a rerun trains it."""
    import torch

    from tests import smoke_specs
    from tests.test_checkpoints import train
    from trainer import models
    from trainer.engine.runlog import TRACEBACK
    from trainer.spec import parse_experiment

    monkeypatch.setenv(tracking.SYSTEM_METRICS_INTERVAL, "0")
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"not a checkpoint")
    spec = smoke_specs.student("0" * 16, epochs=1, train=512)
    spec["teacher"] = {**smoke_specs.TEACHER_MODEL, "source": "checkpoint", "path": str(teacher)}
    spec["data"]["val_subset"] = 256
    parsed = parse_experiment(spec)
    h, uri, work = parsed.content_hash(), f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "runs"

    with pytest.raises(Exception) as raised:
        train(spec, work, uri)
    c = tracking.client(uri)
    run = tracking.runs_by_hash(c, "test", [h])[h]
    reason = f"{type(raised.value).__name__}: {raised.value}"
    assert run.info.status == "FAILED" and run.data.tags[tracking.FAILURE] == reason
    tb = tracking.fetch_artifact(c, run.info.run_id, TRACEBACK, tmp_path / "artifacts").read_text()
    assert "load_teacher" in tb and reason in tb
    assert not (work / h / "lock").exists()

    torch.save(models.create(parsed.teacher.name, **parsed.teacher_kwargs()).state_dict(), teacher)  # fixed
    assert train(spec, work, uri) == {h: "finished"}  # a FAILED run is not finished: the rerun trains it
    again = tracking.runs_by_hash(c, "test", [h])[h]
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert tracking.FAILURE not in again.data.tags
