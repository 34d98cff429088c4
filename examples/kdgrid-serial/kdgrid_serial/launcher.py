"""`--launcher serial`: every item in the command's own process, one after another, in the order the
scheduler starts them. No worker processes: for a debugger, or a machine that forbids spawning them."""

from __future__ import annotations

from orchestrator.launch.dispatch import Dispatch
from orchestrator.launch.outcome import parse_all
from orchestrator.launch.registry import Launcher, register
from orchestrator.launch.view import RunView
from orchestrator.launch.worker import run_item


@register
class Serial(Launcher):
    name = "serial"  # the entry point's name in pyproject.toml

    def launch(self, items, ctx, outcomes) -> None:
        runs = [r for it in items for r in it.runs]
        view = RunView(runs, {}, ctx.console, title=f"kdgrid {ctx.plan.scale}: {len(items)} item(s), serially")
        dispatch = Dispatch(items, ctx, outcomes, view, workers=1)  # blocked students, parts, outcomes
        with view:
            while started := dispatch.assign([0], {}):
                for _, part in started:  # its output goes to <workdir>/logs/<item>.log, as a worker's does
                    results = run_item(
                        part.payload(), work=ctx.work, tracking_uri=ctx.tracking_uri, threads=ctx.threads
                    )
                    dispatch.ended(part, parse_all(results))
        dispatch.never_started()
