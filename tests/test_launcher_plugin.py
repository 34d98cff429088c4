"""A launcher is one file. This module is that file: it registers `inline` (every item in this very process,
one after another, in the order the scheduler starts them), and a smoke grid runs through it from the
command line's own entry point: the runs finish, every epoch's metrics reach MLflow, the report is written.
Nothing else in kdgrid names it: the CLI's `--launcher` choices, `execute` and the work items come from
the registry."""

from __future__ import annotations

import pytest

from orchestrator.launch import registry
from orchestrator.launch.dispatch import Dispatch
from orchestrator.launch.outcome import parse_all
from orchestrator.launch.registry import Launcher, register
from orchestrator.launch.view import RunView
from orchestrator.launch.worker import run_item


@register
class Inline(Launcher):
    """Every item in this process, one after another."""

    name = "inline"

    def launch(self, items, ctx, outcomes) -> None:
        view = RunView([r for it in items for r in it.runs], {}, ctx.console, title="inline")
        dispatch = Dispatch(items, ctx, outcomes, view, workers=1)  # blocked students, parts, outcomes
        with view:
            while started := dispatch.assign([0], {}):
                for _, part in started:
                    results = run_item(part.payload(), work=ctx.work, tracking_uri=ctx.tracking_uri, threads=1)
                    dispatch.ended(part, parse_all(results))
        dispatch.never_started()


def test_a_registered_launcher_is_a_choice_of_the_command_line():
    from orchestrator.cli import build_parser

    assert {"local", "ray", "slurm", "inline"} <= set(registry.names())
    args = build_parser().parse_args(["reproduce", "--launcher", "inline"])
    assert args.launcher == "inline" and isinstance(registry.get("inline"), Inline)
    with pytest.raises(ValueError, match="unknown launcher 'nope': one of .*inline"):
        registry.get("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register(type("Other", (Launcher,), {"name": "inline"}))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_smoke_grid_runs_through_a_launcher_defined_in_one_file(tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main
    from orchestrator.plan import make_plan
    from tests.test_launch_local import LESS_DATA, assert_all_finished, store

    uri, work = store(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDGRID_SYSTEM_METRICS_INTERVAL", "0")
    grid = ["--scale", "smoke", "--tables", "fig4", *LESS_DATA]
    code = main(
        ["reproduce", *grid, "--launcher", "inline", "--tracking-uri", uri, "--workdir", str(work), "--out", "reports"]
    )
    out = capsys.readouterr().out
    assert code == 0, out[-5000:]
    assert "(inline launcher, critical path first" in out
    assert_all_finished(uri, make_plan("smoke", "fig4", overrides=list(LESS_DATA[1::2])), out)
    assert (tmp_path / "reports" / "report.md").exists() and (work / "logs").is_dir()
