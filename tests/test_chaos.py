"""Randomized kills with bit-equal results: a smoke grid (a teacher, the baseline, and a cohort of two students
of that teacher) killed with SIGKILL at 20+ moments drawn from a seeded RNG and aimed at its phases (a random
moment, mid-epoch, a checkpoint write, MLflow logging, between the teacher and its students, the report), the
command rerun after each kill; then compared with the grid trained without a fault (tests/chaos.py).

Resume is exact by design (data order and augmentation keyed by (seed, epoch, micro-batch), every RNG stream
checkpointed), so every per-epoch metric must be bit-equal; the only metrics left out are measurements of the
process that ran an epoch (its time, CPU, memory, throughput), which differ between any two runs.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos import REQUIRED, Chaos, Watch, compare, report_rows
from tests.conftest import kdgrid
from trainer import tracking

SEED = 27  # the number; any seed must pass
SMOKE = [
    "--scale",
    "smoke",
    "--tables",
    "fig4",
    "--set",
    "data.train_subset=256",
    "--set",
    "data.val_subset=128",
    "--set",
    "teachers.cait_s24_224.data.train_subset=512",
]
QUIET = {tracking.SYSTEM_METRICS_INTERVAL: "0"}  # MLflow's system metrics are samples in time, not numbers


def grid(tmp, *launcher: str) -> tuple[list[str], str]:
    """`kdgrid reproduce` of the smoke grid into a store and work directory under `tmp`; its tracking URI."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    args = ["reproduce", *SMOKE, *launcher, "--tracking-uri", uri, "--workdir", str(tmp / "work")]
    return [*args, "--out", str(tmp / "reports")], uri


@pytest.fixture(scope="module")
def plan():
    from orchestrator.plan import make_plan

    return make_plan("smoke", "fig4", overrides=SMOKE[5::2])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> str:
    """The grid trained once, without a fault: the numbers every chaos run must reproduce."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    args, uri = grid(tmp, "--workers", "1")
    kdgrid(*args, cwd=tmp, env={**os.environ, **QUIET}, check=True, timeout=1200)
    return uri


def check_against(chaos: Chaos, reference: str, uri: str, plan, tmp, capsys, title: str) -> None:
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
    assert {k.phase for k in chaos.landed} >= set(REQUIRED)


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.timeout(3600)
def test_local_launcher_survives_20_random_kills_bit_equal(tmp_path, plan, uninterrupted, capsys):
    args, uri = grid(tmp_path, "--workers", "1")
    chaos = Chaos(args, tmp_path, Watch(tmp_path / "mlflow.db", tmp_path / "work", plan), SEED, kills=20, env=QUIET)
    check_against(chaos.run(), uninterrupted, uri, plan, tmp_path, capsys, "local launcher")
