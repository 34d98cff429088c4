"""`recipe.precision`: fp16 with a GradScaler, bf16, fp32; what a run trains with, its hash, its record, and
fp16/bf16 runs on CPU that resume bit-exactly (the scaler's state in the checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests import smoke_specs
from trainer import models, precision, tracking, workdir
from trainer.engine import cohort_key
from trainer.run import train_specs
from trainer.spec import SpecError, parse_experiment


def _with_recipe(**recipe) -> dict:
    spec = smoke_specs.teacher()
    spec["recipe"].update(recipe)
    return spec


def test_effective_precision_keeps_amps_meaning_where_unset():
    assert precision.effective(None, True, "cuda:0") == "fp16"  # the authors' mixed precision (was bf16)
    assert precision.effective(None, True, "cpu") == "fp32"
    assert precision.effective(None, False, "cuda") == "fp32"
    assert precision.effective("bf16", True, "cuda") == "bf16"
    assert precision.effective("fp16", True, "cpu") == "fp16"  # set: on every device


def test_precision_is_hashed_only_where_it_changes_the_run():
    base = parse_experiment(_with_recipe()).content_hash()
    assert parse_experiment(_with_recipe(precision=None)).content_hash() == base
    hashes = {p: parse_experiment(_with_recipe(precision=p)).content_hash() for p in ("fp16", "bf16", "fp32")}
    assert len(set(hashes.values()) | {base}) == 4
    # amp: false already trains in fp32 everywhere: saying so again is the same run
    no_amp = parse_experiment(_with_recipe(amp=False))
    again = parse_experiment(_with_recipe(amp=False, precision="fp32"))
    assert again.recipe.precision is None and again.content_hash() == no_amp.content_hash()
    with pytest.raises(SpecError, match="recipe.precision: bf16 with amp: false"):
        parse_experiment(_with_recipe(amp=False, precision="bf16"))
    with pytest.raises(SpecError, match="recipe.precision"):
        parse_experiment(_with_recipe(precision="fp8"))


def test_runs_of_another_precision_are_another_cohort():
    keys = {cohort_key(parse_experiment(_with_recipe(precision=p))) for p in (None, "fp16", "bf16")}
    assert len(keys) == 3


def test_autocast_and_scaler_per_precision_on_cpu():
    layer, x = torch.nn.Linear(8, 4), torch.randn(2, 8)
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        p = precision.Precision(name, "cpu")
        with p.autocast():
            assert layer(x).dtype == dtype, name
        assert (p.scaler() is not None) == (name == "fp16"), name
    assert precision.Precision("fp16", "cpu").label == "fp16 AMP"


def test_a_scaled_step_unscales_before_clipping_and_skips_overflow():
    """The GradScaler loop: clipping sees the true gradient norm; an inf gradient skips the step and
    halves the scale, as torch.cuda.amp does in DeiT's loop."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1, bias=False)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    scaler = precision.Precision("fp16", "cpu").scaler()
    before = layer.weight.detach().clone()
    precision.backward(layer(torch.ones(1, 4)).sum(), scaler)  # grad = ones, norm 2, scaled by 65536
    precision.step(opt, scaler, layer.parameters(), clip_grad=1.0)
    assert torch.allclose(before - layer.weight.detach(), torch.full((1, 4), 0.5))  # clipped to norm 1
    start = scaler.get_scale()
    opt.zero_grad()
    precision.backward(layer(torch.full((1, 4), float("inf"))).sum(), scaler)
    stepped = layer.weight.detach().clone()
    precision.step(opt, scaler, layer.parameters(), clip_grad=None)
    assert torch.equal(layer.weight.detach(), stepped) and scaler.get_scale() == start / 2


# ---- training on CPU -------------------------------------------------------------------------------
class Stop(Exception):
    pass


class StopAfterFirstEpoch:
    """An engine callback that interrupts training once epoch 1 is checkpointed."""

    def on_start(self, *args) -> None: ...
    def on_progress(self, *args) -> None: ...
    def on_end(self, *args) -> None: ...

    def on_epoch(self, run_hash: str, epoch: int, metrics: dict) -> None:
        if epoch == 0:
            raise Stop("interrupted after epoch 1")


def _student(tmp_path: Path, name: str) -> dict:
    """Hard KD + the manifold loss from a random-weight teacher checkpoint, 2 epochs of 8 steps."""
    torch.manual_seed(0)
    teacher = models.create(
        smoke_specs.TEACHER_MODEL["name"], num_classes=10, in_chans=1, **smoke_specs.TEACHER_MODEL["kwargs"]
    )
    path = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    spec = smoke_specs.student("", epochs=2, train=512, kd="hard", manifold={"k": 64, "reduction": "released"})
    spec["teacher"] = {**smoke_specs.TEACHER_MODEL, "source": "checkpoint", "path": str(path)}
    spec["data"]["val_subset"] = 256
    spec["recipe"].update(precision=name, log_every=2)
    return spec


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_mixed_precision_trains_on_cpu_and_resumes_bit_exactly(tmp_path, name):
    spec = parse_experiment(_student(tmp_path, name))
    h = spec.content_hash()

    def run(work: str, callbacks=()) -> dict[str, str]:
        uri = f"sqlite:///{tmp_path / work}.db"
        return train_specs([spec], work=tmp_path / work, tracking_uri=uri, threads=1, callbacks=callbacks)

    assert run("straight") == {h: "finished"}
    with pytest.raises(Stop):
        run("resumed", callbacks=(StopAfterFirstEpoch(),))
    first = workdir.load(tmp_path / "resumed" / h / "checkpoint.pt")
    assert first["epoch"] == 1
    assert run("resumed") == {h: "finished"}

    a, b = (workdir.load(tmp_path / w / h / "checkpoint.pt") for w in ("straight", "resumed"))
    if name == "fp16":  # the loss scale and its growth tracker, checkpointed and carried on from epoch 1
        fresh = torch.amp.GradScaler("cpu").state_dict()
        assert (first["scaler"]["scale"], first["scaler"]["_growth_tracker"]) != (fresh["scale"], 0)
        assert a["scaler"] == b["scaler"]
    else:
        assert a["scaler"] is None
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    hist = [json.loads((tmp_path / w / h / "history.json").read_text()) for w in ("straight", "resumed")]

    def numbers(entries: list[dict]) -> list[dict]:
        return [{k: v for k, v in e.items() if not (k.endswith("time_s") or k.startswith("cost."))} for e in entries]

    assert numbers(hist[0]) == numbers(hist[1])
    assert all(torch.isfinite(torch.tensor(e["train.loss"])) for e in hist[0])
    params = tracking.runs_by_hash(tracking.client(f"sqlite:///{tmp_path / 'resumed'}.db"), "test", [h])[h].data.params
    assert params["effective.precision"] == name and params["recipe.precision"] == name
    assert params["protocol.precision"] == {"fp16": "fp16 AMP", "bf16": "bf16 autocast"}[name]
