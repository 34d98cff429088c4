"""The paper's protocol on any hardware: one global batch, however it is split over devices and accumulation.

World size 2 (two gloo processes, DDP) x accumulation 1 and world size 1 x accumulation 2 train the same
run (same content hash) and must give the same per-epoch metrics and loss terms.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from orchestrator.launch.ddp import run_item_ddp
from tests import smoke_specs
from trainer import models
from trainer.spec import parse_experiment


def _teacher_checkpoint(path: Path) -> Path:
    """A random-weight teacher (seeded): the equality test needs a teacher, not a good one."""
    torch.manual_seed(0)
    m = models.create(smoke_specs.TEACHER_MODEL["name"], num_classes=10, in_chans=1,
                      **smoke_specs.TEACHER_MODEL["kwargs"])
    torch.save(m.state_dict(), path)
    return path


def _spec(teacher: Path) -> dict:
    """Hard KD + manifold loss (all three terms) + mixup/cutmix + drop-path, 16 per device, 32 global."""
    spec = smoke_specs.teacher(epochs=2, train=128)
    spec.update(name="protocol", student={**smoke_specs.STUDENT_MODEL, "drop_path": 0.1},
                teacher={**smoke_specs.TEACHER_MODEL, "source": "checkpoint", "path": str(teacher)},
                distillation={"kd": "hard", "manifold": {"k": 64, "reduction": "released"}})
    spec["data"].update(val_subset=64, augment={"hflip": 0.5, "crop_scale": [0.35, 1.0], "mixup": 0.8,
                                                "cutmix": 1.0, "smoothing": 0.1})
    spec["recipe"].update(batch_size=16, global_batch=32, log_every=1, warmup_epochs=0.5)
    return spec


def _train(spec: dict, world_size: int, base: Path) -> tuple[list[dict], dict[str, str]]:
    h = parse_experiment(spec).content_hash()
    payload = {"id": f"ws{world_size}", "specs": [spec], "hashes": [h], "deps": {h: []}, "scale": "test"}
    uri = f"sqlite:///{base / 'mlflow.db'}"
    out = run_item_ddp(payload, world_size, work=str(base / "runs"), tracking_uri=uri, threads=1)
    assert out == {h: "finished"}, (out, (base / "runs" / "logs").glob("*"))
    from trainer import tracking

    run = tracking.runs_by_hash(tracking.client(uri), "test", [h])[h]
    return json.loads((base / "runs" / h / "history.json").read_text()), run.data.params


@pytest.mark.slow
def test_world_size_2_equals_accumulation_2(tmp_path):
    spec = _spec(_teacher_checkpoint(tmp_path / "teacher.pt"))
    ddp, p_ddp = _train(spec, 2, tmp_path / "ws2")
    acc, p_acc = _train(spec, 1, tmp_path / "ws1")
    assert (p_ddp["protocol.world_size"], p_ddp["protocol.accumulation"]) == ("2", "1")
    assert (p_acc["protocol.world_size"], p_acc["protocol.accumulation"]) == ("1", "2")
    assert p_ddp["protocol.global_batch"] == p_acc["protocol.global_batch"] == "32"
    assert len(ddp) == len(acc) == 2
    keys = [k for k in ddp[0] if k.startswith(("train.", "val.")) or k == "lr"]
    for term in ("train.loss", "train.ce", "train.kd", "train.mf_ci", "train.mf_cp", "train.mf_rs", "val.top1"):
        assert term in keys, keys
    for e_ddp, e_acc in zip(ddp, acc):
        for k in keys:
            assert math.isclose(e_ddp[k], e_acc[k], rel_tol=1e-4, abs_tol=1e-6), (e_ddp["epoch"], k, e_ddp[k], e_acc[k])
    # The run learns something different each epoch (the comparison is not between two constants).
    assert ddp[0]["train.loss"] != ddp[1]["train.loss"]
