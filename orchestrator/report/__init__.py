"""The report: Tables 2-7 and Figure 4 rebuilt from MLflow beside the paper's numbers, and the claims decided.

    collect.py  MLflow -> one RunResult per planned run (one paged search; val.top1 histories for Figure 4)
    tables.py   pure: plan's table definitions + results -> table models (mean ± std over seeds, states)
    claims.py   pure: the paper's claims (Sections 4.2-4.3) checked against the table models; stats.py the tests
    decide.py   pure: which rows `--resolve` gives more seeds next, within the budget
    seeds.py    the rows MLflow holds more finished seeds of than planned (`--added-seeds`)
    figure.py   Figure 4's curves, drawn with matplotlib (Agg) to PNG
    build.py    the Report: tables, curves, claims, what is missing and the command that trains it
    render.py   Markdown, LaTeX, self-contained HTML; files.py writes them; export.py tables as CSV / JSON
    recipes.py  several recipes side by side

The report reads MLflow only: not the work directory, not checkpoints. The plan supplies the table
definitions (code and data in this repository) and the content hashes to look up.
"""

from __future__ import annotations

from orchestrator.report.build import Report, build_report
from orchestrator.report.files import render_markdown, write_reports

__all__ = ["Report", "build_report", "render_markdown", "write_reports"]
