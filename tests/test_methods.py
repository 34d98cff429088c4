"""The method registry (trainer/methods/): what the engine, grid and plan read from it, and DeiT's soft
reduction checked against the KL computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from trainer import losses, methods
from trainer.objective import objective
from trainer.spec import DistillationSpec


def test_registry_declares_every_method_once():
    assert {"kd", "manifold", "embedding"} <= set(methods.REGISTRY)
    rows = methods.row_methods()
    assert {"hard", "soft", "manifold", "embedding"} <= set(rows)
    assert rows["hard"] is rows["soft"] is methods.REGISTRY["kd"]
    # the row fields grid.py used to hard-code, now read from the methods
    owners = methods.row_field_owners()
    assert owners["k"] == ["manifold"] and sorted(owners["student_blocks"]) == ["embedding", "manifold"]


def test_distillation_spec_is_built_from_the_registry():
    fields = set(DistillationSpec.model_fields)
    assert {"kd", "tau", "kd_weight", "kd_reduction", "manifold", "embedding"} <= fields
    d = DistillationSpec(kd="hard", manifold={"k": 4})
    assert [m.key for m in d.methods] == ["kd", "manifold"] and d.uses_teacher
    assert not DistillationSpec().uses_teacher
    # the reduction is DeiT's soft option: normalised away elsewhere, so it cannot split equal runs
    assert DistillationSpec(kd="hard", kd_reduction="elements") == DistillationSpec(kd="hard")


def _kl_by_hand(s: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    total = 0.0
    for row_s, row_t in zip(s.double().tolist(), t.double().tolist()):
        zs = [v / tau for v in row_s]
        zt = [v / tau for v in row_t]
        ls = [v - math.log(sum(math.exp(u) for u in zs)) for v in zs]
        lt = [v - math.log(sum(math.exp(u) for u in zt)) for v in zt]
        total += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt))
    return total * tau * tau


def test_soft_kd_reductions_against_the_kl_by_hand():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    summed = _kl_by_hand(s, t, 3.0)
    batch = losses.kd_loss(s, t, kind="soft", tau=3.0)
    elements = losses.kd_loss(s, t, kind="soft", tau=3.0, reduction="elements")
    assert batch.item() == pytest.approx(summed / 5, rel=1e-5)
    assert elements.item() == pytest.approx(summed / 35, rel=1e-5)  # DeiT: sum / outputs_kd.numel()
    with pytest.raises(ValueError):
        losses.kd_loss(s, t, kind="soft", reduction="mean")


def test_objective_sums_the_methods_it_is_given():
    """DeiT's soft distillation of a student without a distillation token, with DeiT's reduction:
    (1 - lambda) CE + lambda KD on the class head."""
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(1)
    out, t_logits = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    y = torch.randint(0, 6, (4,), generator=g)
    d = DistillationSpec(kd="soft", tau=3.0, kd_weight=0.1, kd_reduction="elements")
    spec = SimpleNamespace(distillation=d, data=SimpleNamespace(augment=SimpleNamespace(smoothing=0.0)))
    terms = objective(spec, out, y, t_logits, {}, {}, None)
    ce = torch.nn.functional.cross_entropy(out, y)
    kd = _kl_by_hand(out, t_logits, 3.0) / out.numel()
    assert terms["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(0.9 * ce.item() + 0.1 * kd, rel=1e-5)


class _Batches:
    """A validation set as the engine reads it: `epoch(seed, epoch)` yields (images, labels)."""

    def __init__(self, batches):
        self.batches = batches

    def epoch(self, seed, epoch):
        return iter(self.batches)


def test_a_distilled_student_is_evaluated_three_ways_with_its_predictions():
    """DeiT's Table 5 reads one distilled run three ways: class head, distillation head, their average."""
    from contextlib import nullcontext

    from trainer import models
    from trainer.engine import evaluate

    torch.manual_seed(0)
    model = models.create("analog_deit_tiny_distilled", patch_size=7, embed_dim=16, num_heads=2)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(5, 1, 28, 28, generator=g), torch.randint(0, 10, (5,), generator=g)) for _ in range(3)]
    preds: dict = {}
    out = evaluate(model, _Batches(batches), "cpu", nullcontext, preds)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        f = model.forward_features(x)
        cls, dist = model.head(f[:, 0]), model.head_dist(f[:, 1])
        avg = model(x)  # timm's inference output: the heads' average
    assert preds["label"] == y.tolist()
    for name, logits in (("cls", cls), ("dist", dist), ("top1", avg)):
        assert preds[name] == logits.argmax(1).tolist()
    assert out["cls_top1"] == pytest.approx(100 * (cls.argmax(1) == y).float().mean().item())
    assert out["dist_top1"] == pytest.approx(100 * (dist.argmax(1) == y).float().mean().item())
    assert out["top1"] == pytest.approx(100 * (avg.argmax(1) == y).float().mean().item())
    plain = evaluate(
        models.create("analog_deit_tiny", patch_size=7, embed_dim=16, num_heads=2),
        _Batches(batches),
        "cpu",
        nullcontext,
    )
    assert "cls_top1" not in plain and set(plain) == {"top1", "top5", "loss"}
