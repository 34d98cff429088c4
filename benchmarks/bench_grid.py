"""The grid's wall time and CPU-seconds per stage, and what cohorts and deduplication save.

    python -m benchmarks.bench_grid [--scale mini] [--tracking-uri URI]           # read a grid already run
    python -m benchmarks.bench_grid --run [--scale mini] [--seeds 1] [--workers 2]  # run it twice and compare
    python -m benchmarks.bench_grid --schedules --cut [--workers 2]   # the scheduler: before / after

Reading (the default) takes a store that `kdgrid reproduce` filled and prints, per stage (teachers,
students): the runs, the stage's wall time (first start to last end, from MLflow) and its CPU-seconds
(what the engine logged: `cost.setup_cpu_s` + `cost.cpu_s` per epoch, a cohort's process time split among
the runs that shared it; process start-up and imports are not counted).

`--run` trains the grid twice in fresh stores, side by side in one call: as kdgrid does it (deduplicated
rows, cohorts sharing a teacher forward) and with every run in a process of its own (`--no-cohorts`).
The ratio it prints compares the first with the same rows trained independently: each run's solo
CPU-seconds counted once per table row that uses it (without deduplication a shared row is trained
again), teachers once. Goal (issue 7): <= 0.5.

`--schedules` trains the grid twice in fresh stores, one after the other in one call: with the earlier
schedule (`--schedule order`: items in plan order, cohorts cut by run count) and with the cost-aware one
(`--schedule cost`, the default), and prints for each the wall time against the CPU-seconds divided by
the workers: the command's wall time (start-up, planning and the report included) and the training span
(first run start to last run end in MLflow). 1.0 is a machine never idle. Goal (issue 18): <= 1.05.
Both stores start empty; the cost schedule prices its runs with the rates fitted to what the first grid
logged (`--cost-store`: earlier runs of the same models), or with its default rates (`--uncalibrated`),
as on a fresh clone.
`--cut` cuts the schedule so both fit in minutes: students 2 epochs, teachers 1 epoch on 5,000 images.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def stage_costs(uri: str, scale: str) -> dict[str, dict]:
    """{"teacher"|"student": {runs, cpu_s, wall_s, start, end}} and per-hash CPU-seconds, from MLflow."""
    from trainer import tracking

    c = tracking.client(uri)
    runs = tracking.runs_by_hash(c, scale)
    stages: dict[str, dict] = {}
    per_run: dict[str, float] = {}
    for h, run in runs.items():
        if run.info.status != "FINISHED":
            continue
        role = run.data.tags.get(tracking.ROLE, "student")
        cpu = sum(
            m.value
            for key in ("cost.setup_cpu_s", "cost.cpu_s")
            for m in tracking.retry(c.get_metric_history, run.info.run_id, key)
        )
        per_run[h] = cpu
        st = stages.setdefault(role, {"runs": 0, "cpu_s": 0.0, "unmetered": 0, "start": float("inf"), "end": 0.0})
        st["runs"] += 1
        st["cpu_s"] += cpu
        st["unmetered"] += cpu == 0.0  # trained by a kdgrid that did not log cost.* yet
        st["start"] = min(st["start"], run.info.start_time / 1000)
        st["end"] = max(st["end"], (run.info.end_time or run.info.start_time) / 1000)
    for st in stages.values():
        st["wall_s"] = st["end"] - st["start"]
    return {"stages": stages, "per_run": per_run}


def print_stages(title: str, costs: dict) -> None:
    stages = costs["stages"]
    if not stages:
        print(f"{title}: no finished runs")
        return
    start = min(s["start"] for s in stages.values())
    end = max(s["end"] for s in stages.values())
    print(f"{title}")
    print(f"  {'stage':<10} {'runs':>5} {'wall':>10} {'CPU-s':>10}")
    for role in ("teacher", "student"):
        if role in stages:
            s = stages[role]
            note = f"   ({s['unmetered']} run(s) without cost metrics)" if s["unmetered"] else ""
            print(f"  {role + 's':<10} {s['runs']:>5} {_mmss(s['wall_s']):>10} {s['cpu_s']:>10.0f}{note}")
    total_cpu = sum(s["cpu_s"] for s in stages.values())
    print(f"  {'grid':<10} {sum(s['runs'] for s in stages.values()):>5} {_mmss(end - start):>10} {total_cpu:>10.0f}")
    print("  wall: first start to last end of the stage's runs (MLflow); CPU-s: the engine's cost.* metrics")


def _mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _reproduce(scale: str, seeds: int, workers: int, folder: Path, extra: list[str]) -> float:
    cmd = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "reproduce",
        "--scale",
        scale,
        "--seeds",
        str(seeds),
        "--workers",
        str(workers),
        "--workdir",
        str(folder / "runs"),
        "--tracking-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--out",
        str(folder / "reports"),
        *extra,
    ]
    t0 = time.perf_counter()
    with open(folder / "reproduce.log", "w") as log:
        subprocess.run(
            cmd,
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
    return time.perf_counter() - t0


CUT = ["student.recipe.epochs=2"] + [
    f"teachers.{t}.{k}"
    for t in ("regnety_160", "cait_xxs24_224", "cait_s24_224")
    for k in ("recipe.epochs=1", "data.train_subset=5000")
]


def span(costs: dict) -> float:
    stages = costs["stages"].values()
    return max(s["end"] for s in stages) - min(s["start"] for s in stages) if stages else 0.0


def item_times(logs: Path) -> tuple[float, float]:
    """(worker-seconds inside items, first item start to last item end) from the item logs: each log's
    '=== <time> item X on ...' line to its '=== <time> item X done' line (1 s resolution)."""
    import datetime as dt
    import re

    busy, starts, ends = 0.0, [], []
    for log in logs.glob("*.log"):
        if log.name.startswith(("worker-", "launch-")):
            continue
        start = None
        for line in log.read_text(errors="replace").splitlines():
            m = re.match(r"=== (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) item \S+ (done:)?", line)
            if not m:
                continue
            t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
            if m.group(2) and start is not None:
                busy += t - start
                ends.append(t)
                start = None
            elif not m.group(2):
                start = t
                starts.append(t)
    return busy, (max(ends) - min(starts) if ends else 0.0)


def compare_schedules(args, extra: list[str], base: Path) -> int:
    """--schedules: the grid under `--schedule order` (before) and `--schedule cost` (after)."""
    rows = []
    for mode in ("order", "cost"):
        folder = base / f"schedule-{mode}"
        folder.mkdir(parents=True, exist_ok=True)
        flags = ["--schedule", mode]
        if mode == "cost" and not args.uncalibrated:
            flags += ["--cost-store", f"sqlite:///{base / 'schedule-order' / 'mlflow.db'}"]
        wall = _reproduce(args.scale, args.seeds, args.workers, folder, extra + flags)
        costs = stage_costs(f"sqlite:///{folder / 'mlflow.db'}", args.scale)
        print_stages(
            f"--schedule {mode}: {args.scale} grid, {args.seeds} seed(s), {args.workers} worker(s), "
            f"command wall {_mmss(wall)} (log {folder / 'reproduce.log'})",
            costs,
        )
        cpu = sum(s["cpu_s"] for s in costs["stages"].values())
        rows.append((mode, wall, span(costs), cpu, *item_times(folder / "runs" / "logs")))
    w = args.workers
    print(
        f"\n  {'schedule':<10} {'command wall':>12} {'span':>8} {'CPU-s':>7} {'items':>7} {'busy s':>7}   "
        f"{'wall/(CPU/w)':>12} {'span/(CPU/w)':>12} {'items/(busy/w)':>14}"
    )
    for mode, wall, sp, cpu, busy, items in rows:
        print(
            f"  {mode:<10} {_mmss(wall):>12} {_mmss(sp):>8} {cpu:>7.0f} {_mmss(items):>7} {busy:>7.0f}   "
            f"{wall / (cpu / w):>12.3f} {sp / (cpu / w):>12.3f} {items / (busy / w):>14.3f}"
        )
    (_, _, sp_plan, cpu_plan, *_), (_, _, sp_cost, cpu_cost, *_) = rows
    ratio = sp_cost / (cpu_cost / w)
    print(
        f"  training span / (CPU-s / workers) with the cost schedule: {ratio:.3f}   goal <= 1.05   "
        f"{'PASS' if ratio <= 1.05 else 'MISS'}   (plan order: {sp_plan / (cpu_plan / w):.3f})"
    )
    print(
        "  span: first run start to last run end (MLflow); CPU-s: the engine's cost.* (process time; start-up "
        "and imports not counted);\n  items: first item start to last item end, busy s: worker-seconds inside "
        "items (item logs). On a loaded machine wall time grows and CPU time\n  does not: the CPU ratios are "
        "then upper bounds, and items/(busy/w), the workers' idle share alone, is the comparison load leaves fair"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="mini")
    ap.add_argument("--tracking-uri", default=None, help="a store to read (default: ./kdgrid.db)")
    ap.add_argument("--run", action="store_true", help="train the grid twice (cohorts, then solo) and compare")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dir", default=None, help="--run: where to keep both grids (default: a temp folder)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="passed to kdgrid reproduce")
    ap.add_argument("--quick", action="store_true", help="--run on a cut-down smoke grid (for tests)")
    ap.add_argument(
        "--schedules",
        action="store_true",
        help="train the grid twice, --schedule order then cost, and compare wall with CPU-s / workers",
    )
    ap.add_argument(
        "--uncalibrated",
        action="store_true",
        help="--schedules: the cost schedule on its default rates, not on the first grid's cost.*",
    )
    ap.add_argument("--cut", action="store_true", help="students 2 epochs, teachers 1 epoch on 5,000 images")
    ap.add_argument("--tables", default=None, help="passed to kdgrid reproduce (default: all)")
    args = ap.parse_args(argv)
    from trainer import tracking

    if not args.run and not args.quick and not args.schedules:
        uri = args.tracking_uri or tracking.default_uri()
        print_stages(f"{args.scale} grid in {uri}", stage_costs(uri, args.scale))
        return 0

    tables, overrides = args.tables, (CUT if args.cut else []) + list(args.overrides)  # --set wins
    if args.quick:
        args.scale, tables = "smoke", "3,6"
        overrides += ["data.train_subset=256", "data.val_subset=128"]
    extra = [x for o in overrides for x in ("--set", o)] + (["--tables", tables] if tables else [])
    base = Path(args.dir or tempfile.mkdtemp(prefix="kdgrid-bench-grid-"))
    if args.schedules:
        return compare_schedules(args, extra, base)
    results = {}
    for mode, flags in (("cohorts", []), ("solo", ["--no-cohorts"])):
        folder = base / mode
        folder.mkdir(parents=True, exist_ok=True)
        wall = _reproduce(args.scale, args.seeds, args.workers, folder, extra + flags)
        results[mode] = (wall, stage_costs(f"sqlite:///{folder / 'mlflow.db'}", args.scale))
        print_stages(
            f"{mode}: {args.scale} grid, {args.seeds} seed(s), {args.workers} worker(s), command wall {_mmss(wall)}",
            results[mode][1],
        )

    from orchestrator.plan import make_plan

    plan = make_plan(args.scale, tables=tables, seeds=args.seeds, overrides=overrides)
    solo = results["solo"][1]["per_run"]
    independent = sum(solo[r.hash] * (len(r.uses) if r.role == "student" else 1) for r in plan.runs)
    kdgrid = sum(results["cohorts"][1]["per_run"].values())
    rows = sum(len(r.uses) for r in plan.runs if r.role == "student")
    ratio = kdgrid / independent
    print(
        f"\n{plan.rows_before_dedup} rows before deduplication -> {len(plan.runs)} runs; "
        f"{rows} student rows trained independently would cost {independent:.0f} CPU-s"
    )
    print(
        f"  CPU-s with cohorts and deduplication / independently: {kdgrid:.0f} / {independent:.0f} = "
        f"{ratio:.3f}   goal <= 0.5   {'PASS' if ratio <= 0.5 else 'MISS'}"
    )
    print(f"  wall: cohorts {_mmss(results['cohorts'][0])}, solo runs {_mmss(results['solo'][0])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
