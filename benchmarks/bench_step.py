"""A distillation step against its parts, at a grid scale (default mini), measured side by side.

    python -m benchmarks.bench_step [--scale mini] [--rounds 15] [--cohort 8] [--threads 1]

Takes the grid's CaiT-S24 -> DeiT-Tiny manifold run (Table 2's row, paper recipe) and times, interleaved
round by round so load drifts hit all alike (median of the rounds):

- teacher: one teacher forward with the feature taps, under inference mode;
- student: one plain student step (forward, cross-entropy, backward, AdamW) without taps or teacher;
- distill: one full distillation step as the engine takes it (teacher forward, student forward with
  taps, hard KD + the manifold terms over 8 block pairs, backward, AdamW, scheduler);
- cohort: one teacher forward feeding `--cohort` students' steps (the engine's lockstep).

Goal (issue 15, 1.15 in issue 7): distill / (teacher + student) <= 1.10 — the taps and the manifold loss
cost little next to the two passes; and a cohort student costs a fraction of a solo one (~0.46 at 8).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def _median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="mini")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cohort", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke scale, few rounds (for tests)")
    args = ap.parse_args(argv)
    if args.quick:
        args.scale, args.rounds, args.cohort = "smoke", 3, 2

    import tempfile

    import torch

    from orchestrator.plan import make_plan
    from trainer import data as data_mod
    from trainer import engine, models
    from trainer.distributed import DistEnv
    from trainer.precision import Precision
    from trainer.taps import forward_taps

    torch.set_num_threads(args.threads)
    plan = make_plan(args.scale, tables="2")
    run = next(r for r in plan.runs if any(u.key == "t2.r9" for u in r.uses))
    spec = run.spec
    env = DistEnv(device="cpu")
    fp32 = Precision("fp32", "cpu")
    train_data, _ = data_mod.build(spec.data, spec.recipe.batch_size)
    x, y = next(iter(train_data.epoch(spec.seed, 0)))
    steps = len(train_data)
    work = Path(tempfile.mkdtemp(prefix="kdgrid-bench-"))

    teacher = models.create(spec.teacher.name, **spec.teacher_kwargs()).eval().requires_grad_(False)
    members = [engine.build_member(spec, env, work, steps) for _ in range(args.cohort)]
    solo = members[0]
    t_blocks = tuple(sorted(set(solo.t_taps)))
    plain = models.create(spec.student.name, drop_path_rate=spec.student.drop_path, **spec.model_kwargs())
    plain.train()
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3)

    def teacher_forward():
        with torch.inference_mode():
            out, feats = forward_taps(teacher, x, t_blocks)
        return out.clone(), {b: f.clone() for b, f in zip(t_blocks, feats)}

    def student_step():
        out = plain(x)
        out = out[0] if isinstance(out, tuple) else out
        loss = torch.nn.functional.cross_entropy(out, y)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    def distill_step(ms, step):
        t_logits, t_feats = teacher_forward()
        for m in ms:
            engine.train_step(m, engine.Batch(x, y, t_logits, t_feats, key=step), step, fp32)

    timings = {"teacher": [], "student": [], "distill": [], "cohort": []}
    for r in range(args.rounds + 2):
        for name, fn in (
            ("teacher", teacher_forward),
            ("student", student_step),
            ("distill", lambda r=r: distill_step([solo], r)),
            ("cohort", lambda r=r: distill_step(members, r)),
        ):
            t0 = time.perf_counter()
            fn()
            if r >= 2:  # two warm-up rounds
                timings[name].append(time.perf_counter() - t0)
    t, s, d, c = (_median_ms(timings[k]) for k in ("teacher", "student", "distill", "cohort"))
    ratio = d / (t + s)
    per_student = (c - t) / args.cohort
    print(
        f"{args.scale} scale, {spec.teacher.name} -> {spec.student.name} "
        f"({spec.distillation.manifold.reduction} manifold over {len(solo.t_taps)} block pairs, "
        f"kd {spec.distillation.kd}), "
        f"batch {spec.recipe.batch_size}, {args.threads} thread(s), median of {args.rounds} interleaved rounds"
    )
    rows = [
        ("teacher forward (taps, inference mode)", f"{t:.1f} ms", "", ""),
        ("student forward-backward alone", f"{s:.1f} ms", "", ""),
        ("distillation step", f"{d:.1f} ms", "", ""),
        ("distill / (teacher + student)", f"{ratio:.3f}", "<= 1.10", "PASS" if ratio <= 1.10 else "MISS"),
        (f"cohort of {args.cohort}: one teacher forward + {args.cohort} student steps", f"{c:.1f} ms", "", ""),
        ("cohort cost per student / solo distillation step", f"{(c / args.cohort) / d:.3f}", "", ""),
        ("teacher share of a solo distillation step", f"{t / d:.0%}", "", ""),
        ("student step in a cohort (excl. teacher) / solo", f"{per_student / (d - t):.3f}", "", ""),
    ]
    w = max(len(r[0]) for r in rows)
    for name, value, goal, verdict in rows:
        print(f"  {name:<{w}}  {value:>10}  {goal:>8}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
