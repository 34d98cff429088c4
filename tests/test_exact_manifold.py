"""manifold_exact (Eq. 8 through Gram matrices) against the full (np x np) relation map in float64."""

import pytest
import torch

import trainer.losses as losses
from trainer.losses import _manifold_gram, manifold_exact, manifold_naive

N, P, CS, CT = 4, 9, 8, 12


def randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference(f_s, f_t):
    """Eq. 8 / m^2 on the full map, float64, from the very same (upcast) input values."""
    return manifold_naive(f_s.double(), f_t.double()).item()


def rel(x, ref):
    return abs(float(x.detach() if torch.is_tensor(x) else x) - ref) / abs(ref)


def near_identical(c, seed, shared_mean):
    """Teacher = student + 1e-4 noise. shared_mean adds one direction common to all patches, as in trained
    transformers (pairwise cosines ~0.9): the maps' shared part then dwarfs their difference."""
    f_s = randn(N, P, c, seed=seed, dtype=torch.float64)
    if shared_mean:
        f_s = f_s + 3.0 * randn(c, seed=seed + 1, dtype=torch.float64)
    f_t = f_s + 1e-4 * randn(N, P, c, seed=seed + 2, dtype=torch.float64)
    return f_s.float(), f_t.float()


def test_matches_full_map_unequal_widths():
    f_s, f_t = randn(N, P, CS, seed=0), randn(N, P, CT, seed=1)
    got = manifold_exact(f_s, f_t)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert rel(got, reference(f_s, f_t)) <= 1e-5


@pytest.mark.parametrize("shared_mean", [False, True])
def test_near_identical_features_stay_accurate(shared_mean):
    f_s, f_t = near_identical(CS, seed=3, shared_mean=shared_mean)
    ref = reference(f_s, f_t)
    err = rel(manifold_exact(f_s, f_t), ref)
    # The plain float32 Gram identity, ||A^T A||^2 - 2||A^T B||^2 + ||B^T B||^2, no centering: its three
    # terms are ~1e8 (shared mean) or ~1e3 times the result and cancel. Centring alone is not enough
    # either: ||G||^2's three terms still cancel down to the gap; the fitted W removes that. Measured here
    # (torch 2.14, x86): relative error 2e0 / 1e2 (plain), 1e1 / 2e0 (centred, no fit) vs 2e-8 / 1e-7.
    plain = rel(_manifold_gram(f_s, f_t, center=False, fit=False, dtype=torch.float32)[0], ref)
    centred = rel(_manifold_gram(f_s, f_t, fit=False, dtype=torch.float32)[0], ref)
    naive32 = rel(manifold_naive(f_s, f_t), ref)  # the full map in float32: 2e-5 / 4e-4
    print(
        f"\nshared_mean={shared_mean}: exact {err:.1e}, plain fp32 Gram {plain:.1e}, centred without fit "
        f"{centred:.1e}, naive fp32 map {naive32:.1e}"
    )
    assert err <= 1e-5
    assert plain >= 10 * err
    assert centred >= 10 * err


def test_centering_is_needed_even_in_float64():
    """Patches nearly parallel (shared direction 30x the rest, cosines ~0.9997): float64 products alone
    are not enough, the uncentered Gram terms cancel ~1e15-fold (float64 Grams, no provisional centring,
    no fit; the exact mean is subtracted from the Grams afterwards). Measured: 7e-6 vs 2e-8."""
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(N, P, CS, generator=g, dtype=torch.float64) + 30 * torch.randn(
        CS, generator=g, dtype=torch.float64
    )
    f_t = (f_s + 1e-4 * torch.randn(N, P, CS, generator=g, dtype=torch.float64)).float()
    f_s = f_s.float()
    ref = reference(f_s, f_t)
    err = rel(manifold_exact(f_s, f_t), ref)
    uncentered = rel(_manifold_gram(f_s, f_t, center=False, fit=False, dtype=torch.float64)[0], ref)
    assert err <= 1e-5
    assert uncentered >= 10 * err


def test_chunked_streaming_and_noncontiguous_input(monkeypatch):
    """m = 36 rows in chunks of 7 (last one short), Gram products over 10 rows at a time, features
    sliced out of a token tensor."""
    monkeypatch.setattr(losses, "_CHUNK", 7)
    monkeypatch.setattr(losses, "_BLOCK_ROWS", 10)
    tokens = randn(N, P + 2, CS, seed=4)
    f_s = tokens[:, 2:].requires_grad_()  # not contiguous
    f_t = randn(N, P, CT, seed=5)
    ref_s = f_s.detach().double().requires_grad_()
    manifold_naive(ref_s, f_t.double()).backward()
    got = manifold_exact(f_s, f_t)
    got.backward()
    assert rel(got, reference(f_s.detach(), f_t)) <= 1e-5
    assert not f_s.is_contiguous()
    torch.testing.assert_close(f_s.grad.double(), ref_s.grad, rtol=1e-4, atol=1e-5 * ref_s.grad.abs().max().item())


@pytest.mark.parametrize("case", ["random", "near_identical"])
def test_gradients_match_autograd_of_full_map(case):
    if case == "random":
        f_s, f_t = randn(N, P, CS, seed=6), randn(N, P, CT, seed=7)
    else:
        f_s, f_t = near_identical(CS, seed=8, shared_mean=True)
    f_s, f_t = f_s.requires_grad_(), f_t.requires_grad_()
    ref_s, ref_t = f_s.detach().double().requires_grad_(), f_t.detach().double().requires_grad_()
    manifold_naive(ref_s, ref_t).backward()
    (3.0 * manifold_exact(f_s, f_t)).backward()  # a non-unit upstream gradient too
    for got, ref in ((f_s.grad, ref_s.grad), (f_t.grad, ref_t.grad)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), 3.0 * ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_gradcheck_float64():
    f_s = randn(2, 3, 4, seed=9, dtype=torch.float64).requires_grad_()
    f_t = randn(2, 3, 5, seed=10, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(manifold_exact, (f_s, f_t))


def test_teacher_without_grad_gets_none():
    f_s, f_t = randn(N, P, CS, seed=11).requires_grad_(), randn(N, P, CT, seed=12)
    manifold_exact(f_s, f_t).backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0 and f_t.grad is None


def test_autocast_and_half_inputs_give_float32():
    f_s, f_t = randn(N, P, CS, seed=13).requires_grad_(), randn(N, P, CT, seed=14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = manifold_exact(f_s, f_t)
    assert got.dtype == torch.float32
    assert rel(got, reference(f_s.detach(), f_t)) <= 1e-5
    got.backward()
    assert f_s.grad.dtype == torch.float32
    b_s, b_t = f_s.detach().bfloat16(), f_t.bfloat16()
    got = manifold_exact(b_s, b_t)
    assert got.dtype == torch.float32 and rel(got, reference(b_s, b_t)) <= 1e-5


def test_zero_and_tiny_patches_follow_f_normalize():
    """Rows with norm below F.normalize's eps (1e-12) are divided by eps, not projected: same here."""
    f_s, f_t = randn(N, P, CS, seed=15), randn(N, P, CT, seed=16)
    f_s[0, 0], f_s[1, 3] = 0.0, 1e-13 * f_s[1, 3]
    f_s.requires_grad_()
    ref_s = f_s.detach().double().requires_grad_()
    manifold_naive(ref_s, f_t.double()).backward()
    got = manifold_exact(f_s, f_t)
    got.backward()
    assert rel(got, reference(f_s.detach(), f_t)) <= 1e-5
    assert torch.isfinite(f_s.grad).all()
    torch.testing.assert_close(f_s.grad.double(), ref_s.grad, rtol=1e-4, atol=1e-5 * ref_s.grad.abs().max().item())


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(4, 9, 8\).*\(4, 8, 12\)"):
        manifold_exact(randn(N, P, CS, seed=0), randn(N, P - 1, CT, seed=1))


@pytest.mark.parametrize("naive", [True, False])
def test_benchmark_quick_smoke(capsys, naive):
    from benchmarks.bench_loss import main

    threads = torch.get_num_threads()
    try:  # the benchmark sets its thread count: later tests in this process must not run on it
        rows = main(["--quick", "--repeats", "1"] + ([] if naive else ["--no-naive"]))
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "manifold_exact" in out and "PASS" in out
    metrics = {metric for _, metric, *_ in rows}
    assert ("speed-up naive / exact" in metrics) == naive and "time exact / terms" in metrics
    assert "time exact / terms with autograd's backward" in metrics


def test_symmetric_grams_in_uneven_column_blocks(monkeypatch):
    """The joint Gram of [Ab | E] is built from its upper column blocks only: recursive halves down to
    diagonal blocks of at most 3 columns (8 + 12 = 20 columns, uneven halves) tile the upper triangle
    exactly once and give the value and gradients of the full map."""
    monkeypatch.setattr(losses, "_GRAM_LEAF", 3)
    f_s, f_t = near_identical(CS, seed=17, shared_mean=True)
    f_t = torch.cat([f_t, randn(N, P, CT - CS, seed=18)], dim=-1)  # widths 8 and 12
    f_s, f_t = f_s.requires_grad_(), f_t.requires_grad_()
    ref_s, ref_t = f_s.detach().double().requires_grad_(), f_t.detach().double().requires_grad_()
    manifold_naive(ref_s, ref_t).backward()
    got = manifold_exact(f_s, f_t)
    got.backward()
    cover = torch.zeros(CS + CT, CS + CT, dtype=torch.int64)
    blocks = list(losses._sym_blocks(0, CS + CT))
    for si, sj in blocks:
        cover[si, sj] += 1
        assert si.stop - si.start <= 3 or si.stop <= sj.start  # whole blocks are diagonal leaves
    assert torch.equal(cover.triu(), torch.ones_like(cover).triu())  # the upper triangle, each entry once
    assert len({(si.stop - si.start) for si, sj in blocks if si == sj}) == 2  # uneven leaves: 2 and 3 columns
    assert rel(got, reference(f_s.detach(), f_t.detach())) <= 1e-5
    for g, r in ((f_s.grad, ref_s.grad), (f_t.grad, ref_t.grad)):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5 * r.abs().max().item())


def rotated_teacher(n, p, c_s, c_t, seed, shared=3.0):
    """A teacher whose maps nearly equal the student's but whose features are a rotation of them into
    another width: [student + 1e-4 noise, 0] Q (c_t >= c_s), or the student [teacher, 0] Q when c_s > c_t.
    W is then a dense rotation, not the identity."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = min(c_s, c_t), max(c_s, c_t)
    base = torch.randn(n, p, lo, generator=g, dtype=torch.float64) + shared * torch.randn(
        lo, generator=g, dtype=torch.float64
    )
    near = base + 1e-4 * torch.randn(n, p, lo, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(hi, hi, generator=g, dtype=torch.float64))
    wide = torch.cat([near, near.new_zeros(n, p, hi - lo)], dim=-1) @ q
    f_s, f_t = (base, wide) if c_t >= c_s else (wide, base)
    return f_s.float(), f_t.float()


@pytest.mark.parametrize(("c_s", "c_t"), [(CS, CT), (CT, CS)])
def test_rotated_teacher_of_either_width(c_s, c_t):
    """Maps that nearly coincide through a rotation between widths (teacher wider, or student wider):
    value and both gradients against the float64 map."""
    f_s, f_t = rotated_teacher(N, P, c_s, c_t, seed=19)
    f_s, f_t = f_s.requires_grad_(), f_t.requires_grad_()
    ref_s, ref_t = f_s.detach().double().requires_grad_(), f_t.detach().double().requires_grad_()
    ref = manifold_naive(ref_s, ref_t)
    ref.backward()
    got = manifold_exact(f_s, f_t)
    got.backward()
    assert ref.item() < 1e-6  # the maps nearly coincide: the Gram terms cancel ~1e6-fold
    assert rel(got, ref.item()) <= 1e-5
    for g, r in ((f_s.grad, ref_s.grad), (f_t.grad, ref_t.grad)):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5 * r.abs().max().item())


@pytest.mark.parametrize("case", ["fewer_rows_than_width", "identical_rows"])
def test_degenerate_samples_for_the_fit(case):
    """W is fitted on a sample of rows: with fewer rows than the student's width, or rows all alike (no
    variance left after centring), the ridge keeps it finite and the loss stays exact."""
    if case == "fewer_rows_than_width":
        f_s, f_t = near_identical(CS, seed=20, shared_mean=True)
        f_s, f_t = f_s[:1, :4], torch.cat([f_t[:1, :4], randn(1, 4, CT - CS, seed=21)], dim=-1)
    else:
        f_s, f_t = randn(1, 1, CS, seed=22).expand(N, P, CS).clone(), randn(N, P, CT, seed=23)
    f_s = f_s.requires_grad_()
    ref_s = f_s.detach().double().requires_grad_()
    ref = manifold_naive(ref_s, f_t.double())
    ref.backward()
    got = manifold_exact(f_s, f_t)
    got.backward()
    assert rel(got, ref.item()) <= 1e-5
    assert torch.isfinite(f_s.grad).all()
    # identical rows: the true gradient is 0 (D A has every row along the common row, which F.normalize projects out)
    scale = ref_s.grad.abs().max().item() if case == "fewer_rows_than_width" else ref.item()
    torch.testing.assert_close(f_s.grad.double(), ref_s.grad, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["random", "near_identical", "rotated"])
def test_paper_widths_against_float64(case):
    """c_S 192 / c_T 384 (the paper's DeiT-Tiny / CaiT-S24 widths, 16 images of 196 patches): value
    within 1e-5 and gradients within 1e-4 of autograd through the float64 map."""
    n, p, c_s, c_t = 16, 196, 192, 384
    if case == "random":
        f_s, f_t = randn(n, p, c_s, seed=24), randn(n, p, c_t, seed=25)
    elif case == "near_identical":
        f_s, f_t = rotated_teacher(n, p, c_s, c_s, seed=26)
    else:
        f_s, f_t = rotated_teacher(n, p, c_s, c_t, seed=27)
    f_s = f_s.requires_grad_()
    ref_s = f_s.detach().double().requires_grad_()
    ref = manifold_naive(ref_s, f_t.double())
    ref.backward()
    got = manifold_exact(f_s, f_t)
    got.backward()
    assert rel(got, ref.item()) <= 1e-5
    torch.testing.assert_close(f_s.grad.double(), ref_s.grad, rtol=1e-4, atol=1e-5 * ref_s.grad.abs().max().item())
