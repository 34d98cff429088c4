"""The search report: every trial (finished, or stopped by ASHA at epoch k), the top configurations re-run
over a fixed number of seeds, the paper's choice placed among them, and top-1 against each searched field.

Read from MLflow (the search's runs, by their `kdgrid.search` tag), so a resumed or repeated search reports
the same runs. The ranking uses the final-epoch top-1 of the trials that finished (seed 0); a trial stopped
at epoch k is listed with its top-1 at k, not ranked (its accuracy is not an end-of-training number). The
re-runs are planned runs (content hashes: seed 0 of a top configuration is its trial) trained through the
ordinary local launcher, as cohorts sharing one teacher forward per seed. Top configurations and the
paper's choice are compared with Welch's t-test over their seeds (orchestrator.report.stats.decide).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.tune.search import (
    CONFIG,
    SEARCH,
    SEARCH_ROLE,
    STOPPED_BY,
    STOPPED_EPOCH,
    Setup,
    config_label,
    label,
    run_spec,
    search_runs,
)
from trainer import tracking


@dataclass
class SearchRun:
    """One MLflow run of the search."""

    hash: str
    run_id: str
    name: str
    config: dict[str, Any]
    seed: int
    role: str  # trial | rerun | paper
    status: str  # finished | stopped | failed | running
    stopped_by: str | None
    epochs: int  # epochs logged
    top1: float | None  # val.top1 at the last logged epoch
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.status == "stopped":
            return f"stopped by {self.stopped_by} at epoch {self.epochs}"
        return self.status


def tune_trials(experiment: Path | None) -> dict[str, dict[str, Any]]:
    """{run hash: sampled fields} of every trial in the Tune experiment (from its trials' result.json)."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(Path(experiment).glob("*/result.json")) if experiment else ():
        for line in f.read_text().splitlines():
            try:
                d = json.loads(line)
            except ValueError:  # a line cut by a killed driver
                continue
            if d.get("run"):
                out[d["run"]] = d.get("config") or {}
    return out


def collect(c, setup: Setup, experiment: Path | None = None, seeds: int = 0) -> list[SearchRun]:
    """The search's runs: those tagged with its key, and (by content hash) every trial of its Tune
    experiment and the paper's choice for seeds 0..seeds-1, wherever they were trained first (a trial
    that resolved to a run of the grid or of another search replayed it: it is still this search's trial)."""
    trials = tune_trials(experiment)
    paper = dict(setup.search.paper)
    paper_hashes = {
        run_spec(setup.base.spec, paper, s, key=setup.key, role="paper", parent=None).content_hash()
        for s in range(seeds)
    }
    found = {run.data.tags.get(tracking.HASH): run for run in search_runs(c, setup.plan.scale, setup.key)}
    extra = (set(trials) | paper_hashes) - set(found)
    if extra:
        found.update(tracking.runs_by_hash(c, setup.plan.scale, extra))
    out = []
    for h, run in found.items():
        tags = run.data.tags
        role, config = tags.get(SEARCH_ROLE, "trial"), json.loads(tags.get(CONFIG, "{}"))
        if tags.get(SEARCH) != setup.key:
            role, config = ("trial", trials[h]) if h in trials else ("paper", paper)
        hist = sorted((m.step, m.value) for m in tracking.retry(c.get_metric_history, run.info.run_id, "val.top1"))
        status = {"FINISHED": "finished", "FAILED": "failed", "RUNNING": "running"}.get(run.info.status, "killed")
        if tags.get(STOPPED_BY) and status != "finished":
            status = "stopped"
        epochs = (
            int(tags.get(STOPPED_EPOCH, hist[-1][0] if hist else 0))
            if status == "stopped"
            else (hist[-1][0] if hist else 0)
        )
        top1 = dict(hist).get(epochs, hist[-1][1] if hist else None)
        out.append(
            SearchRun(
                h or "",
                run.info.run_id,
                run.info.run_name or "",
                config,
                int(tags.get(tracking.SEED, 0)),
                role,
                status,
                tags.get(STOPPED_BY),
                epochs,
                top1,
                hist,
            )
        )
    return out


def _cfg_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def ranked_trials(runs: list[SearchRun]) -> list[SearchRun]:
    """Finished seed-0 trials, best final top-1 first (one per configuration)."""
    seen, out = set(), []
    for r in sorted(
        (r for r in runs if r.role == "trial" and r.seed == 0 and r.status == "finished" and r.top1 is not None),
        key=lambda r: -r.top1,
    ):
        if _cfg_key(r.config) not in seen:
            seen.add(_cfg_key(r.config))
            out.append(r)
    return out


# ---------------------------------------------------------------------------------------------------
# Re-running the top configurations and the paper's choice
# ---------------------------------------------------------------------------------------------------
def rerun_plan(setup: Setup, runs: list[SearchRun], top: int, seeds: int, parent: str | None):
    """The plan of the re-runs: the top `top` configurations and the paper's choice, seeds 0..seeds-1."""
    from orchestrator.plan import PlannedRun

    configs = [("rerun", r.config) for r in ranked_trials(runs)[:top]]
    configs.append(("paper", dict(setup.search.paper)))
    planned: dict[str, PlannedRun] = {}
    for role, config in configs:
        for s in range(seeds):
            spec = run_spec(setup.base.spec, config, s, key=setup.key, role=role, parent=parent)
            h = spec.content_hash()
            if h not in planned:  # the paper's choice may be a trial's configuration
                planned[h] = PlannedRun(h, spec, "student", [], list(setup.base.deps), s)
    return dataclasses.replace(setup.plan, runs=list(setup.teachers) + list(planned.values()), seeds=seeds)


def rerun(
    setup: Setup,
    uri: str,
    work: Path,
    top: int,
    seeds: int,
    workers: int | None,
    console,
    experiment: Path | None = None,
) -> None:
    from orchestrator.launch.execution import execute, summarize
    from orchestrator.launch.options import LaunchOptions
    from orchestrator.tune.search import ensure_parent

    c = tracking.client(uri)
    parent = ensure_parent(c, setup)
    plan = rerun_plan(setup, collect(c, setup, experiment, seeds), top, seeds, parent)
    console.print(
        f"re-running the top {top} configuration(s) and the paper's choice over {seeds} seed(s)", highlight=False
    )
    launched = execute(plan, LaunchOptions(workdir=work, tracking_uri=uri, workers=workers), console)
    if launched.items:
        summarize(launched)


# ---------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------
@dataclass
class Group:
    """One configuration over its seeds."""

    config: dict[str, Any]
    role: str
    values: dict[int, float]  # seed -> final top-1 (finished runs only)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values.values()) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values.values()) if len(self.values) > 1 else None


def groups(setup: Setup, runs: list[SearchRun], top: int, seeds: int) -> list[Group]:
    """The top configurations (by their trial) and the paper's choice, with their finished seeds < `seeds`."""
    by_spec: dict[tuple[str, int], SearchRun] = {}
    for r in runs:
        if r.status == "finished" and r.top1 is not None:
            by_spec[(_cfg_key(r.config), r.seed)] = r
    paper_cfg = dict(setup.search.paper)
    # a run found under another config key can still be the paper's spec (same content hash)
    paper_hashes = {
        run_spec(setup.base.spec, paper_cfg, s, key=setup.key, role="paper", parent=None).content_hash()
        for s in range(seeds)
    }
    out = []
    for role, cfg in [("top", r.config) for r in ranked_trials(runs)[:top]] + [("paper", paper_cfg)]:
        vals = {s: by_spec[(_cfg_key(cfg), s)].top1 for s in range(seeds) if (_cfg_key(cfg), s) in by_spec}
        if role == "paper":
            for r in runs:
                if r.hash in paper_hashes and r.status == "finished" and r.seed < seeds:
                    vals.setdefault(r.seed, r.top1)
        out.append(Group(cfg, role, vals))
    return out


def paper_rank(setup: Setup, runs: list[SearchRun]) -> dict[str, Any] | None:
    """Where the paper's choice (seed 0, trained beside the trials) falls among the finished trials:
    its rank (1 + trials strictly above it), how many trials are above, tied and below, and its
    percentile (below + half the ties, over the other trials)."""
    trials = ranked_trials(runs)
    h0 = run_spec(setup.base.spec, dict(setup.search.paper), 0, key=setup.key, role="paper", parent=None).content_hash()
    paper = next((r for r in runs if r.hash == h0 and r.status == "finished" and r.top1 is not None), None)
    if paper is None:
        return None
    others = [r.top1 for r in trials if r.hash != h0]
    above = sum(v > paper.top1 for v in others)
    tied = sum(v == paper.top1 for v in others)
    below = len(others) - above - tied
    pct = 100.0 * (below + 0.5 * tied) / len(others) if others else 100.0
    return {
        "rank": above + 1,
        "of": len(others) + 1,
        "above": above,
        "tied": tied,
        "below": below,
        "percentile": pct,
        "top1": paper.top1,
    }


def _fmt(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _value_cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return label("", v)
    return str(v)


def markdown(setup: Setup, runs: list[SearchRun], top: int, seeds: int, budget_note: str = "") -> str:
    s = setup.search
    trials = [r for r in runs if r.role == "trial"]
    finished = ranked_trials(runs)
    stopped = [r for r in trials if r.status == "stopped"]
    failed = [r for r in trials if r.status == "failed"]
    keys = list(s.space)
    lines = [
        f"# Search `{s.search}`: {s.title}",
        "",
        f"Scale `{setup.plan.scale}`, recipe `{setup.plan.recipe}`, base row `{s.base}` "
        f"({setup.epochs} epochs); search file `{setup.source}`.",
        "",
        "Space: " + "; ".join(f"`{k}` {p.text()}" for k, p in s.space.items()) + ".",
        "",
        f"Ray Tune: random search (BasicVariantGenerator, seed {s.random_state}); ASHA over per-epoch val "
        f"top-1 (grace {s.grace_period} epoch(s), reduction factor {s.reduction_factor:g}). " + budget_note,
        "",
        f"**{len(trials)} trial(s)**: {len(finished)} finished, "
        f"{sum(r.stopped_by == 'ASHA' for r in stopped)} stopped early by the scheduler (ASHA), "
        + (
            f"{sum(r.stopped_by != 'ASHA' for r in stopped)} stopped by the budget, "
            if any(r.stopped_by != "ASHA" for r in stopped)
            else ""
        )
        + f"{len(failed)} failed.",
        "",
    ]
    rank = paper_rank(setup, runs)
    gs = groups(setup, runs, top, seeds)
    paper = gs[-1]
    lines += ["## The paper's choice among the trials", ""]
    pl = config_label(dict(s.paper))
    if rank:
        lines.append(
            f"The paper's choice ({pl}, seed 0, trained beside the trials: {rank['top1']:.2f}) ranks "
            f"**{rank['rank']} of {rank['of']}** among the finished trials by final top-1: "
            f"{rank['above']} above it, {rank['tied']} tied, {rank['below']} below "
            f"(percentile {rank['percentile']:.0f})."
        )
    else:
        lines.append(f"The paper's choice ({pl}) has no finished seed-0 run yet.")
    lines += [
        "",
        f"## Top configurations over {seeds} seed(s)",
        "",
        "| | configuration | seeds | final top-1 (mean ± std) | per seed | − paper's choice, 95% CI (Welch) |",
        "|---|---|---|---|---|---|",
    ]
    from orchestrator.report.stats import decide

    for i, g in enumerate(gs):
        name = "paper's choice" if g.role == "paper" else f"#{i + 1}"
        cmp = "–"
        if g.role != "paper" and len(g.values) > 1 and len(paper.values) > 1:
            d = decide(g.values, paper.values)
            if d is not None:
                verdict = d.outcome.replace("supports", "better").replace("contradicts", "worse")
                cmp = f"{d.diff:+.2f} [{d.low:+.2f}, {d.high:+.2f}] ({verdict})"
        per = ", ".join(f"{g.values[k]:.2f}" for k in sorted(g.values))
        lines.append(f"| {name} | {config_label(g.config)} | {len(g.values)} | {_fmt(g.mean, g.std)} | {per} | {cmp} |")
    means = sorted([g for g in gs if g.mean is not None], key=lambda g: -g.mean)
    if paper.mean is not None and len(means) > 1:
        pos = next(i for i, g in enumerate(means) if g is paper) + 1
        lines += ["", f"By the mean over seeds the paper's choice places {pos} of {len(means)} among these."]
    lines += [
        "",
        "## Every trial",
        "",
        "| rank | " + " | ".join(f"`{k.split('.')[-1]}`" for k in keys) + " | final top-1 | state | run |",
        "|---" * (len(keys) + 4) + "|",
    ]
    order = {r.hash: i + 1 for i, r in enumerate(finished)}
    for r in sorted(trials, key=lambda r: (order.get(r.hash, 10**6), -(r.top1 or 0))):
        cells = [_value_cell(r.config.get(k)) for k in keys]
        lines.append(
            f"| {order.get(r.hash, '–')} | " + " | ".join(cells) + f" | {_fmt(r.top1)} | {r.state} | `{r.hash[:8]}` |"
        )
    lines += ["", "![top-1 against each searched field](search.png)", ""]
    return "\n".join(lines)


def plot(setup: Setup, runs: list[SearchRun], dpi: int = 110) -> bytes:
    """Final top-1 against each searched field: finished trials filled, stopped ones hollow (their top-1
    at the epoch they stopped), the paper's choice (seed 0) as a star; log axis for log distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = setup.search
    keys = list(s.space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    trials = [r for r in runs if r.role == "trial" and r.top1 is not None]
    h0 = run_spec(setup.base.spec, dict(s.paper), 0, key=setup.key, role="paper", parent=None).content_hash()
    paper = next((r for r in runs if r.hash == h0 and r.status == "finished"), None)
    for ax, k in zip(axes[0], keys):
        p = s.space[k]
        cats = [_value_cell(o) for o in p.options] if p.dist == "choice" else None

        def x_of(v, cats=cats):
            return cats.index(_value_cell(v)) if cats is not None else v

        fin = [r for r in trials if r.status == "finished" and k in r.config]
        stp = [r for r in trials if r.status == "stopped" and k in r.config]
        ax.scatter([x_of(r.config[k]) for r in fin], [r.top1 for r in fin], c="#1f77b4", label="finished")
        ax.scatter(
            [x_of(r.config[k]) for r in stp],
            [r.top1 for r in stp],
            facecolors="none",
            edgecolors="#7f7f7f",
            label="stopped by ASHA (top-1 when stopped)",
        )
        pv = s.paper.get(k)
        if paper is not None and pv is not None:
            ax.scatter([x_of(pv)], [paper.top1], marker="*", s=180, c="#d62728", label="paper's choice", zorder=3)
        if p.log:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        if cats is None:  # the whole searched range, whatever was sampled
            pad = (p.high / p.low) ** 0.04 if p.log else None
            ax.set_xlim(
                *(
                    (p.low / pad, p.high * pad)
                    if p.log
                    else (p.low - 0.04 * (p.high - p.low), p.high + 0.04 * (p.high - p.low))
                )
            )
        if cats is not None:
            ax.set_xticks(range(len(cats)), cats, rotation=20, fontsize=7)
        ax.set_xlabel(k.split(".")[-1] if cats is None or not isinstance(p.options[0], dict) else "block set")
        ax.set_ylabel("val top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"search {s.search} · {setup.plan.scale} · {setup.plan.recipe}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def trials_csv(setup: Setup, runs: list[SearchRun]) -> str:
    keys = list(setup.search.space)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["hash", "role", "seed", *keys, "top1", "epochs", "status", "stopped_by", "run_id"])
    for r in runs:
        w.writerow(
            [
                r.hash,
                r.role,
                r.seed,
                *[json.dumps(r.config.get(k)) for k in keys],
                r.top1,
                r.epochs,
                r.status,
                r.stopped_by or "",
                r.run_id,
            ]
        )
    return buf.getvalue()


def write(
    setup: Setup, uri: str, out: str | Path, top: int, seeds: int, budget_note: str = "", experiment: Path | None = None
) -> dict[str, Path]:
    """report.md, search.png and trials.csv in `out`, also logged under `report/` of the search's run."""
    from orchestrator.tune.search import ensure_parent

    c = tracking.client(uri)
    runs = collect(c, setup, experiment, seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "png": out / "search.png", "csv": out / "trials.csv"}
    paths["md"].write_text(markdown(setup, runs, top, seeds, budget_note), encoding="utf-8")
    paths["png"].write_bytes(plot(setup, runs))
    paths["csv"].write_text(trials_csv(setup, runs), encoding="utf-8")
    parent = ensure_parent(c, setup)
    for p in paths.values():
        tracking.retry(c.log_artifact, parent, str(p), "report")
    return paths


__all__ = [
    "collect",
    "tune_trials",
    "ranked_trials",
    "rerun",
    "rerun_plan",
    "groups",
    "paper_rank",
    "markdown",
    "plot",
    "write",
    "SearchRun",
]
