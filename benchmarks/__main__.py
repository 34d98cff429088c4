"""`python -m benchmarks [--quick] [--no-naive]`: every benchmark, each printing ratios measured side by side.

- bench_loss: the exact manifold loss (Eq. 8) vs the naive (np x np) map and the three-term approximation
  (--no-naive: without the naive map);
- bench_step: a distillation step vs a teacher forward plus a student step, and a cohort's step;
- bench_gpu: the paper-shape step on a GPU (its tiny CPU mode where there is none);
- bench_input: DeiT's paper-scale input pipeline (JPEG decode + augmentation) per loader core, and the
  cores per GPU it needs;
- bench_grid: wall time and CPU-seconds per stage of the grid in ./kdgrid.db (run `make reproduce`
  first), or, with `python -m benchmarks.bench_grid --run`, cohorts + dedup vs independent runs;
- bench_startup: the start-up version check vs the same versions through importlib.metadata;
- bench_tracking: 8, 32 and 64 processes writing to SQLite and through `mlflow server` on SQLite and on
  PostgreSQL: lost metrics, errors, time.
"""

from __future__ import annotations

import sys

from benchmarks import bench_gpu, bench_grid, bench_input, bench_loss, bench_startup, bench_step, bench_tracking


def main(argv: list[str]) -> int:
    import torch

    quick = ["--quick"] if "--quick" in argv else []
    tracking = ["--writers", "8"] if quick else []
    no_naive = ["--no-naive"] if "--no-naive" in argv else []
    gpu = [] if torch.cuda.is_available() and not quick else ["--cpu-tiny"]
    for name, bench, args in (
        ("loss", bench_loss, quick + no_naive),
        ("step", bench_step, quick),
        ("gpu", bench_gpu, gpu),
        ("input", bench_input, quick),
        ("grid", bench_grid, []),
        ("startup", bench_startup, []),
        ("tracking", bench_tracking, tracking),
    ):
        print(f"\n===== benchmarks.bench_{name} {' '.join(args)}", flush=True)
        bench.main(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
