"""`kdgrid tune`: a search over spec fields with Ray Tune's random searcher and ASHA over per-epoch top-1.

- **Base.** The search file's `base` row (e.g. `fig4.manifold`) is planned at the chosen scale and recipe
  (orchestrator.plan), so every trial is that row's spec with the sampled fields applied: a normal kdgrid
  run with its content hash, its MLflow run (a child of the search's parent run, tagged `kdgrid.search`),
  its checkpoints and its resume. Two trials that resolve to the same spec are one run.
- **Teacher first.** At the CPU scales the base row's teacher is a planned run: it is trained once, before
  the search, through the ordinary launcher (orchestrator.launch.execution), and every trial loads it.
- **Searcher.** Tune's BasicVariantGenerator (random sampling, seeded by the file's `random_state`): the
  pinned environment has neither optuna nor hyperopt, and the random searcher is what Tune ships itself;
  Tune saves and restores it with the experiment.
- **Scheduler.** Tune's ASHAScheduler over `val_top1`, with `epoch` as its time (kdgrid's own epoch count,
  so a trial resumed from a kdgrid checkpoint keeps its place). The engine reports each epoch to Tune from
  `Callback.on_epoch`; the last epoch is reported only after the run has finished (checkpoint, final
  model, MLflow FINISHED), so a stop decided on the last epoch never cuts a finished run short. A trial
  that ASHA stops is recorded in MLflow as KILLED with `kdgrid.stopped_by=ASHA` and
  `kdgrid.stopped_epoch=k` (epochs completed), never FAILED.
- **Budget.** `--trials N` (Tune's num_samples), `--budget-cpu-hours` (a Tune Stopper over the CPU
  seconds the engine measures per epoch, `cost.cpu_s`, summed over trials, counting what the search's runs
  in MLflow had spent before this driver started), `--budget-gpu-hours` (the same over the epochs' wall
  seconds on a GPU), `--time-budget-s` (Tune's own wall-clock limit).
- **Resume.** The Tune experiment lives in `<workdir>/ray/search-<name>-<scale>-<recipe>-<id>` (id: a hash
  of the search file, the trials and the overrides). A killed driver is resumed with `Tuner.restore`:
  finished and stopped trials stay as they were, unfinished ones restart and their kdgrid runs resume
  from their last epoch's checkpoint. A trial whose run is already finished (by content hash), or was
  stopped by ASHA under the killed driver after Tune last saved its state, replays its epochs from MLflow
  to Tune instead of training again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.stopper import Stopper

from orchestrator.grid import GridError, display_path
from orchestrator.tune.space import SearchSpec, apply, check_values, load_search
from trainer import tracking
from trainer.spec import ExperimentSpec

SEARCH = "kdgrid.search"  # on the parent and on every run of the search: "<scale>/<recipe>/<name>"
SEARCH_ROLE = "kdgrid.search.role"  # trial | rerun | paper
CONFIG = "kdgrid.search.config"  # the sampled overrides, JSON
STOPPED_BY, STOPPED_EPOCH = "kdgrid.stopped_by", "kdgrid.stopped_epoch"
METRIC = "val_top1"  # Tune's name for val.top1 (Tune flattens dotted keys)


@dataclass
class Setup:
    """A search ready to run: the file, the plan of its base row, and where everything goes."""

    search: SearchSpec
    source: str  # the search file, for messages
    plan: Any  # orchestrator.plan.Plan (the base row's table)
    base: Any  # PlannedRun of the base row, seed 0
    teachers: list  # PlannedRun: the base row's teacher runs (CPU scales)
    overrides: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.plan.scale}/{self.plan.recipe}/{self.search.search}"

    @property
    def epochs(self) -> int:
        return self.base.spec.recipe.epochs

    def ident(self, trials: int) -> str:
        raw = json.dumps(
            [self.search.model_dump(mode="json"), trials, list(self.overrides), self.base.hash],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:8]


def prepare(path: str | Path, scale: str = "mini", recipe: str | None = None, overrides=()) -> Setup:
    """Load the search file, plan its base row, check every bound and option against the base spec."""
    from orchestrator.plan import make_plan

    search = load_search(path)
    src = display_path(Path(path))
    table = search.base.split(".")[0].removeprefix("t")
    try:
        plan = make_plan(scale, table, 1, recipe, tuple(overrides))
    except GridError as err:
        raise GridError([(src, "base", f"{search.base!r}: its table could not be planned")] + err.entries) from None
    base = next((r for r in plan.students if any(u.key == search.base for u in r.uses)), None)
    if base is None:
        keys = sorted({u.key for r in plan.students for u in r.uses})
        raise GridError([(src, "base", f"no row {search.base!r}: rows of that table are {', '.join(keys)}")])
    problems = check_values(search, base.spec)
    if problems:
        raise GridError(
            [(src, w, r + f" [base {search.base} at scale {plan.scale}, recipe {plan.recipe}]") for w, r in problems]
        )
    teachers = [plan.run(d) for d in base.deps]
    return Setup(search, src, plan, base, teachers, tuple(overrides))


# ---------------------------------------------------------------------------------------------------
# Trials as kdgrid runs
# ---------------------------------------------------------------------------------------------------
def label(key: str, value: Any) -> str:
    """`distillation.manifold.alpha` = 0.4213 -> α=0.421; a block-set mapping -> blocks {1,2,3,4}."""
    name = key.split(".")[-1]
    sym = {"alpha": "α", "beta": "β"}.get(name, name)
    if isinstance(value, dict):
        if "student_blocks" in value:
            return "blocks {" + ",".join(str(b) for b in value["student_blocks"]) + "}"
        return ", ".join(label(f"{key}.{k}", v) for k, v in value.items())
    if isinstance(value, float):
        return f"{sym}={value:.3g}"
    return f"{sym}={value}"


def config_label(config: dict[str, Any]) -> str:
    return " ".join(label(k, v) for k, v in config.items())


def run_spec(
    base: ExperimentSpec, config: dict[str, Any], seed: int, *, key: str, role: str, parent: str | None
) -> ExperimentSpec:
    """The kdgrid spec of one trial (or re-run): the base with the sampled fields, its display tags."""
    spec = apply(base, config)
    spec = spec.model_copy(update={"seed": seed})
    name = f"search {key.split('/')[-1]} · {config_label(config)}" + (f" · seed {seed}" if seed else "")
    tags = {k: v for k, v in base.tags.items() if k not in (tracking.TABLES, tracking.ROWS, tracking.NOTE)}
    tags.update(
        {
            tracking.ROLE: "student",
            tracking.SEED: str(seed),
            SEARCH: key,
            SEARCH_ROLE: role,
            CONFIG: json.dumps(config, sort_keys=True, default=list),
            tracking.NOTE: f"**Search `{key}`**, {role}: {config_label(config)}; seed {seed}. The base row's "
            f"spec with these fields changed; a normal kdgrid run (content hash, checkpoints).",
            tracking.SOURCE: "kdgrid tune",
        }
    )
    if parent:
        tags[tracking.PARENT] = parent
    return spec.model_copy(update={"name": name, "tags": tags})


def ensure_parent(c, setup: Setup) -> str:
    """The search's own MLflow run (found again by its `kdgrid.search` tag); trials nest under it."""
    exp = tracking.experiment_id(c, setup.plan.scale)
    found = tracking.retry(
        c.search_runs,
        [exp],
        filter_string=f"tags.`{SEARCH}` = '{setup.key}' and tags.`{tracking.ROLE}` = 'search'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    s = setup.search
    note = (
        f"**Search `{s.search}`** ({setup.source}): {s.title}. Base row `{s.base}` at scale "
        f"{setup.plan.scale}, recipe `{setup.plan.recipe}`; space: "
        + "; ".join(f"`{k}` {p.text()}" for k, p in s.space.items())
        + ". Ray Tune, random search, ASHA over per-epoch val top-1."
    )
    run = tracking.retry(
        c.create_run,
        exp,
        run_name=f"search · {s.search} · {setup.plan.scale} · {setup.plan.recipe}",
        tags={
            tracking.ROLE: "search",
            SEARCH: setup.key,
            tracking.SCALE: setup.plan.scale,
            tracking.RECIPE: setup.plan.recipe,
            tracking.NOTE: note,
            tracking.SOURCE: "kdgrid tune",
            tracking.SOURCE_TYPE: "LOCAL",
        },
    )
    tracking.retry(c.set_terminated, run.info.run_id, "FINISHED")
    return run.info.run_id


def search_runs(c, scale: str, key: str) -> list:
    """Every MLflow run of the search (trials, re-runs, the paper's choice), oldest first."""
    exp = tracking.retry(c.get_experiment_by_name, tracking.experiment_name(scale))
    if exp is None:
        return []
    return list(
        tracking.retry(
            c.search_runs,
            [exp.experiment_id],
            filter_string=f"tags.`{SEARCH}` = '{key}' and tags.`{tracking.ROLE}` = 'student'",
            max_results=5000,
            order_by=["attributes.start_time ASC"],
        )
    )


def mark_stopped(c, run_id: str, by: str, epoch: int) -> None:
    """A trial the scheduler (or the budget) stopped: KILLED, with who stopped it and after which epoch."""
    log = tracking.RunLog(c, run_id)
    log.set_tags({STOPPED_BY: by, STOPPED_EPOCH: str(epoch)})
    run = tracking.retry(c.get_run, run_id)
    if tracking.FAILURE in run.data.tags:  # the trial's own "SystemExit" from Tune's stop: not a failure
        tracking.retry(c.delete_tag, run_id, tracking.FAILURE)
    if not tracking.finished(run):
        tracking.retry(c.set_terminated, run_id, "KILLED")


def settle(c, scale: str, key: str) -> None:
    """After (or before) a driver: runs tagged stopped are KILLED without a failure tag; a run finished
    since (a later search sampled the same spec) loses the stopped tags."""
    for run in search_runs(c, scale, key):
        by = run.data.tags.get(STOPPED_BY)
        if not by:
            continue
        if tracking.finished(run):
            for t in (STOPPED_BY, STOPPED_EPOCH):
                tracking.retry(c.delete_tag, run.info.run_id, t)
        elif run.info.status != "KILLED" or tracking.FAILURE in run.data.tags:
            mark_stopped(c, run.info.run_id, by, int(run.data.tags.get(STOPPED_EPOCH, 0)))


# ---------------------------------------------------------------------------------------------------
# Inside a trial
# ---------------------------------------------------------------------------------------------------
class _Report:
    """Engine callback in a trial: each epoch to Tune (the last one only once the run has finished);
    epochs trained before (a resumed run) are replayed from MLflow first, at no cost."""

    def __init__(self, run_hash: str, epochs: int, uri: str, scale: str):
        from ray import tune

        self.report, self.hash, self.epochs, self.uri, self.scale = tune.report, run_hash, epochs, uri, scale
        self.done: set[int] = set()
        self.start = 0
        self.last: dict | None = None
        self.gpu = False
        self.t = time.monotonic()

    def send(self, epoch: int, top1: float, cpu_s: float, replayed: bool) -> None:
        if epoch in self.done:
            return
        self.done.add(epoch)
        print(f"=== epoch {epoch} reported to Tune" + (" (replayed from MLflow)" if replayed else ""), flush=True)
        wall = time.monotonic() - self.t
        self.t = time.monotonic()
        self.report(
            {
                "epoch": epoch,
                METRIC: float(top1),
                "run": self.hash,
                "replayed": replayed,
                "cost_cpu_s": 0.0 if replayed else float(cpu_s),
                "cost_gpu_s": 0.0 if replayed or not self.gpu else wall,
            }
        )

    def replay(self, upto: int) -> None:
        """Epochs 1..upto from MLflow (a run resumed from its checkpoint, or finished before)."""
        c = tracking.client(self.uri)
        run = tracking.runs_by_hash(c, self.scale, [self.hash]).get(self.hash)
        if run is None:
            return
        hist = {m.step: m.value for m in tracking.retry(c.get_metric_history, run.info.run_id, "val.top1")}
        for e in range(1, upto + 1):
            if e in hist:
                self.send(e, hist[e], 0.0, True)

    def on_start(self, run_hash, spec, start_epoch, steps) -> None:
        self.start = start_epoch  # replayed at the first epoch: inside the engine's try, not here
        import torch

        self.gpu = torch.cuda.is_available()
        self.t = time.monotonic()

    def on_progress(self, run_hash, epoch, step, metrics) -> None:
        pass

    def on_epoch(self, run_hash, epoch, metrics) -> None:
        if self.start and min(self.start, self.epochs - 1) not in self.done:
            self.replay(min(self.start, self.epochs - 1))
        if epoch + 1 >= self.epochs:
            self.last = metrics  # reported once the run is FINISHED
            return
        self.send(epoch + 1, metrics["val.top1"], metrics.get("cost.cpu_s", 0.0), False)

    def on_end(self, run_hash, status, reason) -> None:
        pass


def _trial(config: dict, base: dict, work: str, uri: str, threads: int, key: str, parent: str, deps: list[str]) -> None:
    """One Tune trial: the sampled spec trained (or resumed, or found finished) as a kdgrid run."""
    from orchestrator.launch.outcome import Outcome
    from orchestrator.launch.worker import run_item, wait_for_locks
    from trainer.spec import parse_experiment

    base_spec = parse_experiment(base, "search base")
    spec = run_spec(base_spec, config, 0, key=key, role="trial", parent=parent)
    h = spec.content_hash()
    payload = {
        "id": f"trial-{h[:12]}",
        "specs": [spec.model_dump(mode="json")],
        "hashes": [h],
        "deps": {h: deps},
        "scale": spec.scale,
    }
    rep = _Report(h, spec.recipe.epochs, uri, spec.scale)
    stopped = _stopped_epoch(uri, spec.scale, h)
    if stopped:  # the scheduler stopped it under a driver that was killed before Tune saved that: it stays stopped
        print(f"=== run {h}: stopped by the scheduler at epoch {stopped} before; replayed, not trained", flush=True)
        rep.replay(stopped)
        return
    try:
        outcome = Outcome.parse(run_item(payload, work=work, tracking_uri=uri, threads=threads, callbacks=(rep,))[h])
    except SystemExit:  # Tune's stop: the engine closed the run KILLED with "SystemExit: 0" as its reason
        c = tracking.client(uri)
        run = tracking.runs_by_hash(c, spec.scale, [h]).get(h)
        if run is not None and run.data.tags.get(STOPPED_BY):  # the driver recorded the stop: not a failure
            mark_stopped(c, run.info.run_id, run.data.tags[STOPPED_BY], int(run.data.tags.get(STOPPED_EPOCH, 0)))
        raise
    if outcome.kind == "running elsewhere":  # another trial sampled the same spec: wait for it
        wait_for_locks(work, [h], 24 * 3600)
        outcome = Outcome("skipped", "trained by another trial")
    if not outcome.done:
        raise RuntimeError(f"run {h}: {outcome}")
    if rep.last is not None:
        rep.send(spec.recipe.epochs, rep.last["val.top1"], rep.last.get("cost.cpu_s", 0.0), False)
    rep.replay(spec.recipe.epochs)  # whatever was not reported: a run finished before this trial


def _stopped_epoch(uri: str, scale: str, h: str) -> int:
    run = tracking.runs_by_hash(tracking.client(uri), scale, [h]).get(h)
    if run is None or tracking.finished(run) or run.data.tags.get(STOPPED_BY) != "ASHA":
        return 0
    return int(run.data.tags.get(STOPPED_EPOCH, 0))


# ---------------------------------------------------------------------------------------------------
# Driver side: ASHA that records its stops, the budget
# ---------------------------------------------------------------------------------------------------
class RecordingASHA(ASHAScheduler):
    """Tune's ASHA, unchanged; a STOP before a trial's last epoch is written to the trial's MLflow run."""

    def __init__(self, *, epochs: int, uri: str, scale: str, **kw):
        super().__init__(**kw)
        self.epochs, self.uri, self.scale = epochs, uri, scale

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        epoch = int(result.get("epoch", 0))
        if action == TrialScheduler.STOP and 0 < epoch < self.epochs and result.get("run"):
            c = tracking.client(self.uri)
            run = tracking.runs_by_hash(c, self.scale, [result["run"]]).get(result["run"])
            if run is not None and not tracking.finished(run):
                mark_stopped(c, run.info.run_id, "ASHA", epoch)
        return action


class CostBudget(Stopper):
    """Stops the search once its runs have spent the budget: CPU seconds measured by the engine
    (`cost.cpu_s` per epoch) or GPU wall seconds, summed over trials, including what the search's runs
    had spent in MLflow when this driver started (so a resumed search keeps its account)."""

    def __init__(self, cpu_hours: float | None, gpu_hours: float | None, uri: str, scale: str, key: str):
        self.limits = {"cost_cpu_s": cpu_hours, "cost_gpu_s": gpu_hours}
        self.uri, self.scale, self.key = uri, scale, key
        self.spent: dict[str, float] | None = None

    def _start(self) -> None:
        if self.spent is None:
            self.spent = {"cost_cpu_s": spent_cpu_s(tracking.client(self.uri), self.scale, self.key), "cost_gpu_s": 0.0}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self._start()
        for k in self.spent:
            self.spent[k] += float(result.get(k, 0.0) or 0.0)
        return False

    def stop_all(self) -> bool:
        self._start()
        return any(lim is not None and self.spent[k] >= lim * 3600 for k, lim in self.limits.items())


def spent_cpu_s(c, scale: str, key: str) -> float:
    """CPU seconds the search's runs have logged (every epoch's `cost.cpu_s` and each start's set-up)."""
    total = 0.0
    for run in search_runs(c, scale, key):
        for name in ("cost.cpu_s", "cost.setup_cpu_s"):
            total += sum(m.value for m in tracking.retry(c.get_metric_history, run.info.run_id, name))
    return total


# ---------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------
@dataclass
class Options:
    trials: int = 16
    workers: int | None = None
    threads: int = 1
    budget_cpu_hours: float | None = None
    budget_gpu_hours: float | None = None
    time_budget_s: float | None = None
    ray_address: str | None = None


def train_teachers(setup: Setup, uri: str, work: Path, parent: str, console) -> None:
    """The base row's teachers, trained once through the ordinary launcher before any trial starts."""
    from orchestrator.launch.execution import execute, summarize
    from orchestrator.launch.options import LaunchOptions
    from orchestrator.launch.worker import wait_for_locks

    if not setup.teachers:
        return
    for t in setup.teachers:
        t.spec.tags.setdefault(tracking.PARENT, parent)  # a new teacher nests under the search
    plan = dataclasses.replace(setup.plan, runs=list(setup.teachers))
    opts = LaunchOptions(workdir=work, tracking_uri=uri, workers=1, threads=max(1, (os.cpu_count() or 1)))
    launched = execute(plan, opts, console)
    if launched.items:
        summarize(launched)
    elsewhere = [h for h, o in launched.outcomes.items() if o.kind == "running elsewhere"]
    if elsewhere:  # another kdgrid command is training the teacher: wait for it, then check again
        console.print("waiting for the teacher another command is training", highlight=False)
        wait_for_locks(work, elsewhere, 24 * 3600)
        launched = execute(plan, dataclasses.replace(opts, threads=1), console)
    bad = {h: str(o) for h, o in launched.outcomes.items() if o.bad or o.kind == "running elsewhere"}
    if bad:
        raise RuntimeError(f"the search's teacher did not finish: {bad}")


def experiment_dir(setup: Setup, work: Path, trials: int) -> Path:
    p = setup.plan
    return work / "ray" / f"search-{setup.search.search}-{p.scale}-{p.recipe}-{setup.ident(trials)}"


def run_search(setup: Setup, uri: str, work: Path, opts: Options, console) -> Path:
    """Train the teachers, then run (or restore) the Tune search. Returns the Tune experiment dir."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    c = tracking.client(uri)
    parent = ensure_parent(c, setup)
    settle(c, setup.plan.scale, setup.key)
    train_teachers(setup, uri, work, parent, console)

    # Tune saves the search's state every 2 s (its default adapts, up to minutes): a killed driver loses
    # little, and a trial that ended meanwhile replays from MLflow on restore instead of training again
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    from orchestrator.launch.launchers.ray import init_ray

    init_ray(opts.ray_address, uri)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = opts.workers or gpus or max(1, cpus // max(1, opts.threads))
        trainable = tune.with_parameters(
            _trial,
            base=setup.base.spec.model_dump(mode="json"),
            work=str(work),
            uri=uri,
            threads=opts.threads,
            key=setup.key,
            parent=parent,
            deps=list(setup.base.deps),
        )
        trainable = tune.with_resources(trainable, {"cpu": opts.threads, "gpu": 1 if gpus else 0})
        path = experiment_dir(setup, work, opts.trials)
        if tune.Tuner.can_restore(str(path)):
            console.print(f"resuming the search from {path} (Tune restore: finished trials are kept)", highlight=False)
            tuner = tune.Tuner.restore(
                str(path), trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
            )
        else:
            s = setup.search
            asha = RecordingASHA(
                epochs=setup.epochs,
                uri=uri,
                scale=setup.plan.scale,
                time_attr="epoch",
                metric=METRIC,
                mode="max",
                max_t=setup.epochs,
                grace_period=min(s.grace_period, setup.epochs),
                reduction_factor=s.reduction_factor,
            )
            stop = CostBudget(opts.budget_cpu_hours, opts.budget_gpu_hours, uri, setup.plan.scale, setup.key)
            tuner = tune.Tuner(
                trainable,
                param_space={k: p.domain() for k, p in s.space.items()},
                tune_config=tune.TuneConfig(
                    scheduler=asha,
                    search_alg=BasicVariantGenerator(random_state=s.random_state, max_concurrent=workers),
                    num_samples=opts.trials,
                    reuse_actors=False,
                    time_budget_s=opts.time_budget_s,
                ),
                run_config=tune.RunConfig(
                    name=path.name,
                    storage_path=str(path.parent),
                    verbose=0,
                    stop=stop,
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
        console.print(
            f"search {setup.key}: up to {opts.trials} trial(s), {workers} at a time; Tune experiment {path}",
            highlight=False,
        )
        grid = tuner.fit()
        errors = [r for r in grid if r.error is not None]
        for r in errors:
            console.print(
                f"trial failed: {r.config}: {str(r.error).strip().splitlines()[-1]}", highlight=False, markup=False
            )
        mark_budget_stops(c, setup, grid)
    finally:
        if not opts.ray_address:
            ray.shutdown()
    settle(c, setup.plan.scale, setup.key)
    return path


def mark_budget_stops(c, setup: Setup, grid) -> None:
    """Trials that ended before their last epoch without an ASHA stop or an error: the budget stopped them."""
    found = {r.data.tags.get(tracking.HASH): r for r in search_runs(c, setup.plan.scale, setup.key)}
    for result in grid:
        m = result.metrics or {}
        run = found.get(m.get("run"))
        if result.error is not None or run is None or tracking.finished(run):
            continue
        if not run.data.tags.get(STOPPED_BY):
            mark_stopped(c, run.info.run_id, "budget", int(m.get("epoch", 0)))
