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
# With the rows of A (m x c_s) and B (m x c_t) the unit patch embeddings,
#     ||AA^T - BB^T||_F^2 = ||A^T A||^2 - 2 ||A^T B||^2 + ||B^T B||^2,
# c x c Gram matrices instead of an m x m map. Transformer features share a large mean direction, so
# these three terms are ~m^2 and cancel down to the small gap. Write A = Ab + 1 mu^T, B = Bb + 1 nu^T
# with mu, nu the mean rows, so that 1^T Ab = 0 and 1^T Bb = 0. Then
#     AA^T - BB^T = G + w 1^T + 1 w^T + d 1 1^T,
#     G = Ab Ab^T - Bb Bb^T,  w = Ab mu - Bb nu,  d = mu^T mu - nu^T nu,
# and since G 1 = 0 and 1^T w = 0 every cross term vanishes:
#     ||AA^T - BB^T||^2 = ||Ab^T Ab||^2 - 2 ||Ab^T Bb||^2 + ||Bb^T Bb||^2 + 2 m ||w||^2 + m^2 d^2.
# Centering removes the shared direction; float64 products remove the rest of the cancellation (a
# float32 product already errs by ~1e-7 of the Gram terms, more than the whole gap of near-identical
# maps). Two passes over row blocks (means, then Grams and w), so memory is O(c^2 + chunk * c) and time
# O(m c^2). (One pass with a provisional shift and w from the Grams is ~10% faster but loses up to
# 1e-4 relative on nearly parallel patches: w^2 then cancels as a difference of quadratic forms.)

_CHUNK = 1024  # rows per block: float64 blocks of 1024 x c stay a few MB, GEMMs stay efficient
_EPS = 1e-12  # F.normalize's


_GRAM_BLOCK = 96  # columns per block of a symmetric Gram: upper blocks only, ~1/4 less GEMM work, measured


def _gram_edges(c: int) -> list[int]:
    nb = max(1, round(c / _GRAM_BLOCK))
    return [c * i // nb for i in range(nb + 1)]


def _add_sym_gram(acc: Tensor, x: Tensor, edges: list[int]) -> None:
    """acc += x^T x on the block upper triangle only (`_fill_lower` completes it): a symmetric Gram
    needs (nb + 1) / (2 nb) of a full product's GEMM work (5/8 at four blocks)."""
    spans = [slice(a, b) for a, b in zip(edges, edges[1:])]
    for i, si in enumerate(spans):
        for sj in spans[i:]:
            prod = x[:, si].T @ x[:, sj]
            acc[si, sj] += prod if prod.dtype == acc.dtype else prod.to(acc.dtype)


def _fill_lower(acc: Tensor, edges: list[int]) -> Tensor:
    spans = [slice(a, b) for a, b in zip(edges, edges[1:])]
    for i, si in enumerate(spans):
        for sj in spans[i + 1 :]:
            acc[sj, si] = acc[si, sj].T
    return acc


def _blocks(f_s: Tensor, f_t: Tensor, chunk: int):
    """Row blocks of the (m, c_s) and (m, c_t) views of f_s and f_t, with their row slice."""
    m = f_s.shape[0] * f_s.shape[1]
    x_s, x_t = f_s.reshape(m, -1), f_t.reshape(m, -1)
    for i in range(0, m, chunk):
        yield x_s[i : i + chunk], x_t[i : i + chunk], slice(i, i + chunk)


def _rnorm(x: Tensor) -> Tensor:
    """1 / max(||row||, eps) of each row, (rows, 1): F.normalize(x, dim=1) is x * _rnorm(x)."""
    return x.norm(dim=1, keepdim=True).clamp_min(_EPS).reciprocal()


def _manifold_gram(
    f_s: Tensor, f_t: Tensor, *, center: bool = True, dtype: torch.dtype = torch.float64, chunk: int = _CHUNK
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    """||M(A) - M(B)||^2 / m^2 through c x c Grams (no autograd), with products in `dtype` and sums in
    float64. Also returns the uncentered Grams A^T A, A^T B, B^T B (float64) and the rows' reciprocal
    norms (m, 1) of f_s and f_t, for the backward pass.

    center=False or dtype=float32 are the less accurate variants, kept to measure why they are not used.
    """
    f64, m = torch.float64, f_s.shape[0] * f_s.shape[1]
    c_s, c_t = f_s.shape[-1], f_t.shape[-1]
    r_s, r_t = f_s.new_empty(m, 1, dtype=dtype), f_t.new_empty(m, 1, dtype=dtype)
    mu, nu = f_s.new_zeros(c_s, dtype=f64), f_s.new_zeros(c_t, dtype=f64)
    for x_s, x_t, rows in _blocks(f_s, f_t, chunk):  # the norms, and the mean unit rows (x^T r)
        x_s, x_t = x_s.to(dtype), x_t.to(dtype)
        r_s[rows], r_t[rows] = _rnorm(x_s), _rnorm(x_t)
        if center:
            mu += (x_s.T @ r_s[rows]).view(-1).to(f64)
            nu += (x_t.T @ r_t[rows]).view(-1).to(f64)
    mu, nu = mu / m, nu / m
    xx, xy, yy = (mu.new_zeros(i, j) for i, j in ((c_s, c_s), (c_s, c_t), (c_t, c_t)))
    w2 = mu.new_zeros(())
    mu_c, nu_c = mu.to(dtype), nu.to(dtype)
    edges_s, edges_t = _gram_edges(c_s), _gram_edges(c_t)
    for x_s, x_t, rows in _blocks(f_s, f_t, chunk):
        a = torch.addcmul(-mu_c, x_s.to(dtype), r_s[rows])  # unit rows minus their mean
        b = torch.addcmul(-nu_c, x_t.to(dtype), r_t[rows])
        _add_sym_gram(xx, a, edges_s)
        xy += (a.T @ b).to(f64)
        _add_sym_gram(yy, b, edges_t)
        w2 += (a @ mu_c - b @ nu_c).to(f64).pow(2).sum()
    xx, yy = _fill_lower(xx, edges_s), _fill_lower(yy, edges_t)
    d = mu @ mu - nu @ nu
    total = xx.pow(2).sum() - 2 * xy.pow(2).sum() + yy.pow(2).sum() + 2 * m * w2 + m * m * d * d
    grams = (xx + m * torch.outer(mu, mu), xy + m * torch.outer(mu, nu), yy + m * torch.outer(nu, nu))
    return total / (m * m), grams, (r_s, r_t)


class _ExactManifold(torch.autograd.Function):
    """Forward via Grams; backward streams rows again, so nothing of size m x m (or m x c) is saved."""

    @staticmethod
    def forward(ctx, f_s: Tensor, f_t: Tensor, chunk: int) -> Tensor:
        value, grams, norms = _manifold_gram(f_s, f_t, chunk=chunk)
        ctx.chunk = chunk
        ctx.save_for_backward(f_s, f_t, *grams, *norms)
        return value.to(torch.promote_types(f_s.dtype, torch.float32))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        # d/dA ||AA^T - BB^T||^2 = 4 (AA^T - BB^T) A = 4 (A (A^T A) - B (B^T A)), and symmetrically for B;
        # then through a = x / ||x||: dx = (da - a (a . da)) / ||x|| (just da / eps below eps, as F.normalize).
        f_s, f_t, xx, xy, yy, r_s, r_t = ctx.saved_tensors
        f64, m = torch.float64, f_s.shape[0] * f_s.shape[1]
        scale = 4 * grad_out.to(f64) / (m * m)
        xx, xy, yy = xx * scale, xy * scale, yy * scale  # scaled once here, not per row
        need_s, need_t = ctx.needs_input_grad[:2]
        grad_s = f_s.new_empty(m, f_s.shape[-1]) if need_s else None
        grad_t = f_t.new_empty(m, f_t.shape[-1]) if need_t else None

        def through_norm(da, a, r):
            coef = torch.linalg.vecdot(a, da, dim=1)[:, None] * (r < 1 / _EPS)
            return da.sub_(a * coef).mul_(r)

        for x_s, x_t, rows in _blocks(f_s, f_t, ctx.chunk):
            a, b = x_s.to(f64) * r_s[rows], x_t.to(f64) * r_t[rows]
            if need_s:
                grad_s[rows] = through_norm(torch.addmm(a @ xx, b, xy.T, alpha=-1), a, r_s[rows])
            if need_t:
                grad_t[rows] = through_norm(torch.addmm(b @ yy, a, xy, alpha=-1), b, r_t[rows])
        return (grad_s.view(f_s.shape) if need_s else None), (grad_t.view(f_t.shape) if need_t else None), None


def manifold_exact(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Exact patch-level manifold loss, Eq. 8, averaged over the (np x np) map: ||M(F_S) - M(F_T)||^2 / (np)^2.

    Computed without the map in O(np c^2) time and O(c^2 + chunk c) memory (see the derivation above),
    accurate to float32 output precision (~1e-7 relative) even when student and teacher maps nearly
    coincide, where the float32 map itself errs by up to ~1e-2. Differentiable in both inputs.
    """
    _check_pair(f_s, f_t)
    with _no_autocast(f_s):
        return _ExactManifold.apply(
            f_s.to(torch.promote_types(f_s.dtype, torch.float32)),
            f_t.to(torch.promote_types(f_t.dtype, torch.float32)),
            _CHUNK,
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
