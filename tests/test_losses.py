"""trainer.losses against the paper's equations recomputed another way: explicit loops over images,
patch indices and sampled pairs, one cosine similarity at a time, in float64."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.losses import (
    classification_loss,
    embedding_transfer,
    kd_loss,
    manifold_loss,
    manifold_naive,
    manifold_terms,
)

N, P, CS, CT, K = 3, 5, 4, 6, 6  # small enough for element-by-element loops, widths differ on purpose


def feats(n=N, p=P, c=CS, seed=0, dtype=torch.float64):
    return torch.randn(n, p, c, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- the paper's terms, written as loops ---------------------------------------------------------------


def cos(x, y):
    return torch.dot(x, y) / (x.norm() * y.norm())


def gap(rows_s, rows_t):
    """||M(S) - M(T)||_F^2 over explicit lists of embeddings, one relation at a time."""
    return sum(
        (cos(rows_s[i], rows_s[j]) - cos(rows_t[i], rows_t[j])) ** 2
        for i in range(len(rows_s))
        for j in range(len(rows_s))
    )


def ci_loop(fs, ft, reduction):
    n, p = fs.shape[:2]
    total = sum(gap([fs[i, j] for i in range(n)], [ft[i, j] for i in range(n)]) for j in range(p))
    return total / p if reduction == "paper" else total / (p * n * n)


def cp_loop(fs, ft, reduction):
    n, p = fs.shape[:2]
    total = sum(gap([fs[i, j] for j in range(p)], [ft[i, j] for j in range(p)]) for i in range(n))
    return total / n if reduction == "paper" else total / (n * p * p)


def rs_loop(fs, ft, idx, reduction):
    p = fs.shape[1]
    rows = [(int(t) // p, int(t) % p) for t in idx]  # flat index -> (image, patch)
    total = gap([fs[i, j] for i, j in rows], [ft[i, j] for i, j in rows])
    return total if reduction == "paper" else total / len(idx) ** 2


def draws(seed, n_p, k, times=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n_p, generator=g)[:k] for _ in range(times)]


# --- manifold_terms -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["paper", "released"])
def test_terms_match_loops(reduction):
    fs, ft = feats(c=CS, seed=1), feats(c=CT, seed=2)
    got = manifold_terms(fs, ft, K, reduction=reduction, generator=torch.Generator().manual_seed(5))
    (idx,) = draws(5, N * P, K)
    assert set(got) == {"ci", "cp", "rs"}
    torch.testing.assert_close(got["ci"], ci_loop(fs, ft, reduction))
    torch.testing.assert_close(got["cp"], cp_loop(fs, ft, reduction))
    torch.testing.assert_close(got["rs"], rs_loop(fs, ft, idx, reduction))
    assert all(v.dim() == 0 for v in got.values())


def test_released_is_paper_rescaled_per_term():
    fs, ft = feats(c=CS, seed=1), feats(c=CT, seed=2)
    paper = manifold_terms(fs, ft, K, generator=torch.Generator().manual_seed(0))
    released = manifold_terms(fs, ft, K, reduction="released", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(released["ci"], paper["ci"] / N**2)
    torch.testing.assert_close(released["cp"], paper["cp"] / P**2)
    torch.testing.assert_close(released["rs"], paper["rs"] / K**2)


def test_terms_float32_and_half_inputs_compute_in_float32():
    fs, ft = feats(c=CS, seed=1), feats(c=CT, seed=2)
    ref = {"ci": ci_loop(fs, ft, "paper"), "cp": cp_loop(fs, ft, "paper")}
    got = manifold_terms(fs.float(), ft.float(), 0)
    for name in ref:
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name].double(), ref[name], rtol=1e-5, atol=1e-6)
    bf_s, bf_t = fs.bfloat16(), ft.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = manifold_terms(bf_s, bf_t, 0)
    ref = ci_loop(bf_s.double(), bf_t.double(), "paper")  # the same bf16 values, upcast: no bf16 maps
    assert got["ci"].dtype == torch.float32
    torch.testing.assert_close(got["ci"].double(), ref, rtol=1e-5, atol=1e-6)


def test_rs_uses_same_rows_for_student_and_teacher_and_the_global_rng():
    fs, ft = feats(c=CS, seed=1), feats(c=CT, seed=2)
    torch.manual_seed(123)  # generator=None draws from the global RNG
    got = manifold_terms(fs, ft, K)["rs"]
    torch.manual_seed(123)
    idx = torch.randperm(N * P)[:K]
    torch.testing.assert_close(got, rs_loop(fs, ft, idx, "paper"))
    a = manifold_terms(fs, ft, K, generator=torch.Generator().manual_seed(1))["rs"]
    b = manifold_terms(fs, ft, K, generator=torch.Generator().manual_seed(2))["rs"]
    assert not torch.isclose(a, b)  # the draw really depends on the stream
    # A scaled copy has the same cosine maps: rs is zero only if both sides take the same rows.
    assert manifold_terms(fs, fs * 3.0, K)["rs"] < 1e-20


def test_k_zero_and_k_too_large():
    fs, ft = feats(c=CS, seed=1), feats(c=CT, seed=2)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    rs = manifold_terms(fs, ft, 0, generator=g)["rs"]
    assert rs.item() == 0.0 and torch.equal(g.get_state(), state)
    manifold_terms(fs, ft, N * P)  # all rows is fine
    with pytest.raises(ValueError, match=r"k=16.*15"):
        manifold_terms(fs, ft, N * P + 1)


@pytest.mark.parametrize("shape_t", [(N + 1, P, CT), (N, P + 1, CT), (N, P)])
def test_shape_mismatch_names_shapes(shape_t):
    with pytest.raises(ValueError, match=r"\(3, 5, 4\).*" + re.escape(str(shape_t))):
        manifold_terms(feats(), torch.randn(shape_t, dtype=torch.float64), 2)


def test_prefix_tokens_dropped_by_caller():
    """DeiT puts class + distillation tokens first; the caller drops them with [:, 2:]."""
    ps, pt = feats(c=CS, seed=1), feats(c=CT, seed=2)
    tok_s = torch.cat([torch.randn(N, 2, CS, dtype=torch.float64), ps], dim=1)
    tok_t = torch.cat([torch.randn(N, 2, CT, dtype=torch.float64), pt], dim=1)
    clean = manifold_terms(ps, pt, K, generator=torch.Generator().manual_seed(3))
    sliced = manifold_terms(tok_s[:, 2:], tok_t[:, 2:], K, generator=torch.Generator().manual_seed(3))
    for name in clean:
        torch.testing.assert_close(sliced[name], clean[name])
    with_prefix = manifold_terms(tok_s, tok_t, K, generator=torch.Generator().manual_seed(3))
    assert not torch.isclose(with_prefix["cp"], clean["cp"])
    assert not torch.isclose(with_prefix["ci"], clean["ci"])


def test_gradients_reach_student_only():
    torch.manual_seed(0)
    student, teacher = nn.Linear(7, CS), nn.Linear(7, CT).eval()
    x = torch.randn(N, P, 7)
    f_s = student(x)
    with torch.no_grad():
        f_t = teacher(x)
    out = manifold_loss([f_s], [f_t], k=K, exact_weight=1.0)
    (out["total"] + embedding_transfer(f_s, f_t, proj=lambda f: f.repeat(1, 1, 2)[..., :CT])).backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None and teacher.bias.grad is None


# --- manifold_loss --------------------------------------------------------------------------------------


def pairs():
    return [feats(c=CS, seed=10), feats(c=2, seed=11)], [feats(c=CT, seed=20), feats(c=CT, seed=21)]


@pytest.mark.parametrize("layer_reduce", ["sum", "mean"])
@pytest.mark.parametrize("reduction", ["paper", "released"])
def test_manifold_loss_weights_and_layer_reduce(layer_reduce, reduction):
    fs, ft = pairs()
    w = {"ci": 1.0, "cp": 0.5, "rs": 0.2}
    out = manifold_loss(
        fs,
        ft,
        weights=w,
        k=K,
        reduction=reduction,
        layer_reduce=layer_reduce,
        generator=torch.Generator().manual_seed(9),
    )
    idx = draws(9, N * P, K, times=2)  # the pairs draw from the stream one after the other
    per_pair = {
        "ci": [ci_loop(s, t, reduction) for s, t in zip(fs, ft)],
        "cp": [cp_loop(s, t, reduction) for s, t in zip(fs, ft)],
        "rs": [rs_loop(s, t, i, reduction) for s, t, i in zip(fs, ft, idx)],
    }
    assert set(out) == {"ci", "cp", "rs", "total"}
    for name, values in per_pair.items():
        expected = w[name] * sum(values) / (1 if layer_reduce == "sum" else len(values))
        torch.testing.assert_close(out[name], expected)
    torch.testing.assert_close(out["total"], out["ci"] + out["cp"] + out["rs"])


def test_manifold_loss_term_subsets_skip_work():
    fs, ft = pairs()
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    out = manifold_loss(fs, ft, terms=("ci", "cp"), k=K, generator=g)
    assert set(out) == {"ci", "cp", "total"}
    assert torch.equal(g.get_state(), state)  # rs not listed: nothing drawn
    out = manifold_loss(fs, ft, terms=("cp", "rs"), k=0, generator=g)
    assert out["rs"].item() == 0.0 and torch.equal(g.get_state(), state)
    torch.testing.assert_close(out["total"], sum(cp_loop(s, t, "paper") for s, t in zip(fs, ft)))
    out = manifold_loss(fs, ft, terms=("ci",), weights={"ci": 3.0})
    torch.testing.assert_close(out["total"], 3.0 * sum(ci_loop(s, t, "paper") for s, t in zip(fs, ft)))


@pytest.mark.parametrize("layer_reduce", ["sum", "mean"])
def test_manifold_loss_exact_term(layer_reduce):
    fs, ft = pairs()
    out = manifold_loss(fs, ft, terms=("cp",), exact_weight=0.5, layer_reduce=layer_reduce)
    exact = [manifold_naive(s, t) for s, t in zip(fs, ft)]
    # Eq. 8 by loops: every relation of the flattened batch, averaged over the (np)^2 map.
    by_loop = [gap(list(s.flatten(0, 1)), list(t.flatten(0, 1))) / (N * P) ** 2 for s, t in zip(fs, ft)]
    torch.testing.assert_close(torch.stack(exact), torch.stack(by_loop))
    scale = 1 if layer_reduce == "sum" else 2
    torch.testing.assert_close(out["exact"], 0.5 * sum(by_loop) / scale)
    torch.testing.assert_close(out["total"], out["cp"] + out["exact"])
    assert "exact" not in manifold_loss(fs, ft, terms=("cp",))
    only_exact = manifold_loss(fs, ft, terms=(), exact_weight=2.0)
    assert set(only_exact) == {"exact", "total"}
    torch.testing.assert_close(only_exact["total"], 2.0 * sum(by_loop))


def test_manifold_loss_errors():
    fs, ft = pairs()
    with pytest.raises(ValueError, match="unknown"):
        manifold_loss(fs, ft, terms=("ci", "xx"))
    with pytest.raises(ValueError, match="layer_reduce"):
        manifold_loss(fs, ft, layer_reduce="max")
    with pytest.raises(ValueError):
        manifold_loss(fs, ft[:1])


# --- logit and feature losses ---------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_kd_soft_is_tau2_kl(tau):
    s, t = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    expected = 0.0
    for i in range(4):
        zs, zt = s[i] / tau, t[i] / tau
        log_ps = zs - torch.log(torch.exp(zs).sum())
        log_pt = zt - torch.log(torch.exp(zt).sum())
        expected += (torch.exp(log_pt) * (log_pt - log_ps)).sum()
    torch.testing.assert_close(kd_loss(s, t, kind="soft", tau=tau), expected / 4 * tau**2)


def test_kd_hard_is_ce_on_teacher_argmax_and_none_raises():
    s, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    expected = -sum(s[i, int(t[i].argmax())] - torch.log(torch.exp(s[i]).sum()) for i in range(5)) / 5
    torch.testing.assert_close(kd_loss(s, t, kind="hard"), expected)
    with pytest.raises(ValueError):
        kd_loss(s, t, kind="none")


def test_classification_loss_hard_with_smoothing():
    logits, y, eps, c = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 4, 2, 2, 1, 3]), 0.1, 5
    expected = 0.0
    for i in range(6):
        log_p = logits[i] - torch.log(torch.exp(logits[i]).sum())
        q = torch.full((c,), eps / c, dtype=torch.float64)
        q[y[i]] += 1 - eps
        expected += -(q * log_p).sum()
    torch.testing.assert_close(classification_loss(logits, y, smoothing=eps), expected / 6)
    torch.testing.assert_close(classification_loss(logits, y), F.nll_loss(F.log_softmax(logits, 1), y))


def test_classification_loss_soft_targets():
    logits = torch.randn(4, 5, dtype=torch.float64)
    lam, a, b = 0.7, torch.tensor([0, 1, 2, 3]), torch.tensor([4, 4, 0, 3])
    target = lam * F.one_hot(a, 5).double() + (1 - lam) * F.one_hot(b, 5).double()  # what Mixup produces
    expected = 0.0
    for i in range(4):
        log_p = logits[i] - torch.log(torch.exp(logits[i]).sum())
        expected += -(lam * log_p[a[i]] + (1 - lam) * log_p[b[i]])
    torch.testing.assert_close(classification_loss(logits, target), expected / 4)
    with pytest.raises(ValueError):
        classification_loss(logits, target[:, :4])


def test_embedding_transfer():
    fs, ft = feats(c=CT, seed=1), feats(c=CT, seed=2)
    torch.testing.assert_close(embedding_transfer(fs, ft), ((fs - ft) ** 2).sum().float() / fs.numel())
    proj = nn.Linear(CS, CT)
    small = feats(c=CS, seed=3).float()
    loss = embedding_transfer(small, ft.float(), proj)
    torch.testing.assert_close(loss, ((proj(small) - ft.float()) ** 2).mean())
    loss.backward()
    assert proj.weight.grad is not None
    with pytest.raises(ValueError, match="4.*6"):
        embedding_transfer(small, ft.float())
    assert math.isfinite(embedding_transfer(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)).item())


# --- the batched relation maps (all block pairs at once, one-GEMM backward) -----------------------------


def plain_terms(fs, ft, idx, reduction):
    """Eq. 10-12 one pair at a time, as plain tensor expressions that autograd differentiates itself."""

    def gap(x, y):
        d = (x @ x.transpose(-1, -2) - y @ y.transpose(-1, -2)).pow(2)
        return d.sum() if reduction == "paper" else d.mean()

    n, p = fs.shape[:2]
    us, ut = F.normalize(fs, dim=-1), F.normalize(ft, dim=-1)
    ci = gap(us.transpose(0, 1), ut.transpose(0, 1)) / (p if reduction == "paper" else 1)
    cp = gap(us, ut) / (n if reduction == "paper" else 1)
    rs = gap(us.flatten(0, 1)[idx], ut.flatten(0, 1)[idx])
    return {"ci": ci, "cp": cp, "rs": rs}


@pytest.mark.parametrize("reduction", ["paper", "released"])
def test_batched_pairs_match_plain_autograd_values_and_gradients(reduction):
    """manifold_loss stacks the pairs and uses a hand-written backward (4 D x): values and gradients of
    student AND teacher features equal autograd's of the per-pair expressions, pairs of two shapes."""
    shapes = [(CS, CT), (CS, CT), (2, CT), (CS, CT)]  # three pairs share a shape, one does not
    fs = [feats(c=cs, seed=30 + i).requires_grad_() for i, (cs, _) in enumerate(shapes)]
    ft = [feats(c=ct, seed=40 + i).requires_grad_() for i, (_, ct) in enumerate(shapes)]
    w = {"ci": 1.0, "cp": 0.5, "rs": 0.2}
    out = manifold_loss(fs, ft, weights=w, k=K, reduction=reduction, generator=torch.Generator().manual_seed(4))
    (out["total"] * 3.0).backward()
    got = [f.grad.clone() for f in fs + ft]
    for f in fs + ft:
        f.grad = None
    idx = draws(4, N * P, K, times=len(shapes))
    per_pair = [plain_terms(s, t, i, reduction) for s, t, i in zip(fs, ft, idx)]
    ref = {name: sum(w[name] * pp[name] for pp in per_pair) for name in w}
    for name in w:
        torch.testing.assert_close(out[name], ref[name])
    (sum(ref.values()) * 3.0).backward()
    for g, f in zip(got, fs + ft):
        torch.testing.assert_close(g, f.grad)


def test_map_gap_gradcheck():
    from trainer.losses import _MapGap

    x = feats(n=2, p=4, c=3, seed=50).requires_grad_()
    y = feats(n=2, p=4, c=5, seed=51).requires_grad_()
    assert torch.autograd.gradcheck(_MapGap.apply, (x, y))
