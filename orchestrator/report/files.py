"""The report on disk: report.md / report.html / report.tex, with Figure 4 beside them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestrator.report import render
from orchestrator.report.build import Report, build_report

EXT = {"md": "md", "latex": "tex", "html": "html"}
FIGURE = "figure4.png"


def render_markdown(plan: Any, tracking_uri: str, overrides: Iterable[str] = ()) -> str:
    """The report as Markdown, for the terminal (Figure 4 summarised in words). `overrides`: the plan's
    `--set` options, repeated in the hint that trains what is missing."""
    return render.markdown(build_report(plan, tracking_uri, tuple(overrides)))


def write_reports(
    plan: Any,
    tracking_uri: str,
    out_dir: str | Path,
    formats: Iterable[str] = ("md", "html", "latex"),
    report: Report | None = None,
    overrides: Iterable[str] = (),
) -> dict[str, Path]:
    """Write report.md / report.html / report.tex (and figure4.png beside them) into `out_dir`.
    Returns {format: path}, with "figure" when there was a curve to draw."""
    report = report or build_report(plan, tracking_uri, tuple(overrides))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    png = report.figure_png()
    fig = None
    if png:
        (out / FIGURE).write_bytes(png)
        paths["figure"] = out / FIGURE
        fig = FIGURE
    for fmt in formats:
        if fmt not in EXT:
            raise ValueError(f"unknown report format {fmt!r}: md, latex or html")
        text = {
            "md": lambda: render.markdown(report, fig),
            "latex": lambda: render.latex(report, fig),
            "html": lambda: render.html(report),
        }[fmt]()
        path = out / f"report.{EXT[fmt]}"
        path.write_text(text, encoding="utf-8")
        paths[fmt] = path
    return paths
