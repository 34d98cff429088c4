"""Seed noise at its source, measured on a trained store: for each comparison the claims make, the
correlation of the two rows' final top-1 at equal seeds (common random numbers: a seed fixes initialisation,
data order and augmentation across rows), and the seed spread of their difference split into evaluation
noise (the finite evaluation set) and training noise (orchestrator/report/noise.py).

    python -m benchmarks.bench_noise --tracking-uri sqlite:////path/mlflow.db --seeds 4 [--tables 2,3] \
        [--set data.val_subset=null] [--subset 5000]

It reads each run's saved per-image predictions (`predictions/predictions.json`). `--subset N` also splits the
noise on the N-image evaluation set the scale would draw from the same images (the mini scale's 5,000 of
Fashion-MNIST's 10,000 test images), so one store shows what a larger evaluation set buys.
"""

from __future__ import annotations

import argparse
import math
import statistics

from orchestrator.report import noise

HEAD_KEY = {None: "top1", "avg": "top1", "cls": "cls", "dist": "dist"}


def _row_correct(row, read) -> dict[int, list[bool]]:
    out = {}
    for seed, run in zip(row.seeds, row.runs):
        if run.finished and run.run_id:
            preds = read(run.run_id, "predictions.json")
            if preds is not None:
                out[seed] = noise.correct(preds, HEAD_KEY.get(row.head, "top1"))
    return out


def _subset_images(n_all: int, size: int, seed: int) -> list[int]:
    """The images the scale's `val_subset: size` draws (trainer/data.py's draw, the same generator)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_all, generator=g)[:size].sort().values.tolist()


def measure(report, read, subset: int | None = None, subset_seed: int = 1) -> list[dict]:
    """One record per distinct comparison of the report's claims (rows compared once, even when several
    claims share them)."""
    rows = {(t.table, r.index): r for t in [*report.tables, *([report.fig4] if report.fig4 else [])] for r in t.rows}
    cache: dict[tuple, dict[int, list[bool]]] = {}
    out, seen = [], set()
    for claim in report.claims:
        for c in claim.comparisons:
            if len(c.rows) != 2 or c.rows in seen or not all(r in rows for r in c.rows):
                continue
            seen.add(c.rows)
            ca, cb = (cache.setdefault(r, _row_correct(rows[r], read)) for r in c.rows)
            full = noise.split(ca, cb)
            if full is None:
                continue
            rec = {"claim": claim.id, "a": c.a, "b": c.b, "paper": c.paper_diff, "full": full}
            if subset and subset < full.images:
                rec["subset"] = noise.split(ca, cb, _subset_images(full.images, subset, subset_seed))
            out.append(rec)
    return out


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table(records: list[dict]) -> list[str]:
    head = (
        "| claim | comparison | paper | diff | r (equal seeds) | sd A / sd B | sd diff | eval sd | train sd "
        "| eval share | SE paired / Welch | disagree |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for rec in records:
        for label in ("full", "subset"):
            s = rec.get(label)
            if s is None:
                continue
            share = s.eval_share
            lines.append(
                f"| {rec['claim']} | {rec['a']} > {rec['b']} ({s.images} images) | {_fmt(rec['paper'])} "
                f"| {s.diff:+.2f} | {_fmt(s.corr)} | {s.sd_a:.2f} / {s.sd_b:.2f} | {s.sd_diff:.2f} | {s.sd_eval:.2f} "
                f"| {s.sd_train:.2f} | {_fmt(share)} | {s.se_paired / s.se_welch:.2f} | {100 * s.disagree:.1f}% |"
            )
    return lines


def summary(records: list[dict], label: str = "full") -> list[str]:
    splits = [r[label] for r in records if r.get(label) is not None]
    if not splits:
        return []
    corr = [s.corr for s in splits if s.corr is not None]
    shares = [s.eval_share for s in splits if s.eval_share is not None]
    ratio = [s.se_paired / s.se_welch for s in splits if s.se_welch > 0]
    n = splits[0].images
    return [
        f"{label} ({n} images, {len(splits)} comparisons): median r {statistics.median(corr):.2f} "
        f"(range {min(corr):.2f} to {max(corr):.2f}); median eval share of the difference's seed variance "
        f"{statistics.median(shares):.2f}; median SE paired / Welch {statistics.median(ratio):.2f}"
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_noise", description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--scale", default="mini")
    p.add_argument("--tables", default="all")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--recipe", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--subset", type=int, default=None, help="also split the noise on this many of the images")
    args = p.parse_args(argv)

    from orchestrator.grid import load_recipes
    from orchestrator.plan import make_plan
    from orchestrator.report.agreement import _reader
    from orchestrator.report.build import build_report

    book = load_recipes()
    recipe = args.recipe or book.canonical(book.default)
    plan = make_plan(args.scale, args.tables, args.seeds, recipe, list(args.overrides))
    report = build_report(plan, args.tracking_uri, tuple(args.overrides), test="paired")
    records = measure(report, _reader(args.tracking_uri), args.subset)
    print("\n".join(table(records)))
    print()
    for label in ("full", "subset"):
        for line in summary(records, label):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
