"""Randomized faults with bit-equal results, on the smoke Figure 4 grid (a teacher, the baseline, and a cohort of
two students of that teacher), each compared with the same grid trained without a fault (tests/chaos.py):
- the local launcher: SIGKILL to the command's process group at 20 moments drawn from a seeded RNG and aimed at
  its phases (a random moment, mid-epoch, a checkpoint write, MLflow logging, between the teacher and its
  students, the report), the command rerun after each kill; in CI;
- Ray (heavy): 8 kills of the command's whole session, its Ray and Ray's workers with it;
- Slurm (heavy): running jobs cancelled (`scancel`) or requeued (`scontrol requeue`) at random moments under a
  waiting `kdgrid reproduce`, rerun where a cancel left failed runs.

Resume is exact by design (data order and augmentation keyed by (seed, epoch, micro-batch), every RNG stream
checkpointed), so every per-epoch metric must be bit-equal, whichever launcher trained it; the only metrics
left out are measurements of the process that ran an epoch (its time, CPU, memory, throughput).
"""

from __future__ import annotations

import os

import pytest

from tests.chaos import REQUIRED, Chaos, SlurmChaos, Watch, compare, report_rows
from tests.conftest import kdgrid
from tests.test_launch_local import LESS_DATA
from tests.test_slurm import config as slurm_config
from tests.test_slurm import needs_slurm
from trainer import tracking

SEED = 27  # the number; any seed must pass
# The launcher tests' small data, and more epochs of the same few images: more checkpoint writes and loggings
# to land in, little more CPU.
OVERRIDES = [*LESS_DATA[1::2], "student.recipe.epochs=4", "teachers.cait_s24_224.recipe.epochs=3"]
SMOKE = ["--scale", "smoke", "--tables", "fig4", *(arg for o in OVERRIDES for arg in ("--set", o))]
QUIET = {tracking.SYSTEM_METRICS_INTERVAL: "0"}  # MLflow's system metrics are samples in time, not numbers


def grid(tmp, *launcher: str) -> tuple[list[str], str]:
    """`kdgrid reproduce` of the smoke grid into a store and work directory under `tmp`; its tracking URI."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    args = ["reproduce", *SMOKE, *launcher, "--tracking-uri", uri, "--workdir", str(tmp / "work")]
    return [*args, "--out", str(tmp / "reports")], uri


@pytest.fixture(scope="module")
def plan():
    from orchestrator.plan import make_plan

    return make_plan("smoke", "fig4", overrides=OVERRIDES)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> str:
    """The grid trained once, without a fault: the numbers every chaos run must reproduce."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    args, uri = grid(tmp, "--workers", "1")
    kdgrid(*args, cwd=tmp, env={**os.environ, **QUIET}, check=True, timeout=1200)
    return uri


def check_against(chaos, reference: str, uri: str, plan, tmp, capsys, title: str, required=REQUIRED) -> None:
    cmp = compare(reference, uri, plan, tmp / "work", tmp / "reports")
    complete, rows = report_rows(uri, plan)
    _, want = report_rows(reference, plan)
    lines = [
        f"chaos, {title}: " + chaos.summary()[0],
        "  " + chaos.summary()[1],
        f"  against the uninterrupted grid ({len(plan.runs)} runs): {cmp.line()}; report "
        + ("complete" if complete else "INCOMPLETE")
        + (", its tables equal" if rows == want else ", its tables DIFFER"),
    ]
    (tmp / "chaos-summary.txt").write_text("\n".join(lines) + "\n")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert cmp.clean, cmp
    assert complete and rows == want
    assert (tmp / "reports" / "report.md").exists()
    assert {k.phase for k in chaos.landed} >= set(required)


@pytest.mark.slow  # in CI: about 300 CPU-seconds (20 starts of the command); Ray's and Slurm's are heavy
@pytest.mark.timeout(3600)
def test_local_launcher_survives_20_random_kills_bit_equal(tmp_path, plan, uninterrupted, capsys):
    args, uri = grid(tmp_path, "--workers", "1")
    chaos = Chaos(args, tmp_path, Watch(tmp_path / "mlflow.db", tmp_path / "work", plan), SEED, kills=20, env=QUIET)
    check_against(chaos.run(), uninterrupted, uri, plan, tmp_path, capsys, "local launcher")


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.timeout(3600)
def test_ray_launcher_survives_random_kills_bit_equal(tmp_path, plan, uninterrupted, capsys):
    """The same grid through the Ray launcher (a Ray started by the command), fewer kills, each to the
    command's whole session (its Ray workers, in groups of their own, included: the machine dies); the rerun
    starts a new Ray and resumes every run bit-equal to the grid the local launcher trained without a fault (a
    result must not depend on the launcher)."""
    args, uri = grid(tmp_path, "--launcher", "ray")
    env = {**QUIET, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    watch = Watch(tmp_path / "mlflow.db", tmp_path / "work", plan)
    chaos = Chaos(args, tmp_path, watch, SEED, kills=8, env=env, session=True)
    check_against(chaos.run(), uninterrupted, uri, plan, tmp_path, capsys, "Ray launcher")


@needs_slurm
@pytest.mark.heavy
@pytest.mark.timeout(3600)
def test_slurm_launcher_survives_cancels_and_requeues_bit_equal(tmp_path, plan, uninterrupted, capsys):
    """The same grid on the Slurm launcher, its running jobs cancelled or requeued at random moments: a cancel
    fails the job's runs (FAILED in MLflow, retried by the rerun), a requeue restarts the job, which resumes
    them; every per-epoch metric equals the local launcher's uninterrupted grid."""
    cfg = slurm_config(tmp_path)
    args, uri = grid(tmp_path, "--launcher", "slurm", "--slurm-config", cfg)
    chaos = SlurmChaos(args, tmp_path, tmp_path / "submitit" / "kdgrid-jobs.json", SEED, events=5, env=QUIET)
    try:
        chaos.run()
    finally:
        chaos.cancel_all()
    check_against(chaos, uninterrupted, uri, plan, tmp_path, capsys, "Slurm launcher", ("scancel", "requeue"))
