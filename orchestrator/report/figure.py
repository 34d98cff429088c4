"""Figure 4: top-1 per epoch for DeiT-Tiny without distillation, with hard and with manifold distillation,
from the MLflow history of `val.top1` (mean over seeds, with a ±1 std band where several seeds reached
an epoch). Drawn with matplotlib's Agg backend to PNG bytes."""

from __future__ import annotations

import io
import statistics

from orchestrator.report.claims import Curve
from orchestrator.report.tables import TableModel

LABELS = {
    "none": "DeiT-Tiny, no distillation",
    "hard": "DeiT-Tiny, hard distillation",
    "manifold": "DeiT-Tiny, manifold distillation (ours)",
}
COLORS = {"none": "#7f7f7f", "hard": "#1f77b4", "manifold": "#d62728"}


def build_curves(table: TableModel) -> dict[str, Curve]:
    """One curve per Figure 4 row, its seeds' histories aligned by epoch."""
    out = {}
    for row in table.rows:
        name = row.curve or row.key
        per_epoch: dict[int, list[float]] = {}
        seeds = 0
        for r in row.runs:
            if r.history:
                seeds += 1
                for epoch, value in r.history:
                    per_epoch.setdefault(epoch, []).append(value)
        epochs = sorted(per_epoch)
        out[name] = Curve(
            name=name,
            epochs=epochs,
            mean=[statistics.fmean(per_epoch[e]) for e in epochs],
            std=[statistics.stdev(per_epoch[e]) if len(per_epoch[e]) > 1 else None for e in epochs],
            seeds=seeds,
        )
    return out


def has_data(curves: dict[str, Curve]) -> bool:
    return any(c.epochs for c in curves.values())


def plot(
    curves: dict[str, Curve], title: str = "Figure 4", dpi: int = 110, paper_final: dict[str, float] | None = None
) -> bytes:
    """The figure as PNG bytes. `paper_final`: the paper's final top-1 per curve, drawn as dotted lines
    (only where the numbers are comparable: the paper's own scale)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: no global state, no display
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.0), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    for name in ("none", "hard", "manifold", *sorted(set(curves) - {"none", "hard", "manifold"})):
        c = curves.get(name)
        if c is None or not c.epochs:
            continue
        color = COLORS.get(name)
        label = f"{LABELS.get(name, name)} ({c.seeds} seed{'s' if c.seeds != 1 else ''})"
        ax.plot(c.epochs, c.mean, marker="o" if len(c.epochs) < 30 else None, ms=3, lw=1.6, color=color, label=label)
        band = [(e, m, s) for e, m, s in zip(c.epochs, c.mean, c.std) if s is not None]
        if band:
            ax.fill_between(
                [e for e, _, _ in band],
                [m - s for _, m, s in band],
                [m + s for _, m, s in band],
                color=color,
                alpha=0.18,
                lw=0,
            )
        if paper_final and name in paper_final:
            ax.axhline(paper_final[name], color=color, ls=":", lw=1, label=f"paper, final: {paper_final[name]:g}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
