"""Nothing leaves the machine unless the user asks (issue 30): the environment of the processes kdgrid starts,
read from outside them (/proc/PID/environ through psutil) or reported by them.

- the rules: MLflow's telemetry and Ray's usage stats off, the user's own values kept, KDGRID_TELEMETRY=1
  leaves them to the libraries; a Slurm job's script exports them;
- (slow) `kdgrid ui`: its `mlflow server` and uvicorn have them, run no GenAI job runner, and the UI is
  told its telemetry is off; with KDGRID_TELEMETRY=1 they are the user's;
- (slow) `kdgrid launch`: the detached `reproduce` and its local worker;
- (slow) a Ray trial, on a Ray cluster started without them (they reach it through runtime_env) and on the
  Ray kdgrid starts for the call;
- (slow, Slurm) a job submitted from an environment without them: its script sets them.

Every process is started by the environment `_bare()`, which has none of these variables set.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import kdgrid_command, kdgrid_env
from tests.test_launch_local import LESS_DATA, store
from tests.test_slurm import needs_slurm
from trainer import telemetry

OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0"}
NAMES = (*OFF, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", telemetry.SWITCH)
GRID = ("--scale", "smoke", "--tables", "fig4", *LESS_DATA)


def _bare(**extra: str) -> dict[str, str]:
    """This environment without any of the variables under test, plus `extra`; the checkout on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in NAMES}
    return kdgrid_env({**env, "KDGRID_SYSTEM_METRICS_INTERVAL": "0", **extra})


def _seen(proc: psutil.Process) -> dict[str, str | None]:
    env = proc.environ()
    return {k: env.get(k) for k in NAMES}


def _wait_for(find, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"no {what} within {timeout:.0f} s")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# ---------------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------------
def test_off_by_default_the_users_own_values_kept_and_a_switch_turns_them_back_on():
    assert telemetry.environment({}) == OFF
    assert telemetry.environment({"MLFLOW_DISABLE_TELEMETRY": "false"}) == {**OFF, "MLFLOW_DISABLE_TELEMETRY": "false"}
    assert telemetry.environment({"KDGRID_TELEMETRY": "1"}) == {}
    assert telemetry.environment({"KDGRID_TELEMETRY": "1", "DO_NOT_TRACK": "1"}) == {"DO_NOT_TRACK": "1"}
    assert telemetry.environment({"KDGRID_TELEMETRY": "0"}) == OFF
    env = {"PATH": "/bin", "RAY_USAGE_STATS_ENABLED": "1"}
    assert telemetry.apply(env) == {**OFF, "RAY_USAGE_STATS_ENABLED": "1"} and env == {
        "PATH": "/bin",
        **OFF,
        "RAY_USAGE_STATS_ENABLED": "1",
    }


def test_the_ui_server_runs_without_the_job_runner_unless_the_user_wants_it():
    from orchestrator.tracking.server import server_env

    env = server_env({"PATH": "/bin"})
    assert {k: env.get(k) for k in NAMES} == {
        **OFF,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "KDGRID_TELEMETRY": None,
    }
    assert server_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"


@pytest.mark.parametrize(
    "user, exported",
    [
        ({}, OFF),
        ({"MLFLOW_DISABLE_TELEMETRY": "false"}, {**OFF, "MLFLOW_DISABLE_TELEMETRY": "false"}),
        ({"KDGRID_TELEMETRY": "1"}, {}),
    ],
    ids=["default", "a user's value", "switched on"],
)
def test_a_slurm_jobs_script_exports_them(tmp_path, monkeypatch, user, exported):
    """Clusters may submit with --export=NONE: the script sets them itself."""
    from orchestrator.launch.items import LaunchContext
    from orchestrator.launch.launchers.slurm import _executor, load_config
    from orchestrator.launch.options import LaunchOptions
    from orchestrator.plan import make_plan

    for k in NAMES:
        monkeypatch.delenv(k, raising=False)
    for k, v in user.items():
        monkeypatch.setenv(k, v)
    ctx = LaunchContext(
        make_plan("smoke", "fig4"), LaunchOptions(workdir=tmp_path, tracking_uri="sqlite:///m.db").resolved()
    )
    cfg = load_config(None, threads=1)
    ex, _ = _executor(cfg, cfg.resources("student"), ctx, tmp_path / "slurm", "kdgrid-env", [])
    script = ex._executor._make_submission_file_text("CMD", "uid")
    assert {k: v for k, v in re.findall(r"^export (\w+)=(\S+)$", script, re.M) if k in OFF} == exported


# ---------------------------------------------------------------------------------------------------
# kdgrid ui
# ---------------------------------------------------------------------------------------------------
def _ui_tree(tmp_path: Path, env: dict[str, str]) -> tuple[list[psutil.Process], dict]:
    """`kdgrid ui` on an empty store: (its server's processes, what the server tells the UI of telemetry)."""
    port = _free_port()
    proc = subprocess.Popen(
        kdgrid_command("ui", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--port", str(port)),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = []
        while not any(line.startswith("MLflow UI: ") for line in out):
            out.append(proc.stdout.readline())
            assert out[-1] or proc.poll() is None, "".join(out)
        tree = _descendants(proc.pid)
        envs = [(" ".join(p.cmdline()), _seen(p)) for p in tree]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/3.0/mlflow/ui-telemetry", timeout=30) as r:
            ui = json.loads(r.read())
        return envs, ui
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        proc.stdout.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kdgrid_ui_starts_its_server_with_telemetry_off_and_no_job_runner(tmp_path):
    envs, ui = _ui_tree(tmp_path, _bare())
    commands = [c for c, _ in envs]
    assert len(envs) == 2 and "-m mlflow server" in commands[0] and "uvicorn" in commands[1], commands
    assert not any("huey" in c or "job" in c for c in commands)  # no GenAI job runner's consumers
    for _, seen in envs:
        assert seen == {**OFF, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", telemetry.SWITCH: None}
    assert ui["disable_ui_telemetry"] is True  # the UI sends nothing and shows no notice

    envs, ui = _ui_tree(tmp_path, _bare(KDGRID_TELEMETRY="1", RAY_USAGE_STATS_ENABLED="1"))
    for _, seen in envs:  # the user's: nothing set by kdgrid but the job runner's switch
        expected = {
            "RAY_USAGE_STATS_ENABLED": "1",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "KDGRID_TELEMETRY": "1",
        }
        assert seen == {k: expected.get(k) for k in NAMES}


# ---------------------------------------------------------------------------------------------------
# kdgrid launch: the detached reproduce and its local worker
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_detached_launch_and_its_local_worker_have_telemetry_off(tmp_path):
    uri, work = store(tmp_path)
    out = subprocess.run(
        kdgrid_command("launch", *GRID, "--workers", "1", "--tracking-uri", uri, "--workdir", str(work)),
        cwd=tmp_path,
        env=_bare(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    pid = int(re.search(r"launched in the background \(pid (\d+)\)", out.stdout).group(1))
    try:
        background = psutil.Process(pid)
        assert _seen(background) == {**OFF, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": None, telemetry.SWITCH: None}
        worker = _wait_for(
            lambda: [p for p in _descendants(pid) if "multiprocessing" in " ".join(p.cmdline())],
            240,
            "local worker process",
        )[0]
        assert _seen(worker) == _seen(background)
    finally:
        os.killpg(pid, signal.SIGTERM)  # its own session: the reproduce kdgrid started, and its workers
        psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=60)


# ---------------------------------------------------------------------------------------------------
# Ray trials
# ---------------------------------------------------------------------------------------------------
CLUSTER = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes it
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("cluster", [True, False], ids=["an existing cluster (runtime_env)", "Ray started by kdgrid"])
def test_a_ray_trial_has_telemetry_off(tmp_path, cluster):
    uri, work = store(tmp_path)
    holder, address = None, []
    # A cluster that ray.init starts takes a token that a second process may not find (InvalidAuthToken):
    # the test's cluster and its client go without, as `ray start` clusters on a trusted network do.
    env = _bare(RAY_AUTH_MODE="disabled") if cluster else _bare()
    if cluster:  # a cluster started without kdgrid, none of the variables set
        holder = subprocess.Popen(
            [sys.executable, "-c", CLUSTER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        address = ["--ray-address", holder.stdout.readline().strip()]
    grid = subprocess.Popen(
        kdgrid_command(
            "reproduce", *GRID, "--launcher", "ray", *address, "--tracking-uri", uri, "--workdir", str(work)
        ),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    root = holder.pid if holder else grid.pid
    try:

        def trials():  # Ray names a worker's process for what it runs: a Tune trial is an ImplicitFunc actor
            found = []
            for p in _descendants(root):
                try:
                    if " ".join(p.cmdline()).startswith("ray::ImplicitFunc"):
                        found.append(p)
                except psutil.Error:
                    pass
            return found

        def trials_or_exit():  # a grid that ended before any trial fails the test at once
            assert grid.poll() is None or trials(), f"the grid exited ({grid.returncode}) before any trial started"
            return trials()

        trial = _wait_for(trials_or_exit, 600, "Ray trial process")[0]
        assert _seen(trial) == {**OFF, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": None, telemetry.SWITCH: None}
    finally:
        grid.send_signal(signal.SIGINT)
        try:
            grid.wait(timeout=120)
        except subprocess.TimeoutExpired:
            grid.kill()
        if holder:
            holder.stdin.close()
            holder.wait(timeout=120)


# ---------------------------------------------------------------------------------------------------
# A Slurm job
# ---------------------------------------------------------------------------------------------------
def job_environment() -> dict[str, str | None]:
    """What a Slurm job sees (submitit runs it in the job)."""
    return {k: os.environ.get(k) for k in NAMES}


@needs_slurm
@pytest.mark.timeout(600)
def test_a_slurm_job_has_telemetry_off(tmp_path, monkeypatch):
    from orchestrator.launch.items import LaunchContext
    from orchestrator.launch.launchers.slurm import _executor, load_config
    from orchestrator.launch.options import LaunchOptions
    from orchestrator.plan import make_plan

    for k in NAMES:  # sbatch exports this environment: without them, only the script's own lines set them
        monkeypatch.delenv(k, raising=False)
    uri, work = store(tmp_path)
    ctx = LaunchContext(make_plan("smoke", "fig4"), LaunchOptions(workdir=work, tracking_uri=uri).resolved())
    cfg = load_config(None, threads=1)
    ex, _ = _executor(cfg, cfg.resources("student"), ctx, tmp_path / "slurm", "kdgrid-env", [])
    job = ex.submit(job_environment)
    try:
        seen = job.result()
    finally:
        subprocess.run(["scancel", str(job.job_id)], capture_output=True, timeout=30)
    assert seen == {**OFF, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": None, telemetry.SWITCH: None}
