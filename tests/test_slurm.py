"""The Slurm launcher on a real (single-node) Slurm: `../shared/ci/slurm_up.sh` starts one, as root.

- the smoke grid: `kdgrid launch --launcher slurm` submits everything (students held by dependencies on
  their teachers' jobs) and returns; a second `launch` submits nothing; `reproduce` waits for those jobs
  and every run is finished in MLflow with its metrics;
- a job with 2 tasks trains with DDP on CPU (gloo), world size 2, and its metrics reach MLflow.

The submitit folder, the workdir and the SQLite store are under tmp_path: the same machine as the job.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.chaos import squeue
from tests.test_launch_local import LESS_DATA, TABLES, assert_all_finished, kdgrid, mlflow_runs, store
from trainer import tracking


def _slurm_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "no Slurm here: `sinfo` not found (start one with ../shared/ci/slurm_up.sh, as root)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout.split()
    except (OSError, subprocess.SubprocessError) as err:
        return f"sinfo failed: {err}"
    if not any(s.rstrip("*~#") in ("idle", "mixed") for s in states):
        return f"no idle Slurm node (sinfo says: {' '.join(states) or 'nothing'})"
    return None


_PROBLEM = _slurm_problem()


def needs_slurm(test):
    """Skip without a Slurm, except where one is required (CI: KDGRID_REQUIRE_SLURM=1, set by .ci/run): there
    a missing Slurm fails the test with the reason, so CI never passes with its Slurm tests skipped."""
    marks = [pytest.mark.slurm, pytest.mark.slow]
    if _PROBLEM is not None and os.environ.get("KDGRID_REQUIRE_SLURM") == "1":

        @functools.wraps(test)
        def test(*_, **__):  # noqa: F811 - the test, replaced by its failure
            pytest.fail(f"KDGRID_REQUIRE_SLURM=1 but {_PROBLEM}")
    elif _PROBLEM is not None:
        marks.append(pytest.mark.skip(reason=_PROBLEM))
    for mark in marks:
        test = mark(test)
    return test


def test_config_example_and_scale_hints_make_the_sbatch_script(tmp_path):
    """No Slurm needed: experiments/slurm.example.yaml over the paper scale's hints, per role, as sbatch."""
    from orchestrator.launch.items import LaunchContext
    from orchestrator.launch.launchers.slurm import _executor, load_config
    from orchestrator.launch.options import LaunchOptions
    from orchestrator.plan import make_plan
    from trainer.spec import SpecError

    root = Path(__file__).resolve().parents[1]
    plan = make_plan("paper", "2")
    cfg = load_config(str(root / "experiments" / "slurm.example.yaml"), threads=1, hints=plan.launch)
    res = cfg.resources("student")
    assert (res.gpus_per_node, res.tasks_per_node, res.cpus_per_task, res.world_size) == (8, 8, 10, 8)
    opts = LaunchOptions(workdir=tmp_path / "work", tracking_uri="http://mlflow.example:5000").resolved()
    ctx = LaunchContext(plan, opts)
    ex, threads = _executor(cfg, res, ctx, tmp_path / "slurm", "kdgrid-paper-student", ["12", "13_1"])
    script = ex._executor._make_submission_file_text("CMD", "uid")
    for line in (
        "--gpus-per-node=8",
        "--ntasks-per-node=8",
        "--cpus-per-task=10",
        "--partition=gpu",
        "--dependency=afterany:12:13_1",
        "--signal=USR2@300",
        "--time=4320",
        "--mem=480GB",
        "export MLFLOW_TRACKING_URI=http://mlflow.example:5000",
        f"export PYTHONPATH={root}",
    ):
        assert line in script, line

    hinted = load_config(None, threads=3, hints={"resources": {"cpus": 2}, "teacher_resources": {"time_min": 99}})
    assert hinted.resources("student").cpus_per_task == 2 and hinted.resources("teacher").timeout_min == 99
    assert load_config(None, threads=3).cpus_per_task == 3  # no hint, no file: --threads

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"gpus_per_node": -1, "partiton": "debug", "teacher": {"nodes": 0}}))
    with pytest.raises(SpecError) as err:
        load_config(str(bad))
    text = str(err.value)
    assert "gpus_per_node" in text and "partiton" in text and str(bad) in text


@pytest.fixture(autouse=True)
def cancel_leftover_jobs(tmp_path):
    """A failing test must not leave its jobs on the node's CPUs: cancel what its launches submitted."""
    yield
    ledger = tmp_path / "submitit" / "kdgrid-jobs.json"
    if ledger.exists() and shutil.which("scancel"):
        jobs = sorted(set(json.loads(ledger.read_text()).get("runs", {}).values()))
        if jobs:
            subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)


def config(tmp_path, **extra) -> str:
    data = {
        "partition": "debug",
        "cpus_per_task": 1,
        "timeout_min": 30,
        "poll_s": 2,
        "folder": str(tmp_path / "submitit"),
        **extra,
    }
    path = tmp_path / "slurm.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@needs_slurm
@pytest.mark.timeout(1500)
def test_smoke_grid_through_slurm(tmp_path):
    from orchestrator.plan import make_plan

    uri, work = store(tmp_path)
    grid = [
        "--scale",
        "smoke",
        *TABLES,
        "--launcher",
        "slurm",
        "--slurm-config",
        config(tmp_path, array=True, array_parallelism=2),
        "--tracking-uri",
        uri,
        "--workdir",
        str(work),
        *LESS_DATA,
    ]
    plan = make_plan("smoke", TABLES[1], overrides=list(LESS_DATA[1::2]))

    first = kdgrid("launch", *grid, cwd=tmp_path, timeout=300)  # submits and returns
    assert first.returncode == 0, first.stdout + first.stderr
    teachers = re.search(r"submitted \d+ teacher item\(s\) as Slurm job\(s\) (\S+)", first.stdout)
    students = re.findall(r"submitted \d+ student item\(s\) as Slurm job\(s\) .* after (\S+)", first.stdout)
    assert teachers and students, first.stdout  # students wait for their teachers' jobs

    second = kdgrid("launch", *grid, cwd=tmp_path, timeout=300)  # the same grid again: nothing new
    assert second.returncode == 0, second.stdout + second.stderr
    assert "submitted" not in second.stdout.replace("not submitted again", "")
    done = int(re.search(r"(\d+) finished in MLflow", second.stdout).group(1))  # fast runs may be done already
    assert re.search(
        rf"{len(plan.runs) - done} run\(s\) already in Slurm job\(s\) of an earlier launch", second.stdout
    ), second.stdout

    third = kdgrid("reproduce", *grid, "--out", str(tmp_path / "reports"), cwd=tmp_path, timeout=1400)
    assert third.returncode == 0, third.stdout[-5000:] + third.stderr[-3000:]
    assert_all_finished(uri, plan, third.stdout)
    assert (tmp_path / "reports" / "report.md").exists()


def _squeue_state(job: str) -> str:
    return squeue([job]).get(job, "")


@needs_slurm
@pytest.mark.timeout(900)
def test_two_task_job_trains_with_ddp_and_resumes_after_preemption(tmp_path):
    """A 2-task job (DDP over gloo, world size 2) trains the CaiT-S24 teacher; after its first epoch's
    checkpoint it is preempted (SIGUSR2, as Slurm warns a job it is about to stop): submitit calls the
    job's checkpoint() and requeues it, and the requeued job resumes the same MLflow run from epoch 1."""
    import torch
    from rich.console import Console

    from orchestrator.launch.execution import execute
    from orchestrator.launch.options import LaunchOptions
    from orchestrator.launch.outcome import Outcome
    from orchestrator.plan import make_plan

    uri, work = store(tmp_path)
    plan = make_plan("smoke", "fig4", overrides=["data.train_subset=512", "data.val_subset=128"])
    teacher = plan.teachers[0]  # no teacher of its own: one job, nothing to wait for
    plan = dataclasses.replace(plan, runs=[teacher])
    cfg = config(tmp_path, tasks_per_node=2, array=False)
    console = Console(width=200)
    opts = LaunchOptions(launcher="slurm", workdir=work, tracking_uri=uri, slurm_config=cfg)
    submitted = execute(plan, dataclasses.replace(opts, wait=False), console)
    job = re.search(r"Slurm job (\S+)", submitted.outcomes[teacher.hash].detail).group(1)
    # + .log (rank 0) and .rank1.log; submitit's own messages land there too
    logs = work / "logs" / submitted.items[0].id

    ckpt = work / teacher.hash / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not (ckpt.exists() and torch.load(ckpt, weights_only=True)["epoch"] == 1):
        assert time.monotonic() < deadline, "no checkpoint of epoch 1"
        time.sleep(0.2)
    run_id = mlflow_runs(uri)[teacher.hash].info.run_id
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # preemption notice
    while _squeue_state(job) != "PENDING":  # requeued by the job itself
        assert time.monotonic() < deadline, f"job {job} was not requeued: {_squeue_state(job)!r}"
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)  # skip the requeue delay

    outcomes = execute(plan, opts, console).outcomes  # adopts the requeued job and waits for it
    assert outcomes == {teacher.hash: Outcome("finished")}, outcomes
    run = mlflow_runs(uri)[teacher.hash]
    assert run.info.status == "FINISHED" and run.info.run_id == run_id  # resumed into the same run
    assert run.data.params["effective.world_size"] == "2"
    assert int(run.data.params["effective.global_batch_size"]) == 2 * teacher.spec.recipe.batch_size
    history = tracking.client(uri).get_metric_history(run.info.run_id, "val.top1")
    assert sorted(m.step for m in history) == [1, 2]  # every epoch once
    item_log = logs.with_suffix(".log").read_text()
    assert "Requeued job" in item_log and item_log.count("=== interrupted") == 1
    assert item_log.count("done: {") == 1 and '"finished"' in item_log
    assert logs.with_suffix(".rank1.log").exists()
