"""The local launcher and the grouping every launcher shares.

- work items: cohorts by cohort key, capped, split to spread over the workers, deps on the items holding
  the teachers (plans only, nothing trains);
- a `kdgrid reproduce` killed with SIGKILL mid-epoch resumes from its checkpoints into the same MLflow
  runs, every epoch logged once, and a third `reproduce` launches nothing;
- a run another launch is training is reported "running elsewhere" (its students "deferred"), not failed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.launch.items import work_items
from orchestrator.launch.outcome import Outcome, blocked_by
from tests.conftest import kdgrid, kdgrid_command, kdgrid_env
from trainer import tracking, workdir
from trainer.engine import cohort_key

# The smoke scale on less data, the mechanics the same: students on 256 images, their CaiT teachers on 512 (the
# scale's 2048 would be most of each grid's CPU).
LESS_DATA = (
    "--set",
    "data.train_subset=256",
    "--set",
    "data.val_subset=128",
    "--set",
    "teachers.cait_s24_224.data.train_subset=512",
    "--set",
    "teachers.cait_xxs24_224.data.train_subset=512",
)
# What a cluster launcher's grid test trains: two teachers and their eight students (Tables 3 and 7), so both
# stages and a cohort per teacher; the whole smoke grid (27 runs) only repeats them.
TABLES = ("--tables", "3,7")


def store(tmp_path: Path) -> tuple[str, Path]:
    return f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "work"


def mlflow_runs(uri: str, scale: str = "smoke") -> dict:
    return tracking.runs_by_hash(tracking.client(uri), scale)


def assert_all_finished(uri: str, plan, output: str) -> None:
    """Every planned run is FINISHED in MLflow with one val.top1 per epoch, and the launcher's summary line
    says so (runs finished before this launch count as skipped)."""
    summary = re.search(r"^runs: (.*)$", output, re.M)
    assert summary, output[-3000:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) ([a-z ]+)", summary.group(1))}
    assert set(counts) <= {"finished", "skipped"} and sum(counts.values()) == len(plan.runs), summary.group(0)
    runs = mlflow_runs(uri, plan.scale)
    assert sorted(runs) == sorted(r.hash for r in plan.runs)
    c = tracking.client(uri)
    for r in plan.runs:
        run = runs[r.hash]
        assert run.info.status == "FINISHED", (r.spec.name, run.data.tags.get(tracking.FAILURE))
        steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "val.top1"))
        assert steps == list(range(1, r.spec.recipe.epochs + 1)), (r.spec.name, steps)


# ---------------------------------------------------------------------------------------------------
# Work items (no training)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_plan():
    from orchestrator.plan import make_plan

    return make_plan("smoke")


def test_items_are_cohorts_with_teacher_deps(smoke_plan):
    items = work_items(smoke_plan.runs, workers=1)
    assert sorted(h for it in items for h in it.hashes) == sorted(r.hash for r in smoke_plan.runs)
    holder = {h: it for it in items for h in it.hashes}
    for it in items:
        assert len({cohort_key(r.spec) for r in it.runs}) == 1  # one teacher pass per batch feeds them all
        for r in it.runs:
            for d in r.deps:
                assert holder[d].id in it.deps  # an item waits for the items holding its teachers
                assert holder[d].level < it.level
    # without a cap and with one worker, a cohort key is one item
    assert len(items) == len({(it.level, cohort_key(it.runs[0].spec)) for it in items})
    assert [it.level for it in items] == sorted(it.level for it in items)  # deps first


def test_items_split_to_spread_over_workers(smoke_plan):
    one = work_items(smoke_plan.runs, workers=1)
    biggest = max(one, key=lambda it: len(it.runs))
    n = len(biggest.runs)
    assert n >= 8  # the CaiT-S24 students of the smoke grid
    same = [r for r in smoke_plan.runs if r.hash in biggest.hashes]
    halves = work_items(same, workers=2)
    assert sorted(len(it.runs) for it in halves) == [n // 2, n - n // 2]  # 16 on 2 workers: 8 and 8
    capped = work_items(same, workers=1, max_cohort=3)
    assert max(len(it.runs) for it in capped) <= 3 and sum(len(it.runs) for it in capped) == n
    alone = work_items(smoke_plan.runs, workers=1, cohorts=False)
    assert all(len(it.runs) == 1 for it in alone) and len(alone) == len(smoke_plan.runs)
    many = work_items(same, workers=64)
    assert len(many) == n  # never more items than runs
    with pytest.raises(ValueError):
        work_items(same, max_cohort=0)


def test_outcome_kinds(smoke_plan):
    student = next(r for r in smoke_plan.runs if r.deps)
    t = student.deps[0]
    assert blocked_by(student, {}) is None  # teacher not ended yet: not blocked
    assert blocked_by(student, {t: Outcome("finished")}) is None
    assert blocked_by(student, {t: Outcome.parse("skipped: finished in MLflow")}) is None
    why = blocked_by(student, {t: Outcome.parse("failed: non-finite loss")})
    assert why.kind == "blocked" and "non-finite loss" in why.detail and why.bad
    later = blocked_by(student, {t: Outcome.parse("locked: held by host:123")})
    assert later.kind == "deferred" and not later.bad
    locked = Outcome.parse("locked: x")  # the engine's word for a run another process holds
    assert locked == Outcome("running elsewhere", "x") and not locked.bad
    assert str(Outcome.parse("failed: a: b")) == "failed: a: b" and Outcome.parse("finished").done


# ---------------------------------------------------------------------------------------------------
# Kill and resume (trains)
# ---------------------------------------------------------------------------------------------------
def _killable_moment(work: Path, deadline: float) -> str:
    """Wait until some run has a checkpoint of epoch 1, is still locked (training) and has no final
    weights: its second epoch is under way. Returns its hash."""
    import torch

    while time.monotonic() < deadline:
        for ckpt in work.glob("*/checkpoint.pt"):
            d = ckpt.parent
            if (d / "final.pt").exists() or not (d / "lock").exists():
                continue
            try:
                written = ckpt.stat().st_mtime_ns
                if time.time_ns() - written < 300_000_000:  # let the epoch's MLflow write and save settle
                    continue
                epoch = torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]
                # Loading takes ~0.1 s: a short last epoch can save its checkpoint and end the run meanwhile.
                # Still the same file and no final weights: the next epoch is under way.
                if epoch == 1 and ckpt.stat().st_mtime_ns == written and not (d / "final.pt").exists():
                    return d.name
            except Exception:
                continue
        time.sleep(0.1)
    raise AssertionError("no run reached a checkpoint with its next epoch under way")


@contextmanager
def _started(args: list[str], cwd: Path):
    """`kdgrid ARGS` started in its own session (so a test can signal the launcher alone or its whole
    group), output to first.log."""
    with open(cwd / "first.log", "w") as log:
        yield subprocess.Popen(
            kdgrid_command(*args),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=kdgrid_env(),
        )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_mid_epoch_resumes_then_nothing_to_do(tmp_path):
    uri, work = store(tmp_path)
    # Figure 4: the CaiT-S24 teacher and the no-distillation baseline, then two students of that teacher.
    # 1024 images: 16 steps an epoch, about a second on a quiet machine, so the kill lands inside an epoch.
    grid = [
        "--scale",
        "smoke",
        "--tables",
        "fig4",
        "--tracking-uri",
        uri,
        "--workdir",
        str(work),
        "--workers",
        "2",
        "--set",
        "data.train_subset=1024",
        "--set",
        "data.val_subset=128",
    ]
    args = ["reproduce", *grid, "--out", str(tmp_path / "reports")]
    with _started(args, tmp_path) as p:
        try:
            victim = _killable_moment(work, time.monotonic() + 300)
        finally:
            os.killpg(p.pid, signal.SIGKILL)  # the launcher and every worker, mid-epoch
            p.wait(30)
    assert p.returncode == -signal.SIGKILL
    before = mlflow_runs(uri)
    assert before[victim].info.status == "RUNNING"  # killed: never marked finished
    run_id = before[victim].info.run_id

    second = kdgrid(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{victim[:8]}" in second.stdout and "(resumed)" in second.stdout
    after = mlflow_runs(uri)
    assert len(after) == 4 and all(r.info.status == "FINISHED" for r in after.values())
    assert after[victim].info.run_id == run_id  # the same MLflow run, resumed
    history = tracking.client(uri).get_metric_history(run_id, "val.top1")
    assert sorted(m.step for m in history) == [1, 2]  # every epoch's metrics, once
    assert (tmp_path / "reports" / "report.md").exists()

    third = kdgrid(*args, cwd=tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "nothing to launch" in third.stdout
    again = mlflow_runs(uri)
    assert {h: (r.info.run_id, r.info.end_time) for h, r in again.items()} == {
        h: (r.info.run_id, r.info.end_time) for h, r in after.items()
    }  # no new run, nothing retrained
    launch = kdgrid("launch", *grid, cwd=tmp_path)
    assert launch.returncode == 0 and "nothing to launch" in launch.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_to_the_launcher_alone_stops_its_workers(tmp_path):
    """`kill PID` of `kdgrid reproduce` (not its process group) ends the worker training a run too, as
    Ctrl-C does; the run keeps its checkpoint and its lock is released, so the next launch resumes it."""
    uri, work = store(tmp_path)
    args = [
        "reproduce",
        "--scale",
        "smoke",
        "--tables",
        "fig4",
        "--tracking-uri",
        uri,
        "--workdir",
        str(work),
        "--workers",
        "1",
        "--set",
        "data.train_subset=1024",
        "--set",
        "data.val_subset=128",
    ]
    with _started(args, tmp_path) as p:
        try:
            victim = _killable_moment(work, time.monotonic() + 300)
            lock = workdir.RunLock(work / victim)
            worker = lock.owner()["pid"]
            assert worker != p.pid and _alive(worker)
            p.send_signal(signal.SIGTERM)  # the launcher only
            p.wait(60)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker), "the worker outlived its launcher"
    assert p.returncode != 0 and "interrupted" in (tmp_path / "first.log").read_text()
    assert not lock.held() and (work / victim / "checkpoint.pt").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_held_by_another_launch_is_running_elsewhere(tmp_path):
    from orchestrator.plan import make_plan

    uri, work = store(tmp_path)
    plan = make_plan("smoke", "fig4", overrides=list(LESS_DATA[1::2]))
    teacher = plan.teachers[0]
    lock = workdir.RunLock(workdir.run_dir(work, teacher.hash))  # another launch is training the teacher
    lock.acquire()
    try:
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
            *LESS_DATA,
            cwd=tmp_path,
        )
    finally:
        lock.release()
    text = out.stdout
    assert out.returncode == 0, text + out.stderr  # nothing failed
    assert re.search(rf"RUNNING ELSEWHERE +{teacher.hash[:8]} .*being trained by", text)
    students = [r for r in plan.students if r.deps]
    for r in students:
        assert re.search(rf"DEFERRED +{r.hash[:8]} .*teacher {teacher.hash[:8]}.*another launch", text)
    runs = mlflow_runs(uri)
    assert teacher.hash not in runs and not any(r.hash in runs for r in students)  # nobody else touched them
    baseline = next(r for r in plan.students if not r.deps)
    assert runs[baseline.hash].info.status == "FINISHED"  # the rest went on
