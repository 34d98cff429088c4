"""One distillation run from a spec file to MLflow, on real Fashion-MNIST: logging, resume, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests import smoke_specs
from tests.conftest import kdgrid
from trainer import tracking, workdir
from trainer.spec import parse_experiment

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


# 2048 images, 3 epochs: a teacher well above chance for the students to distill, in half the time of 4096.
TEACHER = smoke_specs.teacher(train=2048)


def history(work: Path, run_hash: str) -> list[dict]:
    return json.loads((work / run_hash / "history.json").read_text())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A trained smoke teacher in a real SQLite MLflow store, shared by this module's tests."""
    base = tmp_path_factory.mktemp("engine")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    spec = smoke_specs.write(TEACHER, base / "teacher.yaml")
    out = kdgrid(
        "train",
        str(spec),
        "--threads",
        "1",
        "--workdir",
        str(base / "runs"),
        "--tracking-uri",
        uri,
        "--quiet",
        cwd=base,
    )
    assert out.returncode == 0, out.stderr
    t_hash = parse_experiment(TEACHER).content_hash()
    return base, uri, t_hash


def test_distilled_student_logs_everything_to_mlflow(store):
    base, uri, t_hash = store
    # The released code's per-map mean: Eq. 10-12's sums stall a model this small (see README, calibration).
    spec_dict = smoke_specs.student(t_hash, train=2048, kd="hard", manifold={"k": 192, "reduction": "released"})
    path = smoke_specs.write(spec_dict, base / "student.yaml")
    t0 = time.perf_counter()
    out = kdgrid(
        "train",
        str(path),
        "--threads",
        "1",
        "--workdir",
        str(base / "runs"),
        "--tracking-uri",
        uri,
        "--quiet",
        cwd=base,
    )
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    print(f"distilled smoke student trained in {elapsed:.1f} s")

    spec = parse_experiment(spec_dict)
    c = tracking.client(uri)
    run = tracking.runs_by_hash(c, "test", [spec.content_hash()])[spec.content_hash()]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "test student"
    metrics = run.data.metrics
    for term in ("ce", "kd", "mf_ci", "mf_cp", "mf_rs", "loss"):
        hist = c.get_metric_history(run.info.run_id, f"train.{term}")
        assert [m.step for m in hist] == [1, 2, 3], term
        assert all(m.value == m.value and m.value >= 0 for m in hist), term  # finite, non-negative
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val.top1")] == [1, 2, 3]
    assert {"best_top1", "last_top1", "teacher.top1", "val.top5"} <= set(metrics)
    assert metrics["last_top1"] > 20.0, "a distilled student must learn well above chance (10%)"
    assert metrics["best_top1"] >= metrics["last_top1"]
    params = run.data.params
    assert params["distillation.kd"] == "hard"
    assert params["distillation.manifold.k"] == "192"
    assert params["distillation.manifold.student_blocks"] == "[1, 2, 3, 4, 9, 10, 11, 12]"
    assert float(params["effective.lr"]) == pytest.approx(2e-3)
    assert params["effective.world_size"] == "1"
    tags = run.data.tags
    assert tags[tracking.HASH] == spec.content_hash()
    assert (
        tags["env.threads"] == "1"
        and tags["env.torch"] == torch.__version__.split("+")[0]
        or tags["env.torch"].startswith(torch.__version__.split("+")[0])
    )
    assert tags["env.git_commit"]
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert "spec.yaml" in artifacts
    assert {a.path for a in c.list_artifacts(run.info.run_id, "checkpoints")} == {
        "checkpoints/final.pt",
        "checkpoints/checkpoint.pt",
    }
    # The teacher was frozen: its weights on disk are those it finished with.
    teacher_final = workdir.load(base / "runs" / t_hash / "final.pt")["model"]
    assert all(torch.isfinite(v).all() for v in teacher_final.values())

    # Running it again trains nothing: MLflow has it finished.
    again = kdgrid(
        "train",
        str(path),
        "--threads",
        "1",
        "--workdir",
        str(base / "runs"),
        "--tracking-uri",
        uri,
        "--quiet",
        cwd=base,
    )
    assert again.returncode == 0 and "skipped: finished in MLflow" in again.stdout


def test_killed_run_resumes_exactly(store, tmp_path):
    """SIGKILL mid-epoch; the rerun resumes from the last checkpoint and ends as if never interrupted."""
    base, uri, t_hash = store
    spec_dict = smoke_specs.student(
        t_hash, epochs=4, train=2048, kd="hard", manifold={"k": 192, "terms": ["ci", "rs"], "reduction": "released"}
    )
    path = smoke_specs.write(spec_dict, tmp_path / "student.yaml")
    h = parse_experiment(spec_dict).content_hash()
    work = base / "runs"  # shares the teacher's run dir
    ckpt = work / h / "checkpoint.pt"

    cmd = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "train",
        str(path),
        "--threads",
        "1",
        "--workdir",
        str(work),
        "--tracking-uri",
        uri,
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not ckpt.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    assert ckpt.exists()
    time.sleep(1.5)  # well inside epoch 2 (an epoch takes several seconds)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = workdir.load(ckpt)["epoch"]
    assert 1 <= done < 4, f"killed too late: checkpoint at epoch {done}"
    c = tracking.client(uri)
    run_before = tracking.runs_by_hash(c, "test", [h])[h]
    assert run_before.info.status == "RUNNING"  # a SIGKILLed process cannot say goodbye

    out = kdgrid(
        "train", str(path), "--threads", "1", "--workdir", str(work), "--tracking-uri", uri, "--quiet", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    run = tracking.runs_by_hash(c, "test", [h])[h]
    assert run.info.run_id == run_before.info.run_id and run.info.status == "FINISHED"
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "val.top1")]
    assert steps == [1, 2, 3, 4], "every epoch logged once, none repeated"
    resumed = history(work, h)
    assert [e["epoch"] for e in resumed] == [1, 2, 3, 4]

    # The same spec trained without interruption, elsewhere, gives the same numbers.
    fresh_work = tmp_path / "fresh"
    (fresh_work / t_hash).mkdir(parents=True)
    (fresh_work / t_hash / "final.pt").write_bytes((work / t_hash / "final.pt").read_bytes())
    out = kdgrid(
        "train",
        str(path),
        "--threads",
        "1",
        "--workdir",
        str(fresh_work),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'fresh.db'}",
        "--quiet",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    uninterrupted = history(fresh_work, h)

    def numbers(entry: dict) -> dict:  # what was learned, not how long it took
        return {k: v for k, v in entry.items() if not (k.endswith("time_s") or k.startswith("cost."))}

    assert [numbers(a) for a in resumed] == [numbers(b) for b in uninterrupted]


def test_nan_loss_fails_the_run_with_its_reason(store, tmp_path):
    base, uri, t_hash = store
    spec_dict = smoke_specs.student(
        t_hash, epochs=1, train=1024, kd="hard", manifold={"k": 192, "weight": 1e30, "reduction": "paper"}
    )
    spec_dict["recipe"]["lr"] = 1e6
    path = smoke_specs.write(spec_dict, tmp_path / "nan.yaml")
    out = kdgrid(
        "train",
        str(path),
        "--threads",
        "1",
        "--workdir",
        str(tmp_path / "runs"),
        "--tracking-uri",
        uri,
        "--quiet",
        cwd=tmp_path,
    )
    assert out.returncode == 1
    assert "non-finite loss" in out.stdout
    h = parse_experiment(spec_dict).content_hash()
    run = tracking.runs_by_hash(tracking.client(uri), "test", [h])[h]
    assert run.info.status == "FAILED"
    # the reason: the error, where (epoch, step of the first logging interval) and which terms
    reason = run.data.tags[tracking.FAILURE]
    assert re.fullmatch(r"NonFiniteLoss: non-finite loss at epoch 1 step 8: .*\bloss=(nan|inf)\b.*", reason), reason
    assert not (tmp_path / "runs" / h / "error.txt").exists()  # a diagnosis, not a crash: no traceback


def test_missing_dataset_fails_at_once_with_the_fix(tmp_path):
    spec = smoke_specs.teacher()
    spec["data"]["root"] = str(tmp_path / "no-such-dir")
    path = smoke_specs.write(spec, tmp_path / "bad.yaml")
    out = kdgrid("train", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert f"{path}: data.root: Fashion-MNIST not found at {tmp_path / 'no-such-dir'}" in out.stderr
    assert "apt-get install dataset-fashion-mnist" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "m.db").exists(), "nothing may start before the spec is checked"


def test_unknown_model_fails_at_once_with_suggestions(tmp_path):
    spec = smoke_specs.teacher()
    spec["student"]["name"] = "deit_tinny_patch16_224"
    path = smoke_specs.write(spec, tmp_path / "bad.yaml")
    out = kdgrid("train", str(path), cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert f"{path}: student.name: unknown model 'deit_tinny_patch16_224'" in out.stderr
    assert "deit_tiny_patch16_224" in out.stderr  # the suggestion
    assert "Traceback" not in out.stderr


def test_backfill_logs_checkpointed_epochs_mlflow_missed(tmp_path):
    """A kill between an epoch's checkpoint and its MLflow write: resume logs it once, not twice."""
    from types import SimpleNamespace

    from trainer.engine.runlog import backfill

    c = tracking.client(f"sqlite:///{tmp_path / 'm.db'}")
    spec = parse_experiment(smoke_specs.teacher())
    log = tracking.RunLog.open(c, spec, spec.content_hash())
    log.log_metrics({"val.top1": 50.0}, step=1)
    history = [{"epoch": 1, "val.top1": 50.0}, {"epoch": 2, "val.top1": 60.0}]
    member = SimpleNamespace(history=history, run=log)
    backfill(member)
    backfill(member)
    steps = [(m.step, m.value) for m in c.get_metric_history(log.run_id, "val.top1")]
    assert sorted(steps) == [(1, 50.0), (2, 60.0)]
