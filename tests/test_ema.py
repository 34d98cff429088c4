"""The EMA of a run's weights and the evaluation on it (`recipe.eval_weights: ema`, ViTKD's DeiT-B rows as
mmcv's EMAHook trains them): the average computed by hand, the evaluated weights read back and scored by a
plain loop, and a resumed run's EMA bit-equal to an uninterrupted one's."""

from __future__ import annotations

import json

import pytest
import torch

from tests import smoke_specs
from trainer.problems import SpecError
from trainer.spec import parse_experiment

DECAY = 0.9  # far from 1, so that a few steps move the EMA well away from the weights


def ema_spec(epochs: int = 2, eval_weights: str | None = "ema") -> dict:
    spec = smoke_specs.teacher(epochs=epochs, train=512)
    spec["student"] = {**smoke_specs.STUDENT_MODEL, "name": "analog_deit_tiny", "drop_path": 0.0}
    spec["data"]["val_subset"] = 256
    spec["recipe"].update(ema=True, ema_decay=DECAY, eval_weights=eval_weights, log_every=4)
    return spec


def test_eval_weights_needs_an_ema_and_model_is_the_run_as_before():
    with pytest.raises(SpecError, match="recipe.eval_weights: ema needs ema: true"):
        parse_experiment({**ema_spec(), "recipe": {**ema_spec()["recipe"], "ema": False}})
    plain = parse_experiment(ema_spec(eval_weights=None))
    assert parse_experiment(ema_spec(eval_weights="model")).content_hash() == plain.content_hash()
    assert parse_experiment(ema_spec()).content_hash() != plain.content_hash()


def test_the_ema_is_the_average_of_the_weights_from_the_initial_ones(tmp_path):
    """ema_t = d ema_(t-1) + (1 - d) w_t from ema_0 = the initial weights (mmcv's EMAHook with momentum
    1 - d, no warm-up: min(m, (1+t)/(100+t)) = m), computed here from the weights after each step."""
    from trainer.distributed import DistEnv
    from trainer.engine import Batch, build_member, train_step
    from trainer.precision import Precision

    spec = parse_experiment(ema_spec())
    m = build_member(spec, DistEnv(device="cpu"), tmp_path, steps=4)
    names = [n for n, _ in m.core.model.named_parameters()]
    expected = {n: p.detach().clone().double() for n, p in m.core.model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
        train_step(m, Batch(x, y, None, {}, step), step, Precision("fp32", "cpu"))
        weights = dict(m.core.model.named_parameters())
        for n in names:
            expected[n] = DECAY * expected[n] + (1 - DECAY) * weights[n].detach().double()
    ema = dict(m.ema.module.named_parameters())
    for n in names:
        torch.testing.assert_close(ema[n].double(), expected[n], rtol=1e-5, atol=1e-6)
    moved = max((ema[n] - dict(m.core.model.named_parameters())[n]).abs().max().item() for n in names)
    assert moved > 1e-3  # the EMA is not the model


def _train(spec: dict, tmp_path, name: str, callbacks=()):
    from trainer.engine import train

    s = parse_experiment(spec)
    work = tmp_path / name
    train([s], work=work, tracking_uri=f"sqlite:///{tmp_path / (name + '.db')}", callbacks=callbacks)
    return s.content_hash(), work


def _top1(state: dict, spec) -> float:
    """The top-1 of `state` on the run's validation images by a plain loop (not the engine's evaluate)."""
    from trainer import data, models

    model = models.create(spec.student.name, **spec.model_kwargs())
    model.load_state_dict(state)
    model.eval()
    _, val = data.build(spec.data, spec.recipe.batch_size)
    right = total = 0
    with torch.no_grad():
        for x, y in val.epoch(0, 0):
            right += (model(x).argmax(1) == y).sum().item()
            total += y.numel()
    return 100.0 * right / total


@pytest.mark.slow
def test_the_run_is_evaluated_on_its_ema_and_resumes_it_bit_equal(tmp_path):
    from trainer import workdir

    spec = ema_spec(epochs=2)
    s = parse_experiment(spec)
    h, work = _train(spec, tmp_path, "whole")
    history = json.loads((work / h / "history.json").read_text())
    final = workdir.load(work / h / "final.pt")
    # val.* is the EMA's accuracy, val_model.* the trained model's: each scored again by a plain loop
    on_ema, on_model = _top1(final["ema"], s), _top1(final["model"], s)
    assert on_ema != on_model  # the two weights score differently: the test tells them apart
    assert history[-1]["val.top1"] == pytest.approx(on_ema, abs=1e-9)
    assert history[-1]["val_model.top1"] == pytest.approx(on_model, abs=1e-9)
    assert "val_ema.top1" not in history[-1]
    assert any(not torch.equal(final["ema"][k], final["model"][k]) for k in final["model"])

    class Stop(KeyboardInterrupt):
        pass

    class StopAfterFirstEpoch:
        def on_start(self, *a): ...
        def on_progress(self, *a): ...
        def on_end(self, *a): ...
        def on_epoch(self, run_hash, epoch, metrics):
            raise Stop  # after epoch 1's checkpoint

    with pytest.raises(Stop):
        _train(spec, tmp_path, "resumed", callbacks=(StopAfterFirstEpoch(),))
    assert workdir.load(tmp_path / "resumed" / h / "checkpoint.pt")["epoch"] == 1
    _train(spec, tmp_path, "resumed")
    resumed = workdir.load(tmp_path / "resumed" / h / "final.pt")
    assert resumed["ema"].keys() == final["ema"].keys()
    assert all(torch.equal(resumed["ema"][k], final["ema"][k]) for k in final["ema"]), "EMA not restored bit-equal"
    assert all(torch.equal(resumed["model"][k], final["model"][k]) for k in final["model"])


def test_a_checkpoint_restores_the_ema_bit_equal(tmp_path):
    from trainer.distributed import DistEnv
    from trainer.engine import build_member

    spec = parse_experiment(ema_spec())
    a = build_member(spec, DistEnv(device="cpu"), tmp_path, steps=4)
    with torch.no_grad():
        for p in a.ema.module.parameters():
            p.add_(torch.randn_like(p))
    b = build_member(spec, DistEnv(device="cpu"), tmp_path, steps=4)
    b.restore(a.state(1))
    for (n, pa), (_, pb) in zip(a.ema.module.state_dict().items(), b.ema.module.state_dict().items()):
        assert torch.equal(pa, pb), n
