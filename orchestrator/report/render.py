"""Render a Report as Markdown (the terminal), LaTeX (a standalone document) or HTML (one self-contained
page: the tables, Figure 4 inlined as base64 PNG, the claims). Every format shows the same cells, built
once by `grid()`."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from orchestrator.report.build import Report
from orchestrator.report.claims import ClaimResult
from orchestrator.report.claims import basis as claims_basis
from orchestrator.report.figure import LABELS
from orchestrator.report.tables import RowModel, TableModel


def claim_basis(report: Report) -> str:
    return claims_basis(report.test, report.level, design=report.design)


@dataclass
class Grid:
    headers: list[str]
    rows: list[list[str]]
    classes: list[list[str]]  # per cell: "" (the paper's text), "num", "state" (no number: why) or "runs"
    notes: list[str]  # per-seed states of rows that are not complete
    sources: list[str]  # which reference the Acc1 and Δ columns use, where the teachers' numbers come from


def acc_cell(r: RowModel) -> tuple[str, str]:
    """The final- and best-epoch cells of a row: mean ± std, `*` while some seeds are unfinished, else its state."""
    if r.last is None:
        return r.short_status, ""
    mark = "" if r.complete else " *"
    return r.last.fmt() + mark, r.best.fmt() + mark if r.best else ""


TEACHER_HEADERS = ["Teacher Acc1 (paper)", "Teacher Acc1 (weights)", "Teacher Acc1 (measured)"]


def grid(t: TableModel) -> Grid:
    headers = [h for h, _ in t.columns]
    teacher_at = None
    if t.has_teacher_acc:
        fields = [f for _, f in t.columns]
        teacher_at = fields.index("teacher") + 1 if "teacher" in fields else 1
        headers[teacher_at:teacher_at] = TEACHER_HEADERS
    refs = ["Acc1 (reference)"] if t.has_reference else []
    delta = "Δ last − reference" if t.has_reference else "Δ last − paper"
    headers += ["Acc1 (paper)", *refs, "Acc1 last", "Acc1 best", delta, "rank grid / paper", "seeds", "runs"]
    tail = 7 + len(refs)  # the cells after the paper's own columns
    rows, classes, notes = [], [], []
    for i, r in enumerate(t.rows, 1):
        cells = [r.cells.get(f, "") for _, f in t.columns]
        if teacher_at is not None:
            grid_t = r.teacher_grid.fmt(1) if r.teacher_grid else (r.teacher_note or "missing")
            paper_t = f"{r.teacher_paper:.1f}" if r.teacher_paper is not None else ""
            weights_t = f"{r.teacher_expected:.2f}" if r.teacher_expected is not None else ""
            cells[teacher_at:teacher_at] = [paper_t, weights_t, grid_t]
        last, best = acc_cell(r)
        delta = f"{r.delta:+.2f}" if r.delta is not None else ""
        rank = f"{r.rank_grid} / {r.rank_paper}" if r.rank_grid is not None else ""
        paper = f"{r.paper_acc1:.2f}" if r.paper_acc1 is not None else ""
        reference = [f"{r.reference_acc1:.2f}" if r.reference_acc1 is not None else ""] if refs else []
        runs = ", ".join(r.run_ids)
        cells += [paper, *reference, last, best, delta, rank, f"{r.seeds_done}/{len(r.runs)}", runs]
        rows.append(cells)
        numeric = set(range(len(cells) - tail, len(cells) - 1))
        if teacher_at is not None:
            numeric |= {teacher_at, teacher_at + 1, teacher_at + 2}
        classes.append(
            [
                "runs"
                if j == len(cells) - 1
                else ""
                if j not in numeric or not c
                else "num"
                if c[:1].isdigit() or c[:1] in "+-"
                else "state"
                for j, c in enumerate(cells)
            ]
        )
        if r.last is not None and not r.complete:
            notes.append(f"* row {i}: mean over {r.seeds_done} of {len(r.runs)} seeds; " + "; ".join(r.notes))
        elif r.notes != r.short_notes:  # the reasons runs failed, which the cell leaves out
            notes.append(f"row {i}: " + "; ".join(r.notes))
    sources = [t.reference_line()]
    if teacher_at is not None:
        sources.append(
            "Teacher Acc1: (paper) as the paper prints it; (weights) the top-1 timm measured for the hub weights "
            f"loaded ({t.teacher_weights or 'not recorded'}); (measured) this grid's, on its own validation images."
        )
    return Grid(headers, rows, classes, notes, sources)


def curve_lines(report: Report) -> list[str]:
    """Figure 4 in words: each curve's seeds, its last epoch and value, or what its runs are doing."""
    if report.fig4 is None:
        return []
    out = []
    for row in report.fig4.rows:
        name = row.curve or row.key
        c = report.curves.get(name)
        label = LABELS.get(name, name)
        if c is not None and c.epochs:
            std = c.std[-1]
            val = f"{c.mean[-1]:.2f}" + (f" ± {std:.2f}" if std is not None else "")
            text = f"{label}: top-1 {val} at epoch {c.epochs[-1]} ({c.seeds} seed{'s' if c.seeds != 1 else ''})"
        else:
            text = f"{label}: {row.status}"
        if row.notes and c is not None and c.epochs:
            text += " — " + "; ".join(row.notes)
        if row.paper_acc1 is not None:
            text += f"; the paper's final: {row.paper_acc1:g}"
        if any(r.run_id for r in row.runs):
            text += f" [runs {', '.join(row.run_ids)}]"
        out.append(text)
    return out


def _claim_lines(c: ClaimResult) -> list[str]:
    lines = [cmp.describe() for cmp in c.comparisons]
    if c.comparisons:
        lines.append(c.seeds_line())
    if c.note:
        lines.append(c.note)
    return lines


# ---- Markdown ------------------------------------------------------------------------------------
def md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown(report: Report, figure_path: str | None = None) -> str:
    out = [
        f"# kdgrid report — scale `{report.scale}`, recipe `{report.recipe}`, "
        f"{report.seeds} seed{'s' if report.seeds != 1 else ''}",
        "",
    ]
    out += [f"> **{report.banner}.** {report.scale_note}", ""]
    if report.protocol_sources:
        out += [f"*Reference protocols and their sources.* {report.protocol_sources}", ""]
    out += [f"MLflow store: `{report.uri}` · generated {report.generated}", "", f"**{report.summary()}.**", ""]
    if report.error:
        out += [f"**The store could not be read:** {report.error}", ""]
    if not report.complete:
        out += ["To train what is missing (finished runs are skipped):", "", "```", report.command, "```", ""]
    for t in report.tables:
        g = grid(t)
        out += [f"## {t.heading}", ""]
        if t.caption:
            out += [f"*{t.caption}*", ""]
        out.append("| " + " | ".join(md_escape(h) for h in g.headers) + " |")
        out.append("|" + "|".join("---" for _ in g.headers) + "|")
        out += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in g.rows]
        out.append("")
        out += [n + "  " for n in g.notes + g.sources]
        out.append("")
    if report.fig4 is not None:
        out += [f"## {report.fig4.heading}", ""]
        if figure_path:
            out += [f"![Figure 4]({figure_path})", ""]
        out += [f"- {line}" for line in curve_lines(report)] + [""]
    if report.agreements:
        from orchestrator.report.agreement import markdown_lines

        out += ["## Agreement with the teacher (DeiT)", ""] + markdown_lines(report.agreements)
    if report.claims:
        out += ["## Claims", "", claim_basis(report), ""]
        for c in report.claims:
            out.append(f"- **{c.id}** ({_where(c)}) {c.text} — **{c.verdict}**")
            out += [f"    - {line}" for line in _claim_lines(c)]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _where(c: ClaimResult) -> str:
    return "Figure 4" if c.table == "fig4" else (f"Table {c.table}" if c.table.isdigit() else f"table {c.table}")


# ---- LaTeX ---------------------------------------------------------------------------------------
_TEX = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "α": r"$\alpha$",
    "β": r"$\beta$",
    "→": r"$\rightarrow$",
    "≈": r"$\approx$",
    "≥": r"$\geq$",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "−": "--",
    "–": "--",
    "—": "---",
    "*": r"$^{*}$",
    "'": "'",
    "<": r"$<$",
    ">": r"$>$",
}


def tex(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def tex_tt(s: str) -> str:
    """Monospaced, breakable after each '/' (store paths and commands are long)."""
    return r"\texttt{" + tex(s).replace("/", r"/\allowbreak{}") + "}"


def latex(report: Report, figure_path: str | None = None) -> str:
    out = [
        r"\documentclass[10pt]{article}",
        r"\usepackage[margin=1.5cm,landscape]{geometry}",
        r"\usepackage{booktabs}",
        r"\usepackage{graphicx}",
        r"\usepackage[T1]{fontenc}",
        r"\usepackage[utf8]{inputenc}",
        # a table wider than the page is scaled down to fit; narrower ones keep their size
        r"\newsavebox{\fitbox}",
        r"\newcommand{\fit}[1]{\sbox{\fitbox}{#1}\ifdim\wd\fitbox>\linewidth"
        r"\resizebox{\linewidth}{!}{\usebox{\fitbox}}\else\usebox{\fitbox}\fi}",
        r"\begin{document}",
        rf"\section*{{kdgrid report --- scale \texttt{{{tex(report.scale)}}}, recipe "
        rf"\texttt{{{tex(report.recipe)}}}, {report.seeds} seed{'s' if report.seeds != 1 else ''}}}",
        rf"\noindent\textbf{{{tex(report.banner)}.}} {tex(report.scale_note)}\par\medskip",
        rf"\noindent\emph{{Reference protocols and their sources.}} {tex(report.protocol_sources)}\par\medskip"
        if report.protocol_sources
        else "",
        rf"\noindent\raggedright MLflow store: {tex_tt(report.uri)}, generated {tex(report.generated)}. "
        f"{tex(report.summary())}.\\par",
    ]
    if report.error:
        out.append(rf"\noindent\textbf{{The store could not be read:}} {tex(report.error)}\par")
    if not report.complete:
        out.append(rf"\noindent To train what is missing: {tex_tt(report.command)}\par")
    for t in report.tables:
        g = grid(t)
        out += [
            r"\begin{table}[htbp]\centering\scriptsize\setlength{\tabcolsep}{3pt}",
            rf"{{\normalsize\textbf{{{tex(t.heading)}}}}}\\[2pt] \emph{{{tex(t.caption)}}}\par\medskip",
            r"\fit{\begin{tabular}{" + "l" * len(g.headers) + "}",
            r"\toprule",
            " & ".join(rf"\textbf{{{tex(h)}}}" for h in g.headers) + r" \\",
            r"\midrule",
        ]
        out += [" & ".join(tex(c) for c in row) + r" \\" for row in g.rows]
        out += [r"\bottomrule", r"\end{tabular}}"]
        if g.notes or g.sources:
            out += [r"\par\smallskip\raggedright " + r"\\ ".join(tex(n) for n in g.notes + g.sources)]
        out.append(r"\end{table}")
    if report.fig4 is not None:
        out.append(r"\begin{figure}[htbp]\centering")
        out.append(rf"{{\normalsize\textbf{{{tex(report.fig4.heading)}}}}}\par\medskip")
        if figure_path:
            out.append(rf"\includegraphics[width=0.6\linewidth]{{{figure_path}}}\par")
        out.append(
            r"\begin{minipage}{0.8\linewidth}\small\raggedright "
            + r"\\ ".join(tex(line) for line in curve_lines(report))
            + r"\end{minipage}"
        )
        out.append(r"\end{figure}")
    if report.claims:
        out += [r"\section*{Claims}", tex(claim_basis(report)), r"\begin{itemize}"]
        for c in report.claims:
            out.append(
                rf"\item \textbf{{{tex(c.id)}}} ({tex(_where(c))}) {tex(c.text)} --- \textbf{{{tex(c.verdict)}}}"
            )
            lines = _claim_lines(c)
            if lines:
                out += [r"\begin{itemize}"] + [rf"\item {tex(line)}" for line in lines] + [r"\end{itemize}"]
        out.append(r"\end{itemize}")
    out.append(r"\end{document}")
    return "\n".join(out) + "\n"


# ---- HTML ----------------------------------------------------------------------------------------
# A Jinja template: its line breaks are the page's, so long lines stay whole (the noqa at its end).
_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>kdgrid report — {{ r.scale }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1440px;
       padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.banner { padding: .6em .9em; border-radius: 6px; margin: .8em 0; }
.analog { background: #fff4e0; border: 1px solid #f0b04f; } .paper { background: #e8f5e9; border: 1px solid #7cb87f; }
.meta { color: #555; } code, pre { background: #f4f4f6; border-radius: 4px; padding: .1em .3em; }
pre { padding: .6em; overflow-x: auto; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e2e2e2; padding: .25em .6em; text-align: left; vertical-align: top; white-space: nowrap; }
th { background: #f6f6f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.state { color: #a15c00; font-style: italic; white-space: normal; min-width: 10em; } td.runs { font-family: monospace; font-size: 12px; color: #555; }
.caption { color: #555; font-style: italic; } .notes { color: #555; font-size: 12px; }
.claim { margin: .4em 0; } .verdict { font-weight: 600; }
.v-supported { color: #1b7f2a; } .v-not { color: #b3261e; } .v-open { color: #8a6d00; }
.claim ul { margin: .2em 0 .2em 1.2em; color: #444; font-size: 13px; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
</style></head>
<body>
<h1>kdgrid report — scale <code>{{ r.scale }}</code>, recipe <code>{{ r.recipe }}</code>, {{ r.seeds }} seed{{ 's' if r.seeds != 1 }}</h1>
<div class="banner {{ 'paper' if r.comparable else 'analog' }}"><strong>{{ r.banner }}.</strong> {{ r.scale_note }}</div>
{% if r.protocol_sources %}<p class="meta"><em>Reference protocols and their sources.</em> {{ r.protocol_sources }}</p>{% endif %}
<p class="meta">MLflow store: <code>{{ r.uri }}</code> · generated {{ r.generated }} · <strong>{{ r.summary() }}</strong></p>
{% if r.error %}<p class="banner analog"><strong>The store could not be read:</strong> {{ r.error }}</p>{% endif %}
{% if not r.complete %}<p>To train what is missing (finished runs are skipped):</p><pre>{{ r.command }}</pre>{% endif %}
{% for t, g in tables %}
<h2 id="table-{{ t.table }}">{{ t.heading }}</h2>
{% if t.caption %}<p class="caption">{{ t.caption }}</p>{% endif %}
<table>
<thead><tr>{% for h in g.headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row, cls in zip(g.rows, g.classes) %}<tr>{% for c, k in zip(row, cls) %}<td{% if k %} class="{{ k }}"{% endif %}>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% if g.notes or g.sources %}<div class="notes">{% for n in g.notes + g.sources %}{{ n }}<br>{% endfor %}</div>{% endif %}
{% endfor %}
{% if r.fig4 is not none %}
<h2 id="figure-4">{{ r.fig4.heading }}</h2>
{% if png %}<figure><img id="figure4" alt="Figure 4: top-1 per epoch" src="data:image/png;base64,{{ png }}"></figure>
{% else %}<p><em>No epoch of Figure 4's runs is in MLflow yet.</em></p>{% endif %}
<ul>{% for line in curves %}<li>{{ line }}</li>{% endfor %}</ul>
{% endif %}
{% for a in r.agreements %}
<h2 id="agreement-{{ loop.index }}">Agreement with the teacher (DeiT): {{ a.student }}</h2>
<p class="meta">Fraction of validation images whose top-1 differs, mean over seeds {{ a.per_seed | list | sort | join(", ") }}.</p>
<table><thead><tr><th></th>{% for n in a.names %}<th>{{ n }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in a.rows() %}<tr>{% for c in row %}<td{% if not loop.first %} class="num"{% endif %}>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% if a.notes %}<div class="notes">{% for n in a.notes %}{{ n }}<br>{% endfor %}</div>{% endif %}
{% endfor %}
{% if r.claims %}
<h2 id="claims">Claims</h2>
<p class="meta">{{ basis }}</p>
{% for c in r.claims %}<div class="claim"><strong>{{ c.id }}</strong> ({{ where(c) }}) {{ c.text }} —
<span class="verdict {{ 'v-supported' if c.supported else ('v-not' if c.verdict == 'contradicted' else 'v-open') }}">{{ c.verdict }}</span>
{% set lines = claim_lines(c) %}{% if lines %}<ul>{% for line in lines %}<li>{{ line }}</li>{% endfor %}</ul>{% endif %}</div>
{% endfor %}
{% endif %}
</body></html>
"""  # noqa: E501


def html(report: Report) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    png = report.figure_png()
    return env.from_string(_HTML).render(
        r=report,
        tables=[(t, grid(t)) for t in report.tables],
        curves=curve_lines(report),
        png=base64.b64encode(png).decode() if png else None,
        basis=claim_basis(report),
        where=_where,
        claim_lines=_claim_lines,
        zip=zip,
    )
