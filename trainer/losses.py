"""Losses of manifold distillation (Jia et al., Sec. 3) and of the DeiT baseline it builds on.

Plain functions of tensors. Patch features are (n, p, c) tensors with the prefix tokens (class,
distillation) already dropped by the caller: they carry no image patch, and the teacher and student
need not have the same number of them. Student and teacher widths may differ (c_s != c_t): every
manifold term compares cosine relation maps M(X) = X' X'^T, whose size depends on the number of
patches only, never on the width.

Relation maps are built in float32 (float64 for float64 inputs) with autocast off: cosine maps in
bf16 carry ~1e-2 errors, the size of the differences being distilled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

MANIFOLD_TERMS = ("ci", "cp", "rs")
_REDUCTIONS = ("paper", "released")
# The spec names them by what they do (manifold.reduction: sum | mean); these tokens also enter content hashes.
SPEC_REDUCTION = {"sum": "paper", "mean": "released"}


def _no_autocast(t: Tensor):
    try:
        return torch.autocast(device_type=t.device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()


def _unit(f: Tensor) -> Tensor:
    """L2-normalise every patch embedding, in at least float32."""
    return F.normalize(f.to(torch.promote_types(f.dtype, torch.float32)), dim=-1)


def _check_pair(f_s: Tensor, f_t: Tensor) -> None:
    if f_s.dim() != 3 or f_t.dim() != 3 or f_s.shape[:2] != f_t.shape[:2]:
        raise ValueError(
            f"student features {tuple(f_s.shape)} and teacher features {tuple(f_t.shape)} must both be "
            "(n, p, c) with the same batch size n and number of patches p"
        )


class _MapGap(torch.autograd.Function):
    """||x x^T - y y^T||_F^2 of each map of a batch: x (B, r, c_x), y (B, r, c_y) -> (B,).

    Autograd of the plain expression runs two GEMMs per map and side (one per operand of x x^T) plus
    the elementwise pow/sub backward; with D = x x^T - y y^T symmetric the gradient is one GEMM,
    d/dx = 4 D x (and -4 D y). D is built in place (one map per batch entry, the memory autograd saved).
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:
        d = torch.bmm(x, x.transpose(1, 2)).baddbmm_(y, y.transpose(1, 2), alpha=-1)
        ctx.save_for_backward(x, y, d)
        flat = d.view(d.shape[0], 1, -1)
        return torch.bmm(flat, flat.transpose(1, 2)).view(-1)  # sum of squares, no temporary

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, y, d = ctx.saved_tensors
        g = (4 * grad)[:, None, None]
        with _no_autocast(x):
            gx = torch.bmm(d, x).mul_(g) if ctx.needs_input_grad[0] else None
            gy = torch.bmm(d, y).mul_(-g) if ctx.needs_input_grad[1] else None
        return gx, gy


def _map_gaps(x_s: Tensor, x_t: Tensor, reduction: str) -> Tensor:
    """Squared gaps between the relation maps x x^T of (L, B, r, c) stacks: (L,) sums over each stack's
    B maps ("paper") or means over their entries ("released")."""
    L, B, r = x_s.shape[:3]
    gap = _MapGap.apply(x_s.reshape(L * B, r, -1), x_t.reshape(L * B, r, -1)).view(L, B).sum(1)
    return gap if reduction == "paper" else gap / (B * r * r)


def _draw(n_p: int, k: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """The k rows of L_rs: k of the n*p patches, drawn from `generator` (None: global RNG)."""
    if not 0 < k <= n_p:
        raise ValueError(f"k={k} patches cannot be drawn from the n*p = {n_p} patches of the batch")
    gen_device = generator.device if generator is not None else device
    return torch.randperm(n_p, generator=generator, device=gen_device)[:k].to(device)


def _stack_terms(f_s: Tensor, f_t: Tensor, names, idx: Tensor | None, reduction: str) -> dict[str, Tensor]:
    """The terms of L block pairs at once, f_s (L, n, p, c_s), f_t (L, n, p, c_t): (L,) per term.

    One batched GEMM per term and side for all the blocks (Eq. 10: the L*p n x n maps; Eq. 11: the L*n
    p x p maps; Eq. 12: L k x k maps, idx (L, k) the rows drawn for each block).
    """
    n, p = f_s.shape[1:3]
    with _no_autocast(f_s):
        u_s, u_t = _unit(f_s), _unit(f_t)
        out = {}
        if "ci" in names:  # Eq. 10, cross-image: one n x n map per patch index
            gap = _map_gaps(u_s.transpose(1, 2), u_t.transpose(1, 2), reduction)
            out["ci"] = gap / p if reduction == "paper" else gap
        if "cp" in names:  # Eq. 11, cross-patch: one p x p map per image
            gap = _map_gaps(u_s, u_t, reduction)
            out["cp"] = gap / n if reduction == "paper" else gap
        if "rs" in names:  # Eq. 12, random sample: k patches of the whole batch, same rows for both
            if idx is None:
                out["rs"] = u_s.new_zeros(u_s.shape[0])
            else:

                def rows(u):
                    flat = u.flatten(1, 2)
                    return torch.gather(flat, 1, idx[:, :, None].expand(-1, -1, flat.shape[-1]))[:, None]

                out["rs"] = _map_gaps(rows(u_s), rows(u_t), reduction)
    return out


def _pair_terms(
    feats_s: Sequence[Tensor],
    feats_t: Sequence[Tensor],
    names,
    k: int,
    reduction: str,
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    """Each term for each block pair, (L,) in pair order: pairs of equal shapes go through `_stack_terms`
    together. L_rs's rows are drawn pair after pair, as a loop over the pairs would draw them."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    for f_s, f_t in zip(feats_s, feats_t):
        _check_pair(f_s, f_t)
    draws = [None] * len(feats_s)
    if "rs" in names and k != 0:
        draws = [_draw(f_s.shape[0] * f_s.shape[1], k, generator, f_s.device) for f_s in feats_s]
    groups: dict[tuple, list[int]] = {}
    for i, (f_s, f_t) in enumerate(zip(feats_s, feats_t)):
        key = (f_s.shape, f_t.shape, f_s.dtype, f_t.dtype, f_s.device, f_t.device)
        groups.setdefault(key, []).append(i)
    parts: dict[str, list[Tensor]] = {name: [] for name in names}
    for members in groups.values():
        idx = None if draws[0] is None else torch.stack([draws[i] for i in members])
        stacked_s, stacked_t = _stack(feats_s, members), _stack(feats_t, members)
        for name, vec in _stack_terms(stacked_s, stacked_t, names, idx, reduction).items():
            parts[name].append(vec)
    order = [i for members in groups.values() for i in members]
    out = {name: vecs[0] if len(vecs) == 1 else torch.cat(vecs) for name, vecs in parts.items()}
    if order != sorted(order):  # several groups: back to pair order
        where = torch.tensor(sorted(range(len(order)), key=order.__getitem__))
        out = {name: vec[where.to(vec.device)] for name, vec in out.items()}
    return out


def _stack(feats: Sequence[Tensor], members: list[int]) -> Tensor:
    """The members' features as one (m, n, p, c) tensor; a view, not a copy, for a single member."""
    return feats[members[0]][None] if len(members) == 1 else torch.stack([feats[i] for i in members])


def manifold_terms(
    f_s: Tensor, f_t: Tensor, k: int, *, reduction: str = "paper", generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """The three sampled manifold terms (Eq. 10-12) between student and teacher patch features.

    f_s: (n, p, c_s), f_t: (n, p, c_t). reduction="paper" sums the squared map gaps and divides ci by p
    and cp by n as written in the paper; "released" averages over all map elements, as the authors'
    code does (the two differ by constant factors per term, which changes the effective weights).
    The k rs rows are the same for student and teacher, drawn with `generator` (None: global RNG).
    """
    return {name: vec[0] for name, vec in _pair_terms([f_s], [f_t], MANIFOLD_TERMS, k, reduction, generator).items()}


# --- exact patch-level manifold loss (Eq. 8) without the (np x np) map -------------------------------
#
# With the rows of A (m x c_s) and B (m x c_t) the unit patch embeddings, ||AA^T - BB^T||_F^2 needs
# c x c Gram matrices only, not the m x m map. Two rewrites let those Grams be float32 GEMMs:
#  1. Centering. With mu, nu the mean rows, A = Ab + 1 mu^T and B = Bb + 1 nu^T (1^T Ab = 0, 1^T Bb = 0):
#         AA^T - BB^T = G + w 1^T + 1 w^T + d 1 1^T,  G = Ab Ab^T - Bb Bb^T,  w = Ab mu - Bb nu,
#     d = mu.mu - nu.nu, and since G 1 = 0 and 1^T w = 0:  ||AA^T - BB^T||^2 = ||G||^2 + 2m ||w||^2 + m^2 d^2.
#     This removes the direction all patches share (trained ViTs: pairwise cosines ~0.9).
#  2. The student's share of the teacher. ||G||^2 = ||Ab^T Ab||^2 - 2||Ab^T Bb||^2 + ||Bb^T Bb||^2 cancels
#     down to the gap when the two maps nearly coincide, below what float32 Grams resolve. For any
#     W (c_s x c_t), with E = Bb - Ab W, C = [Ab | E] and M = [[I - W W^T, -W], [-W^T, -I]]:
#         G = C M C^T,   ||G||^2 = tr((M H)^2),   H = C^T C.
#     With W the least-squares fit of Bb on Ab (on a sample of rows), E, I - W W^T and every block of
#     M H are of the size of the gap itself: nothing cancels, and float32 products of C lose nothing
#     that matters. Only E, a difference of nearly equal rows, is computed in float64 (one m x c_s x
#     c_t GEMM), and only where it is one: where ||Ab W|| <= _E_CANCEL ||E|| on the sample (a teacher
#     far from a linear map of the student), forming E loses < 2 bits and runs in float32.
#     The backward is one float32 GEMM with C as well: dL/dA ~ D A = G Ab + ..., G Ab = C (M H)[:, :c_s].
# One pass over row blocks: the rows are centred on the mean of the sample, and H and w are corrected
# exactly to the true mean afterwards (float64 column sums). C (float32, m x (c_s + c_t)) is kept for
# the backward: memory is one more copy of the features; time O(m c^2). Accuracy against float64: ~1e-7
# relative, also for nearly equal, rotated or nearly parallel features (tests/test_exact_manifold.py).

_CHUNK = 512  # rows per block of the elementwise passes (a float64 block of 512 rows stays in cache)
_BLOCK_ROWS = 4096  # rows per kept block of C' and per float32 Gram product (summed in float64)
_GRAM_LEAF = 96  # columns of the diagonal blocks of a symmetric Gram, computed whole
_RIDGE = 1e-8  # of the mean variance: keeps W finite where the sample does not span the student's rows
_E_CANCEL = 3.0  # ||Ab W|| / ||E|| on the sample up to which E is formed in float32 (see below)
_EPS = 1e-12  # F.normalize's


def _row_blocks(m: int, rows: int):
    for i in range(0, m, rows):
        yield slice(i, min(i + rows, m))


def _sym_blocks(lo: int, hi: int):
    """(rows, cols) column spans whose products x[:, rows]^T x[:, cols] fill the upper block triangle of
    x^T x on [lo, hi): halve recursively, one GEMM for each off-diagonal quarter, whole diagonal blocks of
    at most _GRAM_LEAF columns. Most work lands in a few large GEMMs (near peak), ~(1/2 + leaf/2c) of a
    full product's."""
    if hi - lo <= _GRAM_LEAF:
        yield slice(lo, hi), slice(lo, hi)
        return
    mid = (lo + hi) // 2
    yield from _sym_blocks(lo, mid)
    yield from _sym_blocks(mid, hi)
    yield slice(lo, mid), slice(mid, hi)


def _gram(blocks: Sequence[Tensor]) -> Tensor:
    """X^T X in float64 of the row blocks X_i stacked, from products in their dtype, summed in float64."""
    c = blocks[0].shape[1]
    acc = blocks[0].new_zeros(c, c, dtype=torch.float64)
    part = acc if blocks[0].dtype == acc.dtype else blocks[0].new_empty(c, c)
    spans = list(_sym_blocks(0, c))
    for x in blocks:
        if part is not acc:
            part.zero_()
        for si, sj in spans:
            part[si, sj].addmm_(x[:, si].T, x[:, sj])
        if part is not acc:
            acc += part
    return acc.triu() + acc.triu(1).T


def _rnorm(x: Tensor) -> Tensor:
    """1 / max(||row||, eps) of each row in float64, (rows, 1): F.normalize(x, dim=1) is x * _rnorm(x)."""
    return torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float64).clamp_min_(_EPS).reciprocal_()


def _fit(x_s: Tensor, x_t: Tensor, center: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """From ~2 c_s + 64 rows spread over the batch: the provisional means s, t of the unit rows, the
    least-squares W of (unit rows - t) on (unit rows - s), float64, and how much forming E = Bb - Ab W
    cancels there, ||Ab W|| / ||E||. Any W gives the exact loss; a good one keeps E small (as small as the
    gap between the maps: float32 products of the sample are not enough)."""
    m, c_s = x_s.shape
    rows = slice(0, m, max(1, m // (2 * c_s + 64)))
    a, b = x_s[rows] * _rnorm(x_s[rows]), x_t[rows] * _rnorm(x_t[rows])
    s, t = (a.mean(0), b.mean(0)) if center else (a.new_zeros(c_s), b.new_zeros(b.shape[1]))
    a, b = a - s, b - t
    saa = a.T @ a
    saa.diagonal().add_(_RIDGE * saa.diagonal().mean() + 1e-300)
    W = torch.linalg.solve(saa, a.T @ b).to(x_s.dtype).double()  # representable in the GEMMs' dtype
    fitted = a @ W
    return s, t, W, fitted.norm() / (b - fitted).norm().clamp_min(1e-300)


class _Parts(NamedTuple):
    """What the backward needs: the reciprocal row norms, the true means, the column means g = C'^T 1 / m
    of C' (rows centred on the sample mean), M H and H (of the exactly centred C), W, d, and C' itself as
    [Ab' | E' | 1 | w] in row blocks."""

    r_s: Tensor
    r_t: Tensor
    mu: Tensor
    nu: Tensor
    g: Tensor
    mh: Tensor
    h: Tensor
    fit: Tensor
    d: Tensor
    cols: tuple[Tensor, ...]


def _manifold_gram(
    f_s: Tensor, f_t: Tensor, *, center: bool = True, fit: bool = True, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, _Parts]:
    """||M(A) - M(B)||^2 / m^2 (no autograd) with Gram products in `dtype` (see the derivation above).

    center=False (no provisional mean; rows rounded to `dtype` with their shared direction) and fit=False
    (W = 0: the plain Gram identity) are the less accurate variants, kept to measure why they are not used.
    """
    f64, m = torch.float64, f_s.shape[0] * f_s.shape[1]
    c_s, c_t = f_s.shape[-1], f_t.shape[-1]
    c = c_s + c_t
    x_s, x_t = f_s.reshape(m, c_s), f_t.reshape(m, c_t)
    s, t, W, cancel = _fit(x_s, x_t, center)
    if not fit:
        W.zero_()
    e_low = cancel <= _E_CANCEL  # forming E cancels little: float32 products are as good as the Gram's
    r_s, r_t = x_s.new_empty(m, 1, dtype=f64), x_t.new_empty(m, 1, dtype=f64)
    q, colsum, shift = x_s.new_empty(m, dtype=f64), x_s.new_zeros(c, dtype=f64), torch.cat([s, -t])
    buf = x_s.new_empty(min(_CHUNK, m), c, dtype=f64)
    cols = []  # C' = [Ab' | E' | 1 | w] in blocks of _BLOCK_ROWS rows (heap-sized: reused, not page-faulted)
    width = -(-(c + 2) // 16) * 16  # rows of 64-byte multiples: ~10% faster Gram, ~30% faster E in float32
    for block in _row_blocks(m, _BLOCK_ROWS):
        part = x_s.new_empty(block.stop - block.start, width, dtype=dtype)[:, : c + 2]
        part[:, c] = 1
        for local in _row_blocks(len(part), _CHUNK):
            rows = slice(block.start + local.start, block.start + local.stop)
            b = buf[: local.stop - local.start]
            for x, r, half, mean in ((x_s, r_s, b[:, :c_s], s), (x_t, r_t, b[:, c_s:], t)):
                half.copy_(x[rows])  # the one float64 copy of the rows
                r[rows] = _rnorm(half)
                half.mul_(r[rows]).sub_(mean)  # unit rows minus the sample mean
            colsum += b.sum(0)
            torch.mv(b, shift, out=q[rows])  # w, up to the mean correction
            if fit and not e_low:
                b[:, c_s:].addmm_(b[:, :c_s], W, alpha=-1)  # E' = Bb' - Ab' W, in float64
            part[local, :c] = b
        if fit and e_low:
            part[:, c_s:c].addmm_(part[:, :c_s], W.to(dtype), alpha=-1)  # E' in the Gram's dtype
        cols.append(part)
    delta, eps = colsum[:c_s] / m, colsum[c_s:] / m  # the sample means' error
    mu, nu = s + delta, t + eps
    g = torch.cat([delta, eps - W.T @ delta])
    h = _gram([part[:, :c] for part in cols]).addr_(g, g, alpha=-m)  # of C = C' - 1 g^T, exactly centred
    y = torch.cat([delta - W @ eps, -eps]).to(dtype)  # w = q + C' y - (delta.mu - eps.nu): Ab mu - Bb nu expanded
    w2, kappa = q.new_zeros(()), delta @ mu - eps @ nu
    for block, part in zip(_row_blocks(m, _BLOCK_ROWS), cols):
        w = (part[:, :c] @ y).to(f64).add_(q[block]).sub_(kappa)
        part[:, c + 1] = w
        w2 += w @ w
    bottom = torch.addmm(h[c_s:], W.T, h[:c_s]).neg_()  # M H, M = [[I - W W^T, -W], [-W^T, -I]]
    mh = torch.cat([torch.addmm(h[:c_s], W, bottom), bottom])
    d = mu @ mu - nu @ nu
    total = (mh * mh.T).sum() + 2 * m * w2 + m * m * d * d
    return total / (m * m), _Parts(r_s, r_t, mu, nu, g, mh, h, W, d, tuple(cols))


@contextlib.contextmanager
def _exact_matmuls(t: Tensor):
    """Full float32 GEMMs whatever the global settings: no autocast, no TF32 / bf16 passes."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with _no_autocast(t):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


class _ExactManifold(torch.autograd.Function):
    """Forward through H; the backward is one GEMM with the kept C' and a projection per row."""

    @staticmethod
    def forward(ctx, f_s: Tensor, f_t: Tensor) -> Tensor:
        with _exact_matmuls(f_s):
            value, parts = _manifold_gram(f_s, f_t, dtype=torch.promote_types(f_s.dtype, torch.float32))
        ctx.save_for_backward(f_s, f_t, *parts[:-1], *parts.cols)
        return value.to(torch.promote_types(f_s.dtype, torch.float32))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        # dL/dA = 4/m^2 D A with D = AA^T - BB^T, and D A = G Ab + 1 (Ab^T w)^T + m (w + d 1) mu^T;
        # dL/dB = -4/m^2 D B alike. G Ab = C (M H)[:, :c_s], G Bb = C ((M H)[:, :c_s] W + (M H)[:, c_s:]),
        # Ab^T w = H[:c_s] z and Bb^T w = W^T Ab^T w + H[c_s:] z with w = C z. C = C' - 1 g^T: the 1 and
        # w columns of C' carry the rank-one parts. Then through a = x / ||x||: dx = (da - a (a . da)) / ||x||
        # (just da / eps below eps, as F.normalize).
        f_s, f_t, r_s, r_t, mu, nu, g, mh, h, W, d, *cols = ctx.saved_tensors
        m, c_s = f_s.shape[0] * f_s.shape[1], f_s.shape[-1]
        scale = 4 * grad_out.to(torch.float64) / (m * m)
        z = torch.cat([mu - W @ nu, -nu])
        ab_w = h[:c_s] @ z

        c = len(mh)
        gram_x = mh.new_zeros(c + 2, c + 2)  # of C' = [Ab' | E' | 1 | w] (C'^T w = H z since 1^T C = 0)
        gram_x[:c, :c] = torch.addr(h, g, g, alpha=m)
        gram_x[:c, c] = gram_x[c, :c] = m * g
        gram_x[:c, c + 1] = gram_x[c + 1, :c] = h @ z
        gram_x[c, c], gram_x[c + 1, c + 1] = m, z @ h @ z

        def kernel(k0, v, mean, sign, unit):
            # rows for [Ab' | E' | 1 | w], minus lam (the unit rows, as C' unit), which the projection below
            # removes anyway. lam is the least-squares radial part of D A: when the features have similar
            # norms most of D A is radial, and the float32 GEMM would otherwise round that, not the rest.
            k = torch.cat([k0, (v + m * d * mean - k0.T @ g)[None], m * mean[None]]) * (sign * scale)
            gu = gram_x @ unit
            norm = (unit * gu).sum()
            lam = (k * gu).sum() / norm if norm > 0 else norm.new_zeros(())
            return k.sub_(unit, alpha=lam.item()), lam.item()

        eye_s, eye_t = (torch.eye(n, dtype=mh.dtype, device=mh.device) for n in (c_s, c - c_s))
        s_t = torch.cat([mu - g[:c_s], nu - g[c_s:] - W.T @ g[:c_s]])  # the provisional shifts s, t
        sides = [None, None]  # (input, reciprocal norms, kernel, lam) per side that needs a gradient
        if ctx.needs_input_grad[0]:  # a = Ab' + s
            unit = torch.cat([eye_s, eye_s.new_zeros(c - c_s, c_s), s_t[:c_s][None], eye_s.new_zeros(1, c_s)])
            sides[0] = (f_s, r_s, *kernel(mh[:, :c_s], ab_w, mu, 1, unit))
        if ctx.needs_input_grad[1]:  # b = Ab' W + E' + t
            unit = torch.cat([W, eye_t, s_t[c_s:][None], eye_t.new_zeros(1, len(eye_t))])
            k0 = torch.addmm(mh[:, c_s:], mh[:, :c_s], W)
            sides[1] = (f_t, r_t, *kernel(k0, W.T @ ab_w + h[c_s:] @ z, nu, -1, unit))
        sides = [(f, r, k, lam, f.new_empty(m, f.shape[-1])) for f, r, k, lam in filter(None, sides)]
        with _exact_matmuls(cols[0]):
            kmat = torch.cat([k for _, _, k, _, _ in sides], 1).to(cols[0].dtype)
            for block, part in zip(_row_blocks(m, _BLOCK_ROWS), cols):
                da, start = part @ kmat, 0
                for f, r, k, lam, grad in sides:
                    x, span = f.reshape(m, -1), slice(start, start + k.shape[1])
                    for local in _row_blocks(len(part), 2 * _CHUNK):
                        rows = slice(block.start + local.start, block.start + local.stop)
                        ga, rr = da[local, span], r[rows].to(da.dtype)
                        a = x[rows] * rr
                        # below eps F.normalize does not project: put back the lam * a taken out above
                        coef = torch.linalg.vecdot(a, ga, dim=1)[:, None].where(r[rows] < 1 / _EPS, -lam)
                        torch.mul(ga.addcmul_(a, coef, value=-1), rr, out=grad[rows])
                    start = span.stop
        grads = iter(grad.view(f.shape) for f, _, _, _, grad in sides)
        grad_s = next(grads) if ctx.needs_input_grad[0] else None
        grad_t = next(grads) if ctx.needs_input_grad[1] else None
        return grad_s, grad_t


def manifold_exact(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Exact patch-level manifold loss, Eq. 8, averaged over the (np x np) map: ||M(F_S) - M(F_T)||^2 / (np)^2.

    Computed without the map in O(np c^2) time and O(np c) memory (see the derivation above), accurate
    to ~1e-7 relative even when student and teacher maps nearly coincide, where the float32 map itself
    errs by up to ~1e-2. Differentiable in both inputs.
    """
    _check_pair(f_s, f_t)
    with _no_autocast(f_s):
        return _ExactManifold.apply(
            f_s.to(torch.promote_types(f_s.dtype, torch.float32)),
            f_t.to(torch.promote_types(f_t.dtype, torch.float32)),
        )


def manifold_naive(f_s: Tensor, f_t: Tensor) -> Tensor:
    """The same quantity as `manifold_exact`, built the obvious way with two (np x np) maps (reference)."""
    _check_pair(f_s, f_t)
    with _no_autocast(f_s):
        a, b = _unit(f_s).flatten(0, 1), _unit(f_t).flatten(0, 1)
        return (a @ a.T - b @ b.T).pow(2).mean()


def manifold_loss(
    feats_s: Sequence[Tensor],
    feats_t: Sequence[Tensor],
    *,
    terms: Sequence[str] = MANIFOLD_TERMS,
    weights: dict[str, float] | None = None,
    k: int = 192,
    reduction: str = "paper",
    layer_reduce: str = "sum",
    exact_weight: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Weighted manifold terms over pairs of (student block, teacher block) features.

    Eq. 9 per pair (weights play alpha and beta; the paper uses ci 1, cp 1, rs 0.2), combined over the
    pairs by "sum" (Eq. 13) or "mean" (the released code). exact_weight > 0 adds the exact loss of
    Eq. 8 as "exact". Returns each weighted term and their "total"; unlisted terms are not computed.
    """
    unknown = set(terms) - set(MANIFOLD_TERMS)
    if unknown:
        raise ValueError(f"unknown manifold terms {sorted(unknown)}; known: {MANIFOLD_TERMS}")
    if layer_reduce not in ("sum", "mean"):
        raise ValueError(f"layer_reduce must be 'sum' or 'mean', got {layer_reduce!r}")
    if len(feats_s) != len(feats_t) or not feats_s:
        raise ValueError(
            f"need equally many student and teacher blocks (at least one), got {len(feats_s)} and {len(feats_t)}"
        )
    weights = {**{name: 1.0 for name in terms}, **(weights or {})}
    reduce = torch.sum if layer_reduce == "sum" else torch.mean
    out = {}
    if terms:  # all pairs at once (rs with k == 0: zero, no draw)
        for name, per_pair in _pair_terms(feats_s, feats_t, terms, k, reduction, generator).items():
            out[name] = reduce(weights[name] * per_pair)
    if exact_weight > 0:
        out["exact"] = reduce(
            torch.stack([exact_weight * manifold_exact(f_s, f_t) for f_s, f_t in zip(feats_s, feats_t)])
        )
    out["total"] = torch.stack(list(out.values())).sum() if out else feats_s[0].new_zeros((), dtype=torch.float32)
    return out


# --- logit and feature losses -------------------------------------------------------------------------


def kd_loss(
    student_kd_logits: Tensor, teacher_logits: Tensor, *, kind: str, tau: float = 1.0, reduction: str = "batch"
) -> Tensor:
    """DeiT's distillation term on the student's distillation head.

    "soft": tau^2 KL(teacher || student) of the tempered distributions (Eq. 5; tau^2 keeps the gradient
    scale independent of tau), summed and divided by the batch size (`reduction="batch"`) or, as DeiT's
    released code does, by the number of logits (`"elements"`: batch x classes). "hard": cross-entropy
    against the teacher's decision y_t = argmax (Eq. 6).
    """
    if kind == "soft":
        if reduction not in ("batch", "elements"):
            raise ValueError(f"kd_loss reduction must be 'batch' or 'elements', got {reduction!r}")
        kl = F.kl_div(
            F.log_softmax(student_kd_logits / tau, dim=1),
            F.log_softmax(teacher_logits / tau, dim=1),
            reduction="batchmean" if reduction == "batch" else "sum",
            log_target=True,
        ) * (tau * tau)
        return kl if reduction == "batch" else kl / student_kd_logits.numel()
    if kind == "hard":
        return F.cross_entropy(student_kd_logits, teacher_logits.argmax(dim=1))
    raise ValueError(f"kd_loss kind must be 'soft' or 'hard', got {kind!r}")


def classification_loss(logits: Tensor, target: Tensor, *, smoothing: float = 0.0) -> Tensor:
    """Cross-entropy against class indices (with label smoothing) or against soft targets.

    Soft (float, (n, classes)) targets come from Mixup/CutMix, which already folds label smoothing into
    them, so `smoothing` only applies to class indices.
    """
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(f"soft targets {tuple(target.shape)} must match logits {tuple(logits.shape)}")
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, target, label_smoothing=smoothing)


def embedding_transfer(f_s: Tensor, f_t: Tensor, proj: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Direct embedding transfer (FitNets; the paper's Table 7 baseline): MSE between the student's
    features, mapped by `proj` when the widths differ, and the teacher's. Unlike the manifold terms it
    needs equal widths, which is the restriction the paper's method lifts."""
    if proj is None and f_s.shape[-1] != f_t.shape[-1]:
        raise ValueError(
            f"student width {f_s.shape[-1]} != teacher width {f_t.shape[-1]}: "
            "embedding transfer needs a projection (proj) between them"
        )
    if proj is not None:
        f_s = proj(f_s)
    if f_s.shape != f_t.shape:
        raise ValueError(f"projected student features {tuple(f_s.shape)} do not match teacher {tuple(f_t.shape)}")
    return F.mse_loss(f_s.float(), f_t.float())
