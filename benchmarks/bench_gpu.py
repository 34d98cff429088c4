"""The distillation step at the paper's shape on one GPU, measured side by side in one run.

    python -m benchmarks.bench_gpu                       # cuda: DeiT-Tiny (dist.) <- CaiT-S24, 224 px, batch 128, bf16
    python -m benchmarks.bench_gpu --compile             # + torch.compile on/off for teacher and student
    python -m benchmarks.bench_gpu --cpu-tiny            # tiny analogs on the CPU, seconds (run by the test suite)
    python -m benchmarks.bench_gpu ... --json out.json   # the same numbers as JSON

Table 2's manifold row under the `paper-mean` recipe: DeiT hard distillation (Eq. 6) plus L_ci + L_cp +
0.2 L_rs, each map gap averaged, summed over the first-4 + last-4 block pairs, k = 192, through the
engine's own objective (trainer/objective.py). Weights are random (no hub on the GPU machine): speed does
not depend on them. Sections, each time-boxed (--section-s) and interleaved round by round so that drift
hits all alike (median of the rounds):

- peak: a large bf16 matmul on the same device, the ceiling the FLOP shares are taken against;
- step: teacher forward (taps, inference mode) | student forward + backward + AdamW (no taps, no
  teacher) | the whole distillation step, their ratio, images/s, share of the bf16 peak (model FLOPs from
  torch.utils.flop_counter, beside the paper's Table 1 formula L(12nc^2 + 2n^2c) MACs), peak memory, and
  the host syncs one distillation step makes (torch.cuda.set_sync_debug_mode);
- cohort: one teacher forward feeding 1, 2, 4, 8 students: per-student cost relative to a solo step;
- loss: the exact Eq. 8 loss (manifold_exact) against the three terms, forward + backward, at the
  paper's feature shapes (n 128, p 196, c_S 192, c_T 384), one block pair and all eight;
- compile (--compile, last): teacher forward and distillation step, torch.compile'd teacher and student.

Imports torch, timm and kdgrid's pure modules only (trainer.models, .taps, .losses, .objective): the GPU
machine has no mlflow, pydantic or ray (tests/test_bench_gpu.py checks both).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
import warnings
from types import SimpleNamespace

import timm
import torch
import torch.nn.functional as F

from trainer import models  # noqa: F401  (registers the CPU analogs with timm)
from trainer.losses import SPEC_REDUCTION, manifold_loss
from trainer.objective import objective
from trainer.taps import Student, forward_taps


def paper_mean_row() -> SimpleNamespace:
    """What the engine's objective reads of Table 2's CaiT-S24 -> DeiT-Tiny manifold run under the
    `paper-mean` recipe at the paper scale (a test checks it against kdgrid's own plan)."""
    blocks = SimpleNamespace(student=(1, 2, 3, 4, 9, 10, 11, 12), teacher=(1, 2, 3, 4, 21, 22, 23, 24))
    manifold = SimpleNamespace(
        terms=("ci", "cp", "rs"),
        alpha=1.0,
        beta=0.2,
        k=192,
        reduction="mean",
        layer_reduce="sum",
        term_scale=SimpleNamespace(ci=1.0, cp=1.0, rs=1.0),
        weight=1.0,
        exact=False,
        exact_weight=0.0,
        student_blocks=blocks.student,
        teacher_blocks=blocks.teacher,
    )
    return SimpleNamespace(
        distillation=SimpleNamespace(kd="hard", tau=1.0, kd_weight=0.5, manifold=manifold, embedding=None),
        data=SimpleNamespace(augment=SimpleNamespace(smoothing=0.1)),
        recipe=SimpleNamespace(lr=5e-4, lr_scale_batch=512, weight_decay=0.05, drop_path=0.1),
    )


# The paper's models, and tiny analogs with the same depths (so the same blocks are tapped) for the CPU.
FULL = dict(
    student="deit_tiny_distilled_patch16_224",
    teacher="cait_s24_224",
    student_kw={},
    teacher_kw={},
    batch=128,
    img=224,
    chans=3,
    classes=1000,
    loss_shape=(128, 196, 192, 384),
)
TINY = dict(
    student="analog_deit_tiny_distilled",
    teacher="analog_cait_s24",
    student_kw=dict(embed_dim=24, num_heads=3),
    teacher_kw=dict(embed_dim=32, num_heads=4),
    batch=4,
    img=28,
    chans=1,
    classes=10,
    loss_shape=(4, 49, 24, 32),
)  # k 192 <= n p = 196


def flop_str(flops: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} FLOP"


def table1_macs(depth: int, tokens: int, width: int) -> float:
    """Table 1's cost of a ViT forward per image, L (12 n c^2 + 2 n^2 c) multiply-adds (Sec. 3.1)."""
    return depth * (12 * tokens * width**2 + 2 * tokens**2 * width)


class Bench:
    def __init__(self, args):
        self.args = args
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.cfg = TINY if args.tiny else FULL
        self.rows: list[tuple[str, str, str]] = []
        self.data: dict[str, float | str | None] = {}

    # --- output -------------------------------------------------------------------------------------------
    def row(self, section: str, metric: str, value: str, key: str | None = None, number=None) -> None:
        self.rows.append((section, metric, value))
        print(f"{section:<8} {metric:<62} {value}", flush=True)
        if key:
            self.data[key] = number

    # --- timing -------------------------------------------------------------------------------------------
    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def timed(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def rounds(self, fns: dict, max_rounds: int | None = None) -> dict[str, float]:
        """Median seconds of each fn, run round-robin after warm-up rounds, within --section-s."""
        a = self.args
        for _ in range(a.warmup):
            for fn in fns.values():
                fn()
        times = {k: [] for k in fns}
        t_end = time.perf_counter() + a.section_s
        for r in range(max_rounds or a.rounds):
            for k, fn in fns.items():
                times[k].append(self.timed(fn))
            if time.perf_counter() > t_end and r >= 2:
                break
        self.last_rounds = len(next(iter(times.values())))
        return {k: statistics.median(v) for k, v in times.items()}

    def peak_mem(self, fn) -> int | None:
        if not self.cuda:
            return None
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.dev)
        base = torch.cuda.memory_allocated(self.dev)
        fn()
        self.sync()
        return torch.cuda.max_memory_allocated(self.dev) - base

    # --- models -------------------------------------------------------------------------------------------
    def build(self):
        c, row = self.cfg, paper_mean_row()
        self.row_spec = row
        self.s_blocks = tuple(b - 1 for b in row.distillation.manifold.student_blocks)
        self.t_blocks = tuple(b - 1 for b in row.distillation.manifold.teacher_blocks)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(c["batch"], c["chans"], c["img"], c["img"], generator=g).to(self.dev)
        y = torch.randint(0, c["classes"], (c["batch"],), generator=g)
        lam = 0.7  # a Mixup-like soft target, as DeiT's recipe feeds the loss at the paper scale
        self.target = (lam * F.one_hot(y, c["classes"]) + (1 - lam) * F.one_hot(y.roll(1), c["classes"])).float()
        self.target = (self.target * 0.9 + 0.1 / c["classes"]).to(self.dev)
        self.teacher = (
            timm.create_model(
                c["teacher"], pretrained=False, num_classes=c["classes"], **self._input_kw(), **c["teacher_kw"]
            )
            .to(self.dev)
            .eval()
            .requires_grad_(False)
        )
        # bf16 autocast as the engine runs on CUDA; on the CPU too, so that the tiny mode checks the dtypes
        self.autocast = lambda: torch.autocast(self.dev.type, dtype=torch.bfloat16)

    def _input_kw(self):
        c = self.cfg
        return dict(img_size=c["img"], in_chans=c["chans"]) if self.args.tiny else {}

    def student(self, taps: bool = True):
        """A student as the engine builds one: the Student wrapper with its taps, AdamW (fused on CUDA) over
        timm's weight-decay groups, DeiT's lr scaled by batch / 512."""
        from timm.optim import param_groups_weight_decay

        c, r = self.cfg, self.row_spec.recipe
        model = timm.create_model(
            c["student"],
            pretrained=False,
            num_classes=c["classes"],
            drop_path_rate=r.drop_path,
            **self._input_kw(),
            **c["student_kw"],
        )
        model.set_distilled_training(True)
        core = Student(model, self.row_spec.distillation if taps else None).to(self.dev).train()
        no_decay = {f"model.{n}" for n in model.no_weight_decay()}
        groups = param_groups_weight_decay(core, r.weight_decay, no_weight_decay_list=no_decay)
        opt = torch.optim.AdamW(groups, lr=r.lr * c["batch"] / r.lr_scale_batch, fused=self.cuda)
        gen = torch.Generator(device=self.dev).manual_seed(2)
        return SimpleNamespace(net=core, opt=opt, gen=gen)

    # --- the three timed pieces ---------------------------------------------------------------------------
    def teacher_forward(self, fwd=None):
        fwd = fwd or functools.partial(forward_taps, self.teacher, blocks=self.t_blocks)
        with torch.inference_mode(), self.autocast():
            out, feats = fwd(self.x)
        # inference tensors cannot be saved for backward: the engine hands the students clones
        return out.clone(), {b: f.clone() for b, f in zip(self.t_blocks, feats)}

    def plain_step(self, s):
        with self.autocast():
            out, _ = s.net(self.x)
        cls = out[0] if isinstance(out, tuple) else out
        loss = torch.sum(-self.target * F.log_softmax(cls.float(), dim=-1), dim=-1).mean()
        s.opt.zero_grad(set_to_none=True)
        loss.backward()
        s.opt.step()

    def distill_student(self, s, t_logits, t_feats):
        """The engine's _step for one student (no scheduler, no RNG swap: host-side, negligible)."""
        with self.autocast():
            out, s_feats = s.net(self.x, s.gen)
        terms = objective(self.row_spec, out, self.target, t_logits, s_feats, t_feats, s.gen)
        s.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        s.opt.step()
        return terms

    def distill_step(self, students, fwd=None):
        t_logits, t_feats = self.teacher_forward(fwd)
        for s in students:
            self.distill_student(s, t_logits, t_feats)

    # --- sections -----------------------------------------------------------------------------------------
    def header(self):
        a, c = self.args, self.cfg
        name = torch.cuda.get_device_name(self.dev) if self.cuda else "cpu"
        threads = "" if self.cuda else f", {torch.get_num_threads()} thread(s)"
        self.data.update(device=name, torch=torch.__version__, timm=timm.__version__)
        print(f"bench_gpu | {name}{threads} | torch {torch.__version__} | timm {timm.__version__}")
        print(
            f"{c['student']} <- {c['teacher']}, {c['img']} px, batch {c['batch']}, "
            f"bf16 autocast, paper-mean manifold row (hard KD + ci+cp+0.2 rs, "
            f"released reduction, 8 block pairs, k 192), median of <= {a.rounds} interleaved rounds"
        )

    def section_peak(self):
        n = 8192 if self.cuda else 256
        dt = torch.bfloat16
        a, b = (torch.randn(n, n, device=self.dev, dtype=dt) for _ in range(2))
        t = self.rounds({"mm": lambda: a @ b}, max_rounds=10)["mm"]
        self.peak = 2 * n**3 / t
        self.row(
            "peak",
            f"bf16 matmul {n}x{n}x{n}, measured",
            f"{self.peak / 1e12:.1f} TFLOP/s",
            "peak_tflops",
            self.peak / 1e12,
        )

    def count_flops(self, fn) -> float | None:
        from torch.utils.flop_counter import FlopCounterMode

        try:
            with FlopCounterMode(display=False) as counter:
                fn()
            return float(counter.get_total_flops())
        except Exception as err:  # an op the counter does not know: fall back to Table 1
            print(f"         (flop counter failed: {type(err).__name__}: {err})")
            return None

    def section_step(self):
        c = self.cfg
        solo, plain = self.student(), self.student(taps=False)
        self.solo = solo
        # model FLOPs: counted, and the paper's Table 1 formula beside them
        f_teacher = self.count_flops(self.teacher_forward)
        f_student = self.count_flops(lambda: self.plain_step(plain))
        t_tokens, s_tokens = self.teacher.patch_embed.num_patches, solo.net.model.patch_embed.num_patches + 2
        formula_t = 2 * c["batch"] * table1_macs(len(self.teacher.blocks), t_tokens, self.teacher.embed_dim)
        formula_s = 3 * 2 * c["batch"] * table1_macs(len(solo.net.model.blocks), s_tokens, solo.net.model.embed_dim)
        f_teacher, f_student = f_teacher or formula_t, f_student or formula_s
        self.row(
            "flops",
            "teacher forward: counted | Table 1 formula (self-attn blocks)",
            f"{flop_str(f_teacher)} | {flop_str(formula_t)}",
            "teacher_tflop",
            f_teacher / 1e12,
        )
        self.row(
            "flops",
            "student fwd+bwd: counted | 3x Table 1 formula",
            f"{flop_str(f_student)} | {flop_str(formula_s)}",
            "student_tflop",
            f_student / 1e12,
        )

        mem = {
            "teacher": self.peak_mem(self.teacher_forward),
            "student": self.peak_mem(lambda: self.plain_step(plain)),
            "distill": self.peak_mem(lambda: self.distill_step([solo])),
        }
        t = self.rounds(
            {
                "teacher": self.teacher_forward,
                "student": lambda: self.plain_step(plain),
                "distill": lambda: self.distill_step([solo]),
            }
        )
        self.times = t
        n = self.last_rounds
        ratio = t["distill"] / (t["teacher"] + t["student"])
        for k, what, flops in (
            ("teacher", "teacher forward (taps, inference mode)", f_teacher),
            ("student", "student fwd + bwd + AdamW (no taps, no teacher)", f_student),
            ("distill", "distillation step (teacher + student + losses)", f_teacher + f_student),
        ):
            share = flops / t[k] / self.peak
            self.row(
                "step", f"{what}: ms | share of bf16 peak", f"{t[k] * 1e3:.2f} ms | {share:.1%}", f"{k}_ms", t[k] * 1e3
            )
            self.data[f"{k}_peak_share"] = share
        self.row("step", "distill / (teacher + student)", f"{ratio:.3f}", "ratio", ratio)
        self.row(
            "step",
            "images/s (distillation step)",
            f"{c['batch'] / t['distill']:.0f}",
            "images_per_s",
            c["batch"] / t["distill"],
        )
        for k, v in mem.items():
            self.row(
                "memory",
                f"peak {k} (allocated above the start)",
                "n/a (cpu)" if v is None else f"{v / 2**30:.2f} GiB",
                f"{k}_peak_gib",
                None if v is None else v / 2**30,
            )
        self.row("step", "timed rounds", str(n))
        if self.cuda:  # the engine's step is meant to run without waiting on the GPU
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    self.distill_step([solo])
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
            self.row("step", "host syncs in one distillation step", str(len(syncs)), "host_syncs", len(syncs))
            for s in sorted(set(syncs))[:5]:
                print(f"         sync: {s}")
        terms = self.distill_student(solo, *self.teacher_forward())
        dtypes = sorted({str(v.dtype).replace("torch.", "") for v in terms.values()})
        self.row(
            "step",
            f"dtype of the {len(terms)} loss terms ({', '.join(terms)})",
            " ".join(dtypes),
            "loss_dtypes",
            " ".join(dtypes),
        )
        fused = [getattr(m, "fused_attn", None) for m in solo.net.modules() if hasattr(m, "fused_attn")]
        t_fused = [getattr(m, "fused_attn", None) for m in self.teacher.modules() if hasattr(m, "fused_attn")]
        self.row(
            "step",
            "fused attention (SDPA): student | teacher modules",
            f"{sum(map(bool, fused))}/{len(fused)} | {sum(map(bool, t_fused))}/{len(t_fused)} "
            f"(+{len(self.teacher.blocks)} talking-heads)",
        )

    def section_cohort(self):
        sizes = [int(s) for s in self.args.cohorts.split(",")]
        members = [self.solo] + [self.student() for _ in range(max(sizes) - 1)]
        fns = {k: functools.partial(self.distill_step, members[:k]) for k in sizes}
        # the teacher's forward timed in the same rounds: the floor compares it with the solo step side by side
        t = self.rounds({**fns, "teacher": self.teacher_forward}, max_rounds=max(3, self.args.rounds // 2))
        for k in sizes:
            rel = t[k] / k / t[1]
            self.row(
                "cohort",
                f"{k} student(s): ms per step | per-student cost / solo",
                f"{t[k] * 1e3:.2f} ms | {rel:.3f}",
                f"cohort{k}_per_student",
                rel,
            )
        floor = (t["teacher"] / max(sizes) + (t[1] - t["teacher"])) / t[1]
        self.row(
            "cohort",
            f"expected at {max(sizes)}: teacher / {max(sizes)} + solo student part, / solo",
            f"{floor:.3f}",
            "cohort_floor",
            floor,
        )
        del members

    def section_compile(self):
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/kdgrid-inductor")
        fwd = torch.compile(functools.partial(forward_taps, self.teacher, blocks=self.t_blocks))
        compiled = self.student()
        compiled.net = torch.compile(compiled.net)
        t0 = time.perf_counter()
        self.timed(lambda: self.teacher_forward(fwd))
        self.row(
            "compile",
            "compile time: teacher forward",
            f"{time.perf_counter() - t0:.1f} s",
            "compile_teacher_s",
            time.perf_counter() - t0,
        )
        t0 = time.perf_counter()
        self.timed(lambda: self.distill_step([compiled], fwd))
        self.row(
            "compile",
            "compile time: student (fwd + bwd)",
            f"{time.perf_counter() - t0:.1f} s",
            "compile_student_s",
            time.perf_counter() - t0,
        )
        t = self.rounds(
            {
                "teacher": self.teacher_forward,
                "teacher_c": lambda: self.teacher_forward(fwd),
                "distill": lambda: self.distill_step([self.solo]),
                "distill_tc": lambda: self.distill_step([self.solo], fwd),
                "distill_c": lambda: self.distill_step([compiled], fwd),
            }
        )
        self.row(
            "compile",
            "teacher forward: eager | compiled",
            f"{t['teacher'] * 1e3:.2f} | {t['teacher_c'] * 1e3:.2f} ms",
            "teacher_compiled_ms",
            t["teacher_c"] * 1e3,
        )
        self.row(
            "compile",
            "distill step: eager | compiled teacher | both compiled",
            f"{t['distill'] * 1e3:.2f} | {t['distill_tc'] * 1e3:.2f} | {t['distill_c'] * 1e3:.2f} ms",
            "distill_compiled_ms",
            t["distill_c"] * 1e3,
        )
        self.row(
            "compile",
            "speed-up of the step, both compiled",
            f"{t['distill'] / t['distill_c']:.2f}x",
            "compile_speedup",
            t["distill"] / t["distill_c"],
        )

    def section_loss(self):
        n, p, c_s, c_t = self.cfg["loss_shape"]
        m = self.row_spec.distillation.manifold
        g = torch.Generator().manual_seed(1)
        f_s = [torch.randn(n, p, c_s, generator=g).to(self.dev).requires_grad_() for _ in range(8)]
        f_t = [torch.randn(n, p, c_t, generator=g).to(self.dev) for _ in range(8)]
        gen = torch.Generator(device=self.dev).manual_seed(0)
        weights = {"ci": 1.0, "cp": m.alpha, "rs": m.beta}

        def terms(pairs):
            return lambda: manifold_loss(
                f_s[:pairs],
                f_t[:pairs],
                weights=weights,
                k=m.k,
                reduction=SPEC_REDUCTION[m.reduction],
                layer_reduce="sum",
                generator=gen,
            )["total"].backward()

        def exact(pairs):
            return lambda: manifold_loss(f_s[:pairs], f_t[:pairs], terms=(), k=m.k, exact_weight=1.0, generator=gen)[
                "total"
            ].backward()

        t = self.rounds(
            {"terms1": terms(1), "exact1": exact(1), "terms8": terms(8), "exact8": exact(8)},
            max_rounds=max(3, self.args.rounds // 2),
        )
        shape = f"n {n}, p {p}, c_S {c_s}, c_T {c_t}, fwd+bwd"
        for pairs in (1, 8):
            te, tt = t[f"exact{pairs}"], t[f"terms{pairs}"]
            self.row(
                "loss",
                f"{pairs} pair(s), {shape}: exact | terms",
                f"{te * 1e3:.2f} | {tt * 1e3:.2f} ms ({te / tt:.2f}x)",
                f"exact_over_terms_{pairs}",
                te / tt,
            )

    def run(self):
        self.header()
        self.build()
        sections = [
            ("peak", self.section_peak),
            ("step", self.section_step),
            ("cohort", self.section_cohort),
            ("loss", self.section_loss),
        ]
        if self.args.compile:  # last: the longest, and what came before is printed already if it runs out
            sections.append(("compile", self.section_compile))
        t_all = time.perf_counter()
        for name, fn in sections:
            t0 = time.perf_counter()
            fn()
            self.data[f"section_{name}_s"] = time.perf_counter() - t0
        self.row(
            "total",
            "wall time of the benchmark",
            f"{time.perf_counter() - t_all:.1f} s",
            "wall_s",
            time.perf_counter() - t_all,
        )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny analogs and shapes (seconds)")
    ap.add_argument("--cpu-tiny", action="store_true", help="--device cpu --tiny")
    ap.add_argument("--compile", action="store_true", help="add the torch.compile section (minutes on a GPU)")
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds per section at most")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--section-s", type=float, default=40.0, help="time box of each timed section, seconds")
    ap.add_argument("--cohorts", default="1,2,4,8")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    if args.cpu_tiny:
        args.device, args.tiny = "cpu", True
    if args.tiny:  # a smoke run: few rounds
        args.rounds, args.warmup, args.section_s = min(args.rounds, 3), min(args.warmup, 1), min(args.section_s, 5.0)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if not args.cohorts.startswith("1,") and args.cohorts != "1":
        ap.error("--cohorts must start with 1 (the solo step the others are compared with)")
    bench = Bench(args)
    bench.run()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(bench.data, f, indent=1)
    return bench.data


if __name__ == "__main__":
    main()
