"""The recipes on the command line: the default comes from experiments/recipes.yaml, `paper` still means
paper-sum, `kdgrid plan` shows what a recipe sets, and `kdgrid report --recipe all` sets the recipes side
by side with the test that decides the claims named. No training: plans and an empty store."""

from __future__ import annotations

import pytest

from orchestrator.cli import build_parser
from orchestrator.grid import load_recipes
from tests.conftest import kdgrid


def test_reproduce_with_no_arguments_plans_the_default_recipe(tmp_path):
    """`kdgrid reproduce` and `kdgrid plan` share their grid options; with none given, `plan` shows what
    `reproduce` would train: the mini grid under recipes.yaml's default."""
    grid = ("scale", "tables", "seeds", "recipe", "overrides")
    repro, plan = build_parser().parse_args(["reproduce"]), build_parser().parse_args(["plan"])
    assert {k: getattr(repro, k) for k in grid} == {k: getattr(plan, k) for k in grid}
    assert repro.recipe is None and not repro.resolve  # filled from recipes.yaml by main()
    book = load_recipes()
    out = kdgrid("plan", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"scale mini · recipe {book.default} · tables 2,3,4,5,6,7,fig4" in out.stdout
    assert "layers=sum" in out.stdout and "reduction=mean" in out.stdout  # paper-mean's settings


@pytest.mark.slow
def test_the_old_recipe_name_plans_the_same_runs(tmp_path):
    runs = {}
    for name in ("paper", "paper-sum"):
        out = kdgrid(
            "plan",
            "--scale",
            "smoke",
            "--tables",
            "fig4",
            "--recipe",
            name,
            "--dump",
            str(tmp_path / name),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'none.db'}",
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr
        assert "recipe paper-sum" in out.stdout
        runs[name] = sorted(p.name for p in (tmp_path / name).glob("*.yaml"))
    assert runs["paper"] == runs["paper-sum"] and len(runs["paper"]) == 5  # plan.yaml, teacher, 3 students
    out = kdgrid("plan", "--scale", "smoke", "--recipe", "nope", cwd=tmp_path)
    assert out.returncode == 2 and "no recipe 'nope'" in out.stderr and "paper (= paper-sum)" in out.stderr


@pytest.mark.slow
def test_report_sets_the_recipes_side_by_side_and_names_the_test(tmp_path):
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    out = kdgrid(
        "report", "--scale", "smoke", "--tables", "6,fig4", "--recipe", "all", "--tracking-uri", uri, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    md = out.stdout
    assert "## Claims by recipe" in md and "| claim | `paper-sum` | `paper-mean` | `released` |" in md
    for name in ("paper-sum", "paper-mean", "released"):
        assert f"## Recipe `{name}`" in md
    assert "Welch's t-test" in md and "95%" in md
    assert "| F4 |" in md and "| T6-best |" in md
    out = kdgrid(
        "report",
        "--scale",
        "smoke",
        "--tables",
        "fig4",
        "--recipe",
        "paper-mean,released",
        "--test",
        "paired",
        "--level",
        "0.9",
        "--tracking-uri",
        uri,
        "--out",
        str(tmp_path / "rep"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "paired t-test" in md and "90%" in md and "`paper-sum`" not in md
    out = kdgrid(
        "report", "--scale", "smoke", "--recipe", "all", "--format", "html", "--tracking-uri", uri, cwd=tmp_path
    )
    assert out.returncode == 2 and "Markdown only" in out.stderr


def test_tables_by_recipe_line_up_rows_and_mark_the_shared_runs():
    """Table 2 under two recipes, with made-up results keyed by content hash: a hard row is the same runs
    under both (same numbers, "same runs"), a manifold row is trained per recipe (its own numbers), and a
    row with no finished seed says so."""
    from collections import Counter

    from orchestrator.plan import make_plan
    from orchestrator.report.build import Report
    from orchestrator.report.collect import RunResult
    from orchestrator.report.recipes import rows_by_recipe
    from orchestrator.report.tables import build_tables

    reports = {}
    for k, name in enumerate(("paper-mean", "released")):
        plan = make_plan("smoke", "2", 2, recipe=name)
        manifold = {r.hash for r in plan.runs if r.spec.distillation.manifold is not None}

        def result(h, manifold=manifold, k=k):
            if h.startswith(("0", "1", "2", "3")) and h not in manifold:
                return RunResult(hash=h)  # left unfinished, whatever the recipe
            v = 70.0 + int(h[:4], 16) % 97 / 10 + (5.0 * k if h in manifold else 0.0)
            return RunResult(hash=h, status="finished", run_id=h.ljust(32, "0"), last_top1=v, best_top1=v)

        reports[name] = Report(
            scale="smoke",
            recipe=name,
            seeds=2,
            uri="sqlite://",
            tables=build_tables(plan, result),
            fig4=None,
            curves={},
            claims=[],
            counts=Counter(),
            command="",
            scale_note="",
            comparable=False,
        )
    lines = rows_by_recipe(reports)
    assert "| row | `paper-mean` | `released` | paper | runs |" in lines
    body = [line for line in lines if line.startswith("| ") and "row |" not in line]
    assert len(body) == len(reports["paper-mean"].tables[0].rows) == 10
    for line, a, b in zip(body, reports["paper-mean"].tables[0].rows, reports["released"].tables[0].rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[-2] == f"{a.paper_acc1:.2f}"
        if a.cells["method"].lower().startswith("hard"):
            assert cells[-1] == "same runs" and cells[1] == cells[2] and a.run_ids == b.run_ids
        else:
            assert cells[-1] == "per recipe" and a.run_ids != b.run_ids
        for cell, row in zip(cells[1:3], (a, b)):
            assert cell == (row.last.fmt() if row.last else "missing") + ("" if row.complete or not row.last else " *")
    assert any(c == "missing" or c.endswith(" *") for line in body for c in line.split(" | "))  # an unfinished row


def test_shared_label_names_the_recipes_that_read_the_same_runs():
    from types import SimpleNamespace

    from orchestrator.report.recipes import shared_label

    names = ["paper-sum", "paper-mean", "released"]
    row = lambda *ids: SimpleNamespace(run_ids=list(ids))  # noqa: E731
    assert shared_label(names, [row("a", "b")] * 3) == "same runs"
    assert shared_label(names, [row("a"), row("b"), row("c")]) == "per recipe"
    assert shared_label(names, [row("a"), row("a"), row("c")]) == "`paper-sum` = `paper-mean` same runs"
    assert shared_label(names, [row(), row(), row()]) == "per recipe"  # nothing planned has run: nothing to share
