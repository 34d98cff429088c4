"""`python -m benchmarks.bench_startup [--repeats N]`: what the start-up version check adds to a command.

Each sample is a fresh interpreter (the check runs once per process, so its one-time costs count), timing
inside it, interleaved: (a) kdgrid's check, `orchestrator.requirements.problems()`, which reads the
versions from `*.dist-info` folder names; (b) the same versions through `importlib.metadata.version`,
import included. `kdgrid --help` does neither: argparse exits before the check.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHECK = (
    "import time; t = time.perf_counter(); from orchestrator.requirements import problems; p = problems(); "
    "print(time.perf_counter() - t)"
)
_METADATA = (
    "import time; t = time.perf_counter(); from importlib.metadata import version; "
    "from orchestrator.requirements import STARTUP; v = [version(n) for n in STARTUP]; "
    "print(time.perf_counter() - t)"
)


def _sample(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_startup")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    check, metadata = [], []
    for _ in range(args.repeats):
        check.append(_sample(_CHECK))
        metadata.append(_sample(_METADATA))
    c, m = statistics.median(check), statistics.median(metadata)
    print(f"start-up check, {args.repeats} fresh interpreters each, interleaved (median):")
    print(f"  kdgrid's check (dist-info names)      {c * 1e3:8.2f} ms")
    print(f"  importlib.metadata.version, same set  {m * 1e3:8.2f} ms")
    print(f"  ratio importlib.metadata / check      {m / c:8.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
