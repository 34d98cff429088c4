"""ViTKD's losses (trainer/methods/vitkd.py) against the same quantities computed another way, on small
shapes with fixed masks: the masking as its released code does it (shuffle, keep, append mask tokens,
unshuffle), the convolutions as matrix products of unfolded patches, the MSEs as explicit sums."""

from __future__ import annotations

import math

import pytest
import torch

from trainer import methods
from trainer.methods.vitkd import ViTKDModule, ViTKDSpec, fill_masked, generation_loss, mimic_loss, random_token_mask


def _masked_like_the_released_code(x, noise, ratio, token):
    """Keep the tokens of lowest noise, append mask tokens, put every token back in place."""
    n, p, c = x.shape
    keep = int(p * (1 - ratio))
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    kept = torch.gather(x, 1, shuffle[:, :keep, None].expand(-1, -1, c))
    full = torch.cat([kept, token.expand(n, p - keep, c)], dim=1)
    mask = torch.ones(n, p)
    mask[:, :keep] = 0
    return torch.gather(full, 1, restore[..., None].expand(-1, -1, c)), torch.gather(mask, 1, restore)


def _conv3x3_by_unfold(x_grid, conv):
    n, c, h, w = x_grid.shape
    cols = torch.nn.functional.unfold(x_grid, 3, padding=1)  # (n, c*9, h*w)
    out = conv.weight.reshape(conv.out_channels, -1) @ cols + conv.bias[:, None]
    return out.reshape(n, conv.out_channels, h, w)


def test_mask_is_the_released_codes_mask():
    g = torch.Generator().manual_seed(3)
    n, p, c = 3, 16, 5
    mask = random_token_mask(n, p, 0.5, torch.Generator().manual_seed(7))
    noise = torch.rand(n, p, generator=torch.Generator().manual_seed(7))  # the same draw
    x, token = torch.randn(n, p, c, generator=g), torch.randn(c, generator=g)
    ref_x, ref_mask = _masked_like_the_released_code(x, noise, 0.5, token)
    torch.testing.assert_close(mask, ref_mask)
    torch.testing.assert_close(fill_masked(x, mask, token), ref_x)
    assert (mask.sum(1) == p - int(p * 0.5)).all()
    odd = random_token_mask(2, 9, 0.5, torch.Generator().manual_seed(1))
    assert (odd.sum(1) == 9 - 4).all()  # int(9 * 0.5) = 4 kept, as the released code keeps


def test_losses_against_explicit_sums():
    g = torch.Generator().manual_seed(0)
    n, p, c_s, c_t = 2, 9, 4, 6
    spec = ViTKDSpec()
    module = ViTKDModule(c_s, c_t, 2)
    for prm in module.parameters():  # non-trivial parameters (the mask token starts at zero)
        torch.nn.init.normal_(prm, generator=g)
    low_s = [torch.randn(n, p, c_s, generator=g) for _ in range(2)]
    high_s = torch.randn(n, p, c_s, generator=g)
    low_t = [torch.randn(n, p, c_t, generator=g) for _ in range(2)]
    high_t = torch.randn(n, p, c_t, generator=g)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1, 0, 1, 0], [0, 0, 0, 1, 1, 1, 0, 0, 1]], dtype=torch.float32)

    low, generated = module(low_s, high_s, mask)
    method = methods.REGISTRY["vitkd"]
    x = methods.LossInputs(
        cls_logits=None,
        kd_logits=None,
        t_logits=None,
        target=None,
        student=(low, generated, mask),
        teacher=[*low_t, high_t],
        generator=None,
    )
    total, terms = method.loss(spec, x)

    # another way: double precision, explicit loops, the convs as unfolded matrix products
    d = lambda t: t.detach().double()  # noqa: E731
    mim = 0.0
    for layer in range(2):
        w, b = d(module.align_low[layer].weight), d(module.align_low[layer].bias)
        for i in range(n):
            for j in range(p):
                proj = w @ d(low_s[layer][i, j]) + b
                mim += float(((proj - d(low_t[layer][i, j])) ** 2).sum())
    mim = spec.alpha * mim / n
    high = d(high_s) @ d(module.align_high.weight).T + d(module.align_high.bias)
    token = d(module.mask_token).reshape(-1)
    filled = torch.where(mask.bool()[..., None], token, high)
    grid = filled.transpose(1, 2).reshape(n, c_t, 3, 3)
    conv1, conv2 = (module.generation[0].double(), module.generation[2].double())
    y = _conv3x3_by_unfold(torch.relu(_conv3x3_by_unfold(grid, conv1)), conv2).flatten(2).transpose(1, 2).detach()
    gen = 0.0
    for i in range(n):
        for j in range(p):
            if mask[i, j]:
                gen += float(((y[i, j] - d(high_t[i, j])) ** 2).sum())
    gen = spec.beta * gen / n / spec.lam

    assert terms["vitkd_mim"].item() == pytest.approx(mim, rel=1e-5)
    assert terms["vitkd_gen"].item() == pytest.approx(gen, rel=1e-5)
    assert total.item() == pytest.approx(mim + gen, rel=1e-5)
    # the unmasked positions do not enter the generation loss
    moved = high_t.clone()
    moved[~mask.bool()] += 100.0
    assert generation_loss(generated, moved, mask, 0.5).item() == pytest.approx(gen / spec.beta, rel=1e-5)
    assert mimic_loss(low_t, low_t).item() == 0.0


def test_student_taps_and_teacher_taps():
    v = ViTKDSpec()
    m = methods.REGISTRY["vitkd"]
    assert m.student_taps(v) == (0, 1, methods.FINAL) and m.teacher_taps(v) == (0, 1, methods.FINAL)
    assert math.isclose(v.alpha, 3e-5) and math.isclose(v.beta, 3e-6) and v.lam == 0.5


def test_paper_plan_uses_vitkds_teachers_and_recipe():
    from orchestrator.plan import make_plan

    plan = make_plan("paper", "vitkd", 1)
    by_key = {u.key: r.spec for r in plan.runs for u in r.uses}
    assert len(by_key) == 9
    t = by_key["vitkd.r2"]
    assert (t.teacher.name, t.teacher.source) == ("deit3_small_patch16_224.fb_in22k_ft_in1k", "hub")
    assert by_key["vitkd.r5"].teacher.name == "deit3_base_patch16_224.fb_in22k_ft_in1k"
    assert by_key["vitkd.r9"].teacher.name == "deit3_large_patch16_224.fb_in22k_ft_in1k"
    r = t.recipe
    assert (r.epochs, r.lr, r.lr_scale_batch, r.warmup_epochs, r.clip_grad) == (300, 1e-3, 1024, 20, 5.0)
    assert [by_key[f"vitkd.r{i}"].student.drop_path for i in (1, 4, 7)] == [0.0, 0.0, 0.1]
    d = by_key["vitkd.r3"].distillation
    assert d.kd == "none" and d.vitkd == ViTKDSpec() and (d.nkd.temp, d.nkd.gamma) == (1.0, 1.0)
    assert by_key["vitkd.r1"].teacher is None
    # cls_KD's own protocol: mmcls's sampler (no repeated augmentation), fp32, the EMA evaluated for DeiT-B
    for key, s in by_key.items():
        base = s.student.name == "deit_base_patch16_224"
        assert s.data.augment.repeated_aug is False and s.recipe.precision == "fp32", key
        assert (s.recipe.ema, s.recipe.eval_weights) == ((True, "ema") if base else (False, None)), key
        assert s.recipe.ema_decay == pytest.approx(1 - 4e-5)


# The paper-scale runs of ViTKD's table as planned before its own protocol (issue 28): DeiT's repeated
# augmentation, precision unset (fp16 AMP on CUDA), no EMA.
BEFORE = {
    "vitkd.r1": "a9a7786551c088f5",
    "vitkd.r2": "3fcec52c8ca28c1b",
    "vitkd.r3": "16bc6bb56fcdd04f",
    "vitkd.r4": "fc573e17da8f89f1",
    "vitkd.r5": "5364e005c285435e",
    "vitkd.r6": "56815c5c96c37ad5",
    "vitkd.r7": "511d67f3ec22b89e",
    "vitkd.r8": "06ab728b294f0a72",
    "vitkd.r9": "7ff4aae72d8f1517",
}


def test_only_the_protocol_moved_vitkds_hashes(tmp_path):
    """Every paper-scale ViTKD run changed its hash, and only by the settings its protocol changed: with
    them taken back, each hashes as before. The dumped specs (`kdgrid plan --dump`) show the protocol."""
    import yaml

    from orchestrator.plan import dump_plan, make_plan
    from trainer.spec import ExperimentSpec

    plan = make_plan("paper", "vitkd", 1)
    dump_plan(plan, tmp_path)
    for r in plan.runs:
        key = r.uses[0].key
        assert r.hash != BEFORE[key]
        raw = r.spec.model_dump()
        raw["data"]["augment"]["repeated_aug"] = True
        raw["recipe"].update(precision=None, ema=False, eval_weights=None)
        assert ExperimentSpec.model_validate(raw).content_hash() == BEFORE[key], key
        dumped = yaml.safe_load((tmp_path / f"{r.hash}.yaml").read_text())
        assert dumped["data"]["augment"]["repeated_aug"] is False and dumped["recipe"]["precision"] == "fp32"
        base = dumped["student"]["name"] == "deit_base_patch16_224"
        assert (dumped["recipe"]["ema"], dumped["recipe"]["eval_weights"]) == ((True, "ema") if base else (False, None))


def test_vitkds_protocol_is_the_paper_scales_only():
    """At the CPU scales the table keeps the scale's own student recipe: those runs did not move."""
    from orchestrator.plan import make_plan

    for scale in ("mini", "smoke"):
        for r in make_plan(scale, "vitkd", 1).students:
            s = r.spec
            assert s.recipe.precision is None and not s.recipe.ema and s.recipe.eval_weights is None, scale


def test_a_smoke_step_trains_vitkds_modules_with_the_student(tmp_path):
    """ViTKD's projections, mask token and generator are the student's parameters: they get gradients, AdamW
    holds them (the mask token without weight decay) and the checkpoint carries them."""
    from contextlib import nullcontext

    from orchestrator.plan import make_plan
    from trainer import models
    from trainer.distributed import DistEnv
    from trainer.engine import build_member, forward_loss
    from trainer.taps import forward_taps

    spec = next(r.spec for r in make_plan("smoke", "vitkd", 1).runs if any(u.key == "vitkd.r3" for u in r.uses))
    m = build_member(spec, DistEnv(device="cpu"), tmp_path, steps=4)
    names = {n for n, _ in m.core.named_parameters()}
    assert {"vitkd.mask_token", "vitkd.align_high.weight", "vitkd.generation.0.weight"} <= names
    assert "vitkd.align_low.1.weight" in names  # widths differ (16 vs 32): one projection per mimicked block
    no_decay = [id(p) for g in m.optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert id(dict(m.core.named_parameters())["vitkd.mask_token"]) in no_decay
    teacher = models.create(spec.teacher.name, **spec.teacher_kwargs()).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    with torch.no_grad():
        t_logits, feats = forward_taps(teacher, x, m.t_taps)
    terms = forward_loss(m, x, y, t_logits, dict(zip(m.t_taps, feats)), nullcontext)
    assert {"ce", "vitkd_mim", "vitkd_gen", "nkd", "loss"} <= set(terms)
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    grads = {n: p.grad for n, p in m.core.named_parameters() if n.startswith("vitkd.")}
    assert all(gr is not None and gr.abs().sum() > 0 for n, gr in grads.items()), [
        n for n, gr in grads.items() if gr is None or gr.abs().sum() == 0
    ]
    assert any(k.startswith("vitkd.") for k in m.state(1)["model"])


def test_footprint_counts_vitkds_generation_branch():
    from orchestrator.plan import make_plan
    from trainer.footprint import footprint

    runs = {u.key: r.spec for r in make_plan("paper", "vitkd", 1).runs for u in r.uses}
    base, vitkd = footprint(runs["vitkd.r1"]), footprint(runs["vitkd.r2"])
    # 6 token maps of the teacher width (384) for generation + 1 per mimicked block, 128 images x 196 patches
    assert vitkd.student - base.student == 4 * 128 * 196 * 384 * (6 + 2)
    assert vitkd.teacher > 0 and base.teacher == 0
