"""The method registry (trainer/methods/): what the engine, grid and plan read from it, and DeiT's soft
reduction checked against the KL computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

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


# ---- what each method owns: its FLOPs, its parts of a run name, its recipe fields ------------------
def _row(**fields):
    from orchestrator.grid import AblationRow

    base = {"teacher": "cait_s24_224", "student": "deit_tiny_distilled_patch16_224", "paper_acc1": 70.0}
    return AblationRow.model_validate({**base, **fields})


def test_each_method_names_its_own_row_settings():
    from orchestrator.run_names import run_name

    m = methods.REGISTRY
    assert m["manifold"].name_parts("manifold", _row(method="manifold", k=384)) == ["k=384"]
    assert m["manifold"].name_parts("manifold", _row(method="manifold", alpha=0.5, terms=["ci", "cp"])) == [
        "L_ci+L_cp",
        "α=0.5",
    ]
    assert m["embedding"].name_parts("embedding", _row(method="embedding")) == []
    row = _row(method="embedding", student_blocks=[1, 2], teacher_blocks=[1, 24])
    assert m["embedding"].name_parts("embedding", row) == ["embedding", "blocks {1,2}"]
    soft = _row(
        method="soft",
        student="deit_tiny_patch16_224",
        teacher="regnety_160",
        tau=3.0,
        kd_weight=0.1,
        kd_reduction="elements",
    )
    assert m["kd"].name_parts("soft", soft) == ["soft", "τ=3 λ=0.1 kl/elements", "class token"]
    assert m["kd"].name_parts("hard", _row(method="hard")) == ["hard"]
    both = _row(method="vitkd+nkd", teacher="deit3_small_patch16_224", student="deit_tiny_patch16_224")
    assert m["vitkd"].name_parts("vitkd", both) == m["nkd"].name_parts("nkd", both) == []  # no row fields
    assert run_name(both, 0) == "DeiT III-Small→DeiT-Tiny · vitkd+nkd"
    assert run_name(soft, 2) == "RegNetY-16GF→DeiT-Tiny · soft · τ=3 λ=0.1 kl/elements · class token · seed 2"


def test_each_method_declares_its_recipe_fields():
    from orchestrator.grid import Recipe, load_recipes
    from trainer.methods.embedding import EmbeddingSpec
    from trainer.methods.logit import LogitSettings
    from trainer.methods.manifold import ManifoldSpec

    m = methods.REGISTRY
    assert {k: a for k, (a, _) in m["kd"].recipe_fields.items()} == {"logit": LogitSettings}
    assert {k: a for k, (a, _) in m["manifold"].recipe_fields.items()} == {"manifold": ManifoldSpec}
    assert {k: a for k, (a, _) in m["embedding"].recipe_fields.items()} == {"embedding": EmbeddingSpec}
    assert m["vitkd"].recipe_fields == m["nkd"].recipe_fields == {}  # their rows take their released settings
    owned = {f for method in m.values() for f in method.recipe_fields}
    assert set(Recipe.model_fields) == owned | {"description", "student"}
    assert Recipe.model_fields["logit"].is_required() and not Recipe.model_fields["manifold"].is_required()
    assert isinstance(load_recipes().recipes["released"].manifold, ManifoldSpec)


def test_each_method_prices_its_own_work():
    """The cost model asks the registry: a run's training step is its student's three forwards plus
    three times what its methods price, each from the shapes of the models it pairs."""
    from orchestrator.launch import costs
    from orchestrator.plan import make_plan
    from trainer.models import model_info

    plan = make_plan("smoke", "2,7,vitkd", 1, "paper-sum")
    by_key = {u.key: r.spec for r in plan.runs for u in r.uses}
    priced = {}
    for key in ("t2.r9", "t7.r1", "t2.r1", "vitkd.r3", "vitkd.r2"):
        spec = by_key[key]
        s = model_info(spec.student.name, **spec.model_kwargs())
        t = model_info(spec.teacher.name, **spec.teacher_kwargs())
        d = spec.distillation
        priced[key] = {m.key: m.flops(m.settings(d), s, t, spec) for m in methods.active(d)}
        assert costs.loss_flops(spec) == pytest.approx(sum(priced[key].values()))
        n_train, _ = costs.images(spec)
        f_s = costs.forward_flops(spec.student.name, spec.model_kwargs(), spec.data.in_chans, spec.data.img_size)
        own = costs.epoch_work(spec)[0][costs.model_key(spec.student.name, spec.model_kwargs())]
        assert own - n_train * costs.TRAIN * (f_s + costs.loss_flops(spec)) == pytest.approx(
            f_s * costs.images(spec)[1]
        )
    assert set(priced["t2.r9"]) == {"kd", "manifold"} and set(priced["t7.r1"]) == {"kd", "embedding"}
    assert set(priced["vitkd.r3"]) == {"vitkd", "nkd"} and set(priced["vitkd.r2"]) == {"vitkd"}
    assert priced["t2.r1"] == {"kd": 10 * 10}  # hard KD over Fashion-MNIST's 10 classes
    assert priced["vitkd.r3"]["nkd"] == 16 * 10
    # the manifold's relation maps, as the cost model priced them before the registry owned it
    spec, m = by_key["t2.r9"], by_key["t2.r9"].distillation.manifold
    s = model_info(spec.student.name, **spec.model_kwargs())
    n, p = spec.recipe.batch_size, s.num_patches
    assert priced["t2.r9"]["manifold"] == len(m.student_blocks) * 2 * 2 * s.width * (p * n * n + n * p * p + m.k**2) / n
    # ViTKD's generation convolutions dominate its price; the projections come only where widths differ
    assert priced["vitkd.r2"]["vitkd"] > 36 * p * 16**2
    assert priced["t7.r1"]["embedding"] > 0


def test_blocks_are_paired_in_order_by_one_check():
    """Manifold, embedding and ViTKD specs, and table rows, refuse unpaired blocks with the same words."""
    from pydantic import ValidationError

    from orchestrator.grid import row_problems
    from trainer.methods.embedding import EmbeddingSpec
    from trainer.methods.manifold import ManifoldSpec
    from trainer.methods.vitkd import ViTKDSpec

    want = "3 teacher blocks but 2 student blocks: blocks are paired in order"
    for spec in (ManifoldSpec, EmbeddingSpec, ViTKDSpec):
        with pytest.raises(ValidationError, match=f"teacher_blocks: {want}"):
            spec(student_blocks=(1, 2), teacher_blocks=(1, 2, 3))
    assert methods.paired_blocks_problem((1, 2), (1, 2, 3)) == want
    assert methods.paired_blocks_problem((1, 2), None) is None
    from orchestrator.grid import AblationRow

    row = AblationRow.model_construct(
        student="deit_tiny_distilled_patch16_224",
        teacher="cait_s24_224",
        method="manifold",
        student_blocks=(1, 2),
        teacher_blocks=(1, 2, 3),
    )
    assert ("teacher_blocks", want) in row_problems(row)


# ---- the manifold reduction: sum | mean, read from the old names, hashed as before ------------------
def test_reduction_renamed_sum_mean_keeps_every_hash(tmp_path):
    from tests import smoke_specs
    from trainer.methods.manifold import ManifoldSpec
    from trainer.spec import _hashed, load_experiment, parse_experiment

    assert ManifoldSpec(reduction="paper") == ManifoldSpec(reduction="sum") == ManifoldSpec()
    assert ManifoldSpec(reduction="released") == ManifoldSpec(reduction="mean")
    assert ManifoldSpec(reduction="mean").layer_reduce == "mean" == ManifoldSpec(reduction="mean", layers="mean").layers
    assert ManifoldSpec(reduction="sum", layers="mean").layer_reduce == "mean"
    with pytest.raises(Exception, match="'sum' or 'mean'"):
        ManifoldSpec(reduction="average")
    for old, new in (("paper", "sum"), ("released", "mean")):
        spec_old = parse_experiment(smoke_specs.student("0" * 16, kd="hard", manifold={"k": 64, "reduction": old}))
        spec_new = parse_experiment(smoke_specs.student("0" * 16, kd="hard", manifold={"k": 64, "reduction": new}))
        assert spec_old == spec_new and spec_old.distillation.manifold.reduction == new
        assert spec_old.content_hash() == spec_new.content_hash()
        assert _hashed(spec_new)["distillation"]["manifold"]["reduction"] == old  # the token hashes were made with
    # a spec file written before the rename loads, and is written back with the new name
    path = smoke_specs.write(
        smoke_specs.student("0" * 16, manifold={"k": 64, "reduction": "released"}), tmp_path / "a.yaml"
    )
    spec = load_experiment(path)
    assert spec.distillation.manifold.reduction == "mean" and "reduction: mean" in spec.to_yaml()
    assert parse_experiment(yaml.safe_load(spec.to_yaml())).content_hash() == spec.content_hash()


def test_a_spec_file_with_a_key_twice_is_refused(tmp_path):
    from tests import smoke_specs
    from trainer.spec import SpecError, load_experiment

    text = smoke_specs.write(smoke_specs.student("0" * 16), tmp_path / "a.yaml").read_text()
    path = tmp_path / "twice.yaml"
    path.write_text(text.replace("recipe:\n", "recipe:\n  epochs: 9\n", 1))
    with pytest.raises(SpecError) as err:
        load_experiment(path)
    assert err.value.source == str(path) and err.value.problems[0][0] == "recipe.epochs"
    assert "duplicate key 'epochs' on line" in str(err.value)
