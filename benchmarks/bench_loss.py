"""Exact patch-level manifold loss (Eq. 8 through Gram matrices) vs the full (np x np) map and vs the three
sampled terms of Eq. 9, measured side by side at the paper's shapes.

    python -m benchmarks.bench_loss              # n=128, p=196, c_S in (192, 384), c_T=384: minutes on 1 core
    python -m benchmarks.bench_loss --no-naive   # without the (np x np) map's time and memory: faster still
    python -m benchmarks.bench_loss --quick      # small shapes, seconds (smoke test)

Timings are forward + backward (gradient w.r.t. the student only), median over --repeats runs; exact,
terms and the terms with autograd's own backward (the implementation before issue 15) run alternately,
so that the load of a shared machine weighs on all alike: the ratios of one run are what count. The
naive map runs once per width (each run maps ~12 GB at c_S 384: most of its time is the kernel handing
out pages). On features whose least-squares fit cancels little (these random ones, and any teacher not
close to a linear map of the student) manifold_exact forms E in float32; where it cancels (teacher ~
student) E costs one float64 m x c_S x c_T GEMM more.
Peak memory is the extra memory one forward + backward needs above what was in use before it:
  * CUDA: torch.cuda.max_memory_allocated() above the bytes allocated at the start (tensor bytes).
  * CPU: growth of the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs)
    above the resident set at the start, after malloc_trim(0) hands freed heap pages back. This counts all
    memory the process touches (tensors, autograd buffers, allocator slack), so it is an upper bound on
    tensor bytes; each function is warmed up on tiny inputs first so that loading kernel code is not
    counted.
Accuracy is measured where the Gram terms cancel most: student and teacher maps that nearly coincide
(teacher = student + 1e-4 noise, same width), without and with a direction shared by all patches (as in
trained ViTs), and that teacher rotated into c_T = 384 columns (maps equal up to the noise, features not),
against a float64 reference that builds the full map in row blocks (the definition, not the Gram
identity). Gradients (w.r.t. the student) against float64 on the timed features and the two cancelling
cases: D A from float64 uncentred Grams, A (A^T A) - B (B^T A), then through the normalisation.
"""

from __future__ import annotations

import argparse
import ctypes
import re
import statistics
import time

import torch
import torch.nn.functional as F

from trainer.losses import _manifold_gram, manifold_exact, manifold_naive, manifold_terms


def gram_value(f_s, f_t, **kw):
    """Eq. 8 / m^2 through `_manifold_gram`'s less accurate variants (see its doc)."""
    return _manifold_gram(f_s, f_t, **kw)[0].item()


class PeakMemory:
    """Context manager: `.peak` = extra bytes at the high-water mark inside the block (see module doc)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, None

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident set
            self.base = self._status("VmRSS")
        except OSError:  # not Linux / not allowed: report n/a
            self.base = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        elif self.base is not None:
            self.peak = self._status("VmHWM") - self.base
        return False


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_f64(f_s, f_t, rows=1024, dtype=torch.float64):
    """Eq. 8 / m^2 by its definition in float64 (or `dtype`), the map built `rows` rows at a time."""
    a = F.normalize(f_s.to(dtype).flatten(0, 1), dim=-1)
    b = F.normalize(f_t.to(dtype).flatten(0, 1), dim=-1)
    total = sum((a[i : i + rows] @ a.T - b[i : i + rows] @ b.T).pow(2).sum() for i in range(0, len(a), rows))
    return (total / len(a) ** 2).item()


def reference_grad_f64(f_s, f_t):
    """d(Eq. 8 / m^2)/d f_s in float64: 4/m^2 (A A^T A - B B^T A) through the normalisation."""
    x = f_s.double().flatten(0, 1)
    a, b = F.normalize(x, dim=-1), F.normalize(f_t.double().flatten(0, 1), dim=-1)
    da = (a @ (a.T @ a) - b @ (b.T @ a)) * (4 / len(a) ** 2)
    return ((da - a * (a * da).sum(1, keepdim=True)) / x.norm(dim=1, keepdim=True)).view(f_s.shape)


def grad_err(f_s, f_t):
    """max |grad - float64 grad| / max |float64 grad| of manifold_exact w.r.t. f_s."""
    s = f_s.detach().requires_grad_()
    manifold_exact(s, f_t).backward()
    ref = reference_grad_f64(s.detach(), f_t)
    return ((s.grad.double() - ref).abs().max() / ref.abs().max()).item()


def run_once(fn, f_s, f_t, device):
    """One forward + backward: (seconds, peak extra bytes, grad of f_s)."""
    f_s.grad = None
    sync(device)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        fn(f_s, f_t).backward()
        sync(device)
        seconds = time.perf_counter() - t0
    return seconds, mem.peak, f_s.grad.detach().clone()


def run(fns, f_s, f_t, repeats, device):
    """Run `fns` round-robin `repeats` times, so that a change in machine load hits all of them alike:
    {name: (median seconds, peak extra bytes of the first run, grad of the first run)}."""
    runs = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(run_once(fn, f_s, f_t, device))
    return {name: (statistics.median(r[0] for r in rs), rs[0][1], rs[0][2]) for name, rs in runs.items()}


def near_identical(n, p, c, shared_mean, device, seed, c_t=None):
    """Teacher = student + 1e-4 noise; with c_t, that teacher rotated into c_t >= c columns."""
    g = torch.Generator().manual_seed(seed)
    f_s = torch.randn(n, p, c, generator=g)
    if shared_mean:
        f_s += 3.0 * torch.randn(c, generator=g)
    f_t = f_s + 1e-4 * torch.randn(n, p, c, generator=g)
    if c_t is not None:
        q, _ = torch.linalg.qr(torch.randn(c_t, c_t, generator=g, dtype=torch.float64))
        f_t = (torch.cat([f_t, f_t.new_zeros(n, p, c_t - c)], -1).double() @ q).float()
    return f_s.to(device), f_t.to(device)


def accuracy(n, p, c_s, c_t, device, row, summary):
    """Rows of relative errors against float64 where the Gram terms cancel: near-identical features of
    equal width c_s, without / with a shared direction, and the latter's teacher rotated into c_T columns;
    gradients on the timed features and the two cancelling cases with a shared direction."""
    variants = {
        "exact (centred, fitted W, fp32 Gram)": lambda s, t: manifold_exact(s, t).item(),
        # the naive map's own float32 arithmetic, built 1024 rows at a time (no 12 GB map: it ran above)
        "fp32 map (row blocks)": lambda s, t: reference_f64(s, t, dtype=torch.float32),
        "Gram identity fp32 uncentered": lambda s, t: gram_value(s, t, center=False, fit=False),
        "(ablation) fp32 centred, no fit (W = 0)": lambda s, t: gram_value(s, t, fit=False),
        "(ablation) f64 uncentered, no fit": lambda s, t: gram_value(
            s, t, center=False, fit=False, dtype=torch.float64
        ),
    }
    cases = [
        near_identical(n, p, c_s, False, device, seed=c_s + 1),
        near_identical(n, p, c_s, True, device, seed=c_s + 1),
        near_identical(n, p, c_s, True, device, seed=c_s + 1, c_t=c_t),
    ]
    errs = {name: [] for name in variants}
    for s, t in cases:
        ref = reference_f64(s, t)
        for name, fn in variants.items():
            errs[name].append(abs(fn(s, t) - ref) / ref)
    for name, es in errs.items():
        value = " | ".join(f"{e:.1e}" for e in es)
        row(c_s, f"rel err: {name}", value, "<= 1e-5", max(es) <= 1e-5)
        if name.startswith("exact"):
            summary["value"].append(max(es))
    g = torch.Generator().manual_seed(c_s)
    timed = torch.randn(n, p, c_s, generator=g).to(device), torch.randn(n, p, c_t, generator=g).to(device)
    gerrs = [grad_err(s, t) for s, t in (timed, *cases[1:])]
    summary["grad"].append(max(gerrs))
    row(
        c_s,
        "grad rel err exact vs f64: timed | shared | rotated",
        " | ".join(f"{e:.1e}" for e in gerrs),
        "<= 1e-5",
        max(gerrs) <= 1e-5,
    )


def fmt_bytes(b):
    return "n/a" if b is None else f"{b / 2**20:.1f} MiB"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (seconds), for smoke tests")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of exact and terms (naive: one)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive (np x np) map's time and memory")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    n, p, c_t, widths, k = (8, 16, 24, (12, 24), 32) if args.quick else (128, 196, 384, (192, 384), 192)
    m = n * p

    def terms(s, t):
        return sum(manifold_terms(s, t, min(k, s.shape[0] * s.shape[1]), generator=gen).values())

    def terms_autograd(s, t):
        """The three terms as plain expressions differentiated by autograd (kdgrid before issue 15)."""
        kk = min(k, s.shape[0] * s.shape[1])
        us, ut = F.normalize(s, dim=-1), F.normalize(t, dim=-1)

        def gap(x, y):
            return (x @ x.transpose(-1, -2) - y @ y.transpose(-1, -2)).pow(2).sum()

        idx = torch.randperm(s.shape[0] * s.shape[1], generator=gen, device=device)[:kk]
        return (
            gap(us.transpose(0, 1), ut.transpose(0, 1)) / s.shape[1]
            + gap(us, ut) / s.shape[0]
            + gap(us.flatten(0, 1)[idx], ut.flatten(0, 1)[idx])
        )

    gen = torch.Generator(device=device).manual_seed(0)
    fns = {"manifold_exact": manifold_exact, "manifold_naive": manifold_naive, "manifold_terms": terms}
    if args.no_naive:
        del fns["manifold_naive"]
    tiny = torch.randn(2, 3, 4, device=device, requires_grad=True), torch.randn(2, 3, 5, device=device)
    for fn in (*fns.values(), terms_autograd):  # load kernels before anything is measured
        fn(*tiny).backward()

    where = f"{device.type}" + (
        f" ({torch.get_num_threads()} thread)" if device.type == "cpu" else f" ({torch.cuda.get_device_name(device)})"
    )
    print(f"manifold_exact vs manifold_naive vs manifold_terms | {where} | torch {torch.__version__}")
    print(
        f"n={n} p={p} (m={m}) c_T={c_t} k={k}, float32, forward+backward w.r.t. f_s, median of "
        f"{args.repeats} ({'no naive' if args.no_naive else 'naive: one run'}), exact and terms interleaved"
    )
    rows = []
    summary = {"ratio": [], "value": [], "grad": []}

    def row(c_s, metric, value, goal="", ok=None):
        rows.append((c_s, metric, value, goal, "" if ok is None else ("PASS" if ok else "MISS")))

    for c_s in widths:
        g = torch.Generator().manual_seed(c_s)
        f_s = torch.randn(n, p, c_s, generator=g).to(device).requires_grad_()
        f_t = torch.randn(n, p, c_t, generator=g).to(device)
        fast = {name: fns[name] for name in ("manifold_exact", "manifold_terms")} | {"terms_autograd": terms_autograd}
        res = run(fast, f_s, f_t, args.repeats, device)
        (t_e, m_e, g_e), (t_t, m_t, _) = res["manifold_exact"], res["manifold_terms"]
        t_a = res["terms_autograd"][0]
        summary["ratio"].append(t_e / t_t)
        if args.no_naive:
            row(c_s, "time exact | terms", f"{t_e:.3f} s | {t_t:.3f} s")
            row(c_s, "peak extra memory exact | terms", f"{fmt_bytes(m_e)} | {fmt_bytes(m_t)}")
            row(c_s, "time exact / terms", f"{t_e / t_t:.2f}x", "<= 1.3x", t_e / t_t <= 1.3)
            row(c_s, "time exact / terms with autograd's backward", f"{t_e / t_a:.2f}x", "<= 1.3x", t_e / t_a <= 1.3)
            row(c_s, "time terms / terms with autograd's backward", f"{t_t / t_a:.2f}x")
        else:
            t_n, m_n, g_n = run({"manifold_naive": manifold_naive}, f_s, f_t, 1, device)["manifold_naive"]
            row(c_s, "time exact | naive | terms", f"{t_e:.3f} s | {t_n:.3f} s | {t_t:.3f} s")
            row(c_s, "speed-up naive / exact", f"{t_n / t_e:.0f}x", ">= 30x", t_n / t_e >= 30)
            row(
                c_s,
                "peak extra memory exact | naive | terms",
                f"{fmt_bytes(m_e)} | {fmt_bytes(m_n)} | {fmt_bytes(m_t)}",
            )
            if m_e and m_n:
                row(c_s, "memory ratio naive / exact", f"{m_n / m_e:.0f}x", ">= 30x", m_n / m_e >= 30)
            row(c_s, "time exact / terms", f"{t_e / t_t:.2f}x", "<= 1.3x", t_e / t_t <= 1.3)
            row(c_s, "time exact / terms with autograd's backward", f"{t_e / t_a:.2f}x", "<= 1.3x", t_e / t_a <= 1.3)
            row(c_s, "time terms / terms with autograd's backward", f"{t_t / t_a:.2f}x")
            diff = (g_e - g_n).abs().max().item()
            rel_g = diff / g_n.abs().max().item()
            row(
                c_s, "grad exact vs naive: max|diff|, /max|g|", f"{diff:.1e}, {rel_g:.1e}", "<= 1e-4 rel", rel_g <= 1e-4
            )
            del g_n
        del f_s, f_t, g_e, res

        accuracy(n, p, c_s, c_t, device, row, summary)

    w = max(len(r[1]) for r in rows)
    print(
        "rel err columns: near-identical features without | with a direction shared by all patches | the latter's"
        f" teacher rotated into c_T={c_t} columns"
    )
    print(f"{'c_S':>4}  {'metric':<{w}}  {'value':<36} {'goal':<12} result")
    for c_s, metric, value, goal, ok in rows:
        print(f"{c_s:>4}  {metric:<{w}}  {value:<36} {goal:<12} {ok}")
    ratios = " | ".join(f"c_S {c_s} {r:.2f}x" for c_s, r in zip(widths, summary["ratio"]))
    print(
        f"summary: exact / terms {ratios} (goal <= 1.3x); exact vs float64: value rel err <= "
        f"{max(summary['value']):.1e}, grad rel err <= {max(summary['grad']):.1e} (goal <= 1e-5)"
    )
    return rows


if __name__ == "__main__":
    main()
