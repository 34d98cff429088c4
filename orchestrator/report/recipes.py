"""The recipes side by side (`kdgrid report --recipe all`, or `--recipe paper-mean,released,paper-sum`).

One Markdown document: the claims of every recipe in one table (verdict, seeds used and needed), every
table's rows with one column per recipe (final top-1 over seeds, the paper's Acc1 beside it), then each
recipe's full report as a section. Runs shared by the recipes
(no distillation, hard distillation, the teachers) have the same content hash under each, so they are
the same MLflow runs: trained once, shown in every section.
"""

from __future__ import annotations

from orchestrator.report.build import Report
from orchestrator.report.claims import INCOMPLETE, row_label


def _cell(report: Report, claim_id: str) -> str:
    c = next((c for c in report.claims if c.id == claim_id), None)
    if c is None:
        return ""
    if c.verdict == INCOMPLETE:
        return c.verdict
    text = f"{c.verdict} ({c.seeds_used} seeds"
    need = c.seeds_needed
    if c.effect_excluded:
        text += "; smaller than the paper's"
    elif not c.resolved and need is not None:
        text += f"; needs {need}"
    elif not c.resolved and c.verdict.startswith("unresolved"):
        text += "; needs > limit"
    return text + ")"


def _fig4_rows(report: Report) -> list[str]:
    if report.fig4 is None:
        return []
    return [r.last.fmt() if r.last else r.short_status for r in report.fig4.rows]


def shared_label(names: list[str], rows: list) -> str:
    """'same runs' when every recipe reads the same MLflow runs, 'per recipe' when none shares, else which do."""
    groups: dict[tuple, list[str]] = {}
    for n, r in zip(names, rows):
        if r is not None and r.run_ids:
            groups.setdefault(tuple(r.run_ids), []).append(n)
    if len(groups) == 1 and len(next(iter(groups.values()))) == len(names):
        return "same runs"
    shared = [" = ".join(f"`{n}`" for n in g) for g in groups.values() if len(g) > 1]
    return "; ".join(shared) + " same runs" if shared else "per recipe"


def rows_by_recipe(reports: dict[str, Report]) -> list[str]:
    """Each table of the first report, one row per table row and one column per recipe.

    Tables and rows line up by position: every recipe plans the same table files; a row is named as the
    claims name it (`claims.row_label`: the printed cells that vary within its table). A cell is the row's
    final-epoch top-1 (mean ± std over its finished seeds; `*` when some seeds have not finished). A row
    whose runs are the same MLflow runs under every recipe (no distillation, hard distillation: the
    recipe does not enter their content hash) is marked "same runs", one shared by some recipes names them
    (Table 7's embedding rows: `paper-sum` = `paper-mean`, which differ in the manifold loss only), so a
    reader sees which differences are the recipe's and which rows are shared.
    """
    from orchestrator.report.render import acc_cell, md_escape

    names = list(reports)
    out = []
    for i, table in enumerate(reports[names[0]].tables):
        per = [reports[n].tables[i] if i < len(reports[n].tables) else None for n in names]
        out += [
            f"### {table.heading}",
            "",
            "| row | " + " | ".join(f"`{n}`" for n in names) + " | paper | runs |",
            "|---|" + "---|" * (len(names) + 2),
        ]
        for j, row in enumerate(table.rows):
            rows = [t.rows[j] if t is not None and j < len(t.rows) else None for t in per]
            cells = [acc_cell(r)[0] if r is not None else "" for r in rows]
            shared = shared_label(names, rows)
            paper = f"{row.paper_acc1:.2f}" if row.paper_acc1 is not None else ""
            out.append("| " + " | ".join(md_escape(c) for c in [row_label(table, row), *cells, paper, shared]) + " |")
        out.append("")
    return out


def markdown(reports: dict[str, Report], figures: dict[str, str] | None = None) -> str:
    from orchestrator.report import render

    names = list(reports)
    first = reports[names[0]]
    out = [
        f"# kdgrid report — scale `{first.scale}`, recipes {', '.join(f'`{n}`' for n in names)}, "
        f"{first.seeds} seed{'s' if first.seeds != 1 else ''}",
        "",
        f"> {first.scale_note}",
        "",
        f"MLflow store: `{first.uri}` · generated {first.generated}",
        "",
        "## Claims by recipe",
        "",
        render.claim_basis(first),
        "",
        "| claim | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    ids = list(dict.fromkeys(c.id for r in reports.values() for c in r.claims))
    for cid in ids:
        out.append(f"| {cid} | " + " | ".join(_cell(reports[n], cid) for n in names) + " |")
    out.append("")
    if first.fig4 is not None:
        curves = [r.curve or r.key for r in first.fig4.rows]
        out += [
            "## Figure 4's rows by recipe (final-epoch top-1, mean ± std over seeds)",
            "",
            "| recipe | " + " | ".join(curves) + " |",
            "|---|" + "---|" * len(curves),
        ]
        for n in names:
            out.append(f"| `{n}` | " + " | ".join(_fig4_rows(reports[n])) + " |")
        paper = [f"{r.paper_acc1:g}" if r.paper_acc1 is not None else "" for r in first.fig4.rows]
        out += ["| paper (ImageNet) | " + " | ".join(paper) + " |", ""]
    if first.tables:
        out += ["## Tables by recipe (final-epoch top-1, mean ± std over seeds)", ""] + rows_by_recipe(reports)
    for n in names:
        body = render.markdown(reports[n], (figures or {}).get(n))
        out += [f"## Recipe `{n}`", ""]
        for line in body.splitlines()[1:]:  # its title is this section's heading
            out.append("#" + line if line.startswith("#") else line)
        out.append("")
    return "\n".join(out).rstrip() + "\n"
