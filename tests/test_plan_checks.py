"""What would fail when a run starts is refused when the grid is launched, with the field and the fix, before
anything is submitted: a Slurm world size that cannot make up the global batch, a teacher checkpoint that is
missing or unreadable, a dataset that is absent or smaller than one global batch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from orchestrator.launch.items import LaunchContext
from orchestrator.launch.launchers.slurm import Slurm
from orchestrator.launch.options import LaunchOptions
from orchestrator.plan import checks, make_plan
from tests.conftest import kdgrid
from trainer import tracking

BATCH_128 = "student.recipe.global_batch=128"  # smoke's batch 64: two micro-batches a step on one device


def slurm_config(tmp_path: Path, **resources) -> Path:
    path = tmp_path / "slurm.yaml"
    path.write_text(yaml.safe_dump({"partition": "debug", "folder": str(tmp_path / "submitit"), **resources}))
    return path


def slurm_problems(tmp_path: Path, plan, **resources) -> list:
    cfg = str(slurm_config(tmp_path, **resources))
    opts = LaunchOptions(launcher="slurm", workdir=tmp_path / "work", slurm_config=cfg)
    world_size, where = Slurm().devices(LaunchContext(plan, opts.resolved()))
    return checks.problems(plan.runs, world_size, where, plan.scale)


def test_slurm_world_size_is_held_against_the_global_batch(tmp_path):
    plan = make_plan("smoke", "fig4", overrides=[BATCH_128])
    (src, field, reason), *more = slurm_problems(tmp_path, plan, tasks_per_node=3)
    assert not more
    assert src == str(tmp_path / "slurm.yaml") and field == "student: nodes x tasks_per_node"
    assert "3 device(s) x batch_size 64 = 192 images per micro-step cannot make up the global batch of 128" in reason
    assert "3 run(s)" in reason and "a world size that divides 2 (1, 2)" in reason
    assert slurm_problems(tmp_path, plan, tasks_per_node=2) == []  # 2 x 64 = 128: one micro-batch a step
    assert slurm_problems(tmp_path, plan, nodes=2, teacher={"nodes": 1}) == []
    # the teachers (no global batch: batch_size x devices) go on any world size; 4 x 64 is more than 128
    four = slurm_problems(tmp_path, plan, tasks_per_node=4)
    assert [e[1] for e in four] == ["student: nodes x tasks_per_node"]


@pytest.mark.slow
def test_slurm_launch_refused_at_plan_time_submits_nothing(tmp_path):
    """`kdgrid launch --launcher slurm` with 3 tasks per job for a global batch of 128: refused with the
    config, the field and the fix; no job is submitted (no Slurm needed: nothing reaches it)."""
    cfg = slurm_config(tmp_path, tasks_per_node=3)
    out = kdgrid(
        "launch",
        "--scale",
        "smoke",
        "--tables",
        "fig4",
        "--launcher",
        "slurm",
        "--slurm-config",
        str(cfg),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--workdir",
        str(tmp_path / "work"),
        "--set",
        BATCH_128,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "the grid cannot start (nothing was launched)" in out.stderr
    assert re.search(rf"{re.escape(str(cfg))}: student: nodes x tasks_per_node: 3 device\(s\)", out.stderr)
    assert not (tmp_path / "submitit").exists() and "submitted" not in out.stdout


def _teacher_plan(path: Path):
    return make_plan("smoke", "fig4", overrides=[f"teachers.cait_s24_224={{path: {path}}}"])


def test_teacher_checkpoint_missing_or_unreadable_is_refused(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    assert checks.problems(_teacher_plan(good).runs, scale="smoke") == []
    damaged = {
        tmp_path / "missing.pt": "no checkpoint file at",
        tmp_path / "text.pt": "is not a PyTorch checkpoint",
        tmp_path / "cut.pt": "is a truncated or damaged zip archive",
    }
    (tmp_path / "text.pt").write_text("not a checkpoint")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:-40])  # a copy cut short: its zip directory is gone
    for path, why in damaged.items():
        [(_, field, reason)] = checks.problems(_teacher_plan(path).runs, scale="smoke")
        assert field == "teachers.cait_s24_224.path", field
        assert why in reason and str(path) in reason and "--set teachers.cait_s24_224.path=FILE" in reason


@pytest.fixture(scope="module")
def tiny_imagefolder(tmp_path_factory) -> Path:
    """An ImageFolder with 6 training images: far fewer than the paper's global batch of 1024."""
    root = tmp_path_factory.mktemp("imagenet")
    for split, cls, n in (("train", "a", 3), ("train", "b", 3), ("val", "a", 2)):
        (root / split / cls).mkdir(parents=True)
        for i in range(n):
            (root / split / cls / f"{i}.JPEG").write_bytes(b"")
    (root / "train" / "b" / "notes.txt").write_text("not an image")
    return root


def test_dataset_smaller_than_one_global_batch_is_refused(tiny_imagefolder):
    """The paper scale on a small ImageFolder: refused at plan time, where it used to fail when training started
    ("the training set has fewer images than one global batch of 1024")."""
    plan = make_plan("paper", "2", overrides=[f"data.root={tiny_imagefolder}"])
    [(_, field, reason)] = checks.problems(plan.runs, scale="paper")
    assert field == "data.root"
    assert f"{len(plan.runs)} run(s)" in reason
    assert "the training set holds 6 image(s), fewer than one global batch of 1024" in reason


def test_dataset_absent_or_its_subset_too_small_is_refused(tmp_path):
    absent = make_plan("paper", "2", overrides=[f"data.root={tmp_path / 'nowhere'}"])
    [(_, field, reason)] = checks.problems(absent.runs)
    assert field == "data.root" and "not found at" in reason and "train/ and val/" in reason
    small = make_plan("smoke", "fig4", overrides=["data.train_subset=32"])
    [(_, field, reason)] = checks.problems(small.runs)  # the teacher keeps its own 2048 images
    assert field == "data.train_subset" and "holds 32 image(s), fewer than one global batch of 64" in reason
    assert "3 run(s)" in reason


@pytest.mark.slow
def test_local_launch_refused_trains_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = kdgrid(
        "reproduce",
        "--scale",
        "smoke",
        "--tables",
        "fig4",
        "--tracking-uri",
        uri,
        "--workdir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "reports"),
        "--set",
        "data.train_subset=32",
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "data.train_subset: 3 run(s)" in out.stderr and "fewer than one global batch of 64" in out.stderr
    runs = tracking.runs_by_hash(tracking.client(uri), "smoke")
    assert runs == {} and not (tmp_path / "work" / "logs").exists() and not (tmp_path / "reports").exists()
