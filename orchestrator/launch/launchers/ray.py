"""The Ray launcher: one Ray Tune trial per work item, dependency stage by dependency stage.

Ray is started here for the call (`ray.init(include_dashboard=False, num_cpus=...)`, bound to
127.0.0.1) or joined with `--ray-address` (an existing cluster: the workdir and the MLflow store must
be reachable from every node, e.g. a shared filesystem and an MLflow server; kdgrid's own code is
shipped to the workers with the job, the dependencies must be installed there, as in docker/).

With the cost schedule (the default) each stage's cohorts are cut by estimated cost over the trials that
run at once and handed to Tune longest path first (launch/planner.py); the view shows the grid's ETA.
A trial is a cohort: `tune.with_resources` gives it `--threads` CPUs (and a GPU where the cluster has
GPUs), its function runs `items.run_item`, which trains the very MLflow runs the other launchers would
create, and it reports to Tune as it goes: an event when a run starts, every epoch's metrics, and the
item's outcomes at the end (a Tune callback feeds them to the live view). Stages (teachers, then their
students) run one Tuner each, in order; a student whose teacher failed is blocked and never started.

A run planned on several devices (`launch.resources.gpus`: its world size) trains as one DDP job through
Ray Train's `TorchTrainer` inside its trial: one Train worker per device (GPUs with NCCL where the cluster
has them, else CPU workers with gloo), each a rank running `run_item`; Ray Train sets up the process
group and the environment the trainer reads, and `TuneReportCallback` carries rank 0's reports to Tune.
"""

from __future__ import annotations

import json
import os
import time

from ray.tune import Callback

from orchestrator.launch.items import (
    REPO_ROOT,
    LaunchContext,
    WorkItem,
    devices_per_run,
    log_path,
    mark_abandoned,
    payload_world_size,
    run_item,
    runnable,
    stages,
)
from orchestrator.launch.planner import Planner
from orchestrator.launch.view import RunView


def _init(ctx: LaunchContext) -> None:
    init_ray(ctx.ray_address, ctx.tracking_uri)


def init_ray(address: str | None, tracking_uri: str) -> None:
    """Start (or join, at `address`) Ray for kdgrid: quiet, no dashboard, 127.0.0.1 only; the grid and
    `kdgrid tune` share it."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    quiet = dict(logging_level="warning", log_to_driver=False)
    if address:
        # kdgrid's packages travel with the job, so the cluster trains the very code that planned the grid
        ray.init(
            address=address,
            runtime_env={
                "py_modules": [str(REPO_ROOT / "trainer"), str(REPO_ROOT / "orchestrator")],
                "env_vars": {"MLFLOW_TRACKING_URI": tracking_uri},
            },
            **quiet,
        )
        return
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), path) if p)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # address="local": a new Ray for this call, never one that `ray start` left recorded in /tmp/ray
    ray.init(address="local", include_dashboard=False, num_cpus=cores, **quiet)


def _gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def default_parallelism(ctx: LaunchContext) -> int:
    """Trials the cluster can hold at once: its GPUs, else its CPUs over --threads."""
    import ray

    _init(ctx)
    per_item = devices_per_run(ctx.plan.runs)
    return max(1, (_gpus() or int(ray.cluster_resources().get("CPU", 1)) // max(1, ctx.threads)) // per_item)


class _Report:
    """Engine callback inside a trial: run starts, epochs and ends become Tune results (or, inside a Ray
    Train worker, Train reports: every rank calls them alike, as Ray Train requires)."""

    def __init__(self, train: bool = False):
        if train:
            import ray.train

            self.report = ray.train.report
        else:
            from ray import tune

            self.report = tune.report

    def on_start(self, run_hash, spec, start_epoch, steps) -> None:
        self.report({"kdgrid_event": json.dumps(["start", run_hash, start_epoch, steps, spec.recipe.epochs])})

    def on_progress(self, run_hash, epoch, step, metrics) -> None:
        pass  # per-step progress stays in the item's log; Tune gets epochs

    def on_epoch(self, run_hash, epoch, metrics) -> None:
        flat = {k.replace(".", "_"): float(v) for k, v in metrics.items()}
        self.report(
            {
                "kdgrid_event": json.dumps(["epoch", run_hash, epoch, metrics]),
                "run": run_hash,
                "epoch": epoch + 1,
                **flat,
            }
        )

    def on_end(self, run_hash, status, reason) -> None:
        self.report({"kdgrid_event": json.dumps(["end", run_hash, status, reason])})


# A DDP trial only waits on its TorchTrainer: it holds this much CPU (Tune needs a non-empty request), and its
# Train workers hold that much less between them, so an item of W workers fits where W x --threads CPUs are free.
DRIVER_CPU = 0.01


def _train_worker(config: dict) -> None:
    """One rank of a DDP item inside Ray Train (torch.distributed is already set up by TorchTrainer)."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    results = run_item(
        config["payload"],
        work=config["work"],
        tracking_uri=config["uri"],
        threads=config["threads"],
        callbacks=(_Report(train=True),),
        rank=rank,
    )
    ray.train.report({"kdgrid_results": json.dumps(results), "done": True})


def _trainable(config: dict, payloads: dict, work: str, uri: str, threads: int, gpu: bool = False) -> None:
    from ray import tune

    payload = payloads[config["item"]]
    world = payload_world_size(payload)
    if world > 1:  # one DDP job: Ray Train's TorchTrainer, its reports carried to this trial
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={"payload": payload, "work": work, "uri": uri, "threads": threads},
            scaling_config=ScalingConfig(
                num_workers=world, use_gpu=gpu, resources_per_worker={"CPU": max(0.01, threads - DRIVER_CPU / world)}
            ),
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            run_config=RunConfig(
                name=f"ddp-{payload['id']}",
                storage_path=os.path.join(work, "ray", "train"),
                callbacks=[TuneReportCallback()],
            ),
        )
        trainer.fit()
        return
    results = run_item(payload, work=work, tracking_uri=uri, threads=threads, callbacks=(_Report(),))
    tune.report({"kdgrid_results": json.dumps(results), "done": True})


_VIEWS: dict[int, tuple[RunView, dict[str, list[str]]]] = {}


class _ViewCallback(Callback):
    """Feeds the trials' reports to the live view. Tune pickles its callbacks: this one holds only a key."""

    def __init__(self, view: RunView, hashes_of: dict[str, list[str]]):
        self.key = id(view)
        _VIEWS[self.key] = (view, hashes_of)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        ev = result.get("kdgrid_event")
        if ev and self.key in _VIEWS:
            _VIEWS[self.key][0].handle(tuple(json.loads(ev)))

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.key in _VIEWS:
            view, hashes = _VIEWS[self.key]
            for h in hashes.get(trial.config.get("item"), ()):
                view.set_state(h, "running: trial started", quiet=True)


def launch(items: list[WorkItem], ctx: LaunchContext, outcomes: dict[str, str]) -> dict[str, str]:
    import ray
    from ray import tune

    if not ctx.wait:
        raise RuntimeError("the Ray launcher drives its trials from this process: use `launch_detached`")
    _init(ctx)
    names = ctx.names
    hints = ctx.hints.get("ray") or {}  # a scale's `launch.ray: {cpus: .., gpus: ..}` per trial
    cpu, gpu = hints.get("cpus", ctx.threads), hints.get("gpus", 1 if _gpus() else 0)
    item_of = {h: it.id for it in items for h in it.hashes}
    view = RunView(
        [r for it in items for r in it.runs],
        item_of,
        ctx.console,
        title=f"kdgrid {ctx.plan.scale}: {len(items)} item(s) as Ray Tune trials",
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        with view:
            all_stages = stages(items)
            pace = 1.0  # wall seconds per estimated second, from the stages done (the ETA follows the machine)
            for k, stage in enumerate(all_stages):
                # cost schedule: the stage's cohorts cut by cost over the trials, the longest path first
                planner = Planner(stage, ctx.workers, rates=ctx.rates, mode=ctx.schedule)
                for gid in planner.order:
                    planner.prune(gid, lambda part: runnable(part, outcomes, names))
                    for h in planner.groups[gid].hashes:
                        if h in outcomes:
                            view.set_state(h, outcomes[h])
                parts, span = planner.start_all()
                later = sum(
                    Planner(s, ctx.workers, rates=ctx.rates, mode=ctx.schedule).start_all()[1]
                    for s in all_stages[k + 1 :]
                )
                view.set_eta((span + later) * pace, len(parts))
                t_stage = time.monotonic()
                for p in parts:
                    for h in p.hashes:
                        ctx.item_of[h] = p.id
                        view.set_item(h, p.id)
                if not parts:
                    continue
                payloads = {p.id: p.payload() for p in parts}
                trainable = tune.with_parameters(
                    _trainable,
                    payloads=payloads,
                    work=str(ctx.work),
                    uri=ctx.tracking_uri,
                    threads=ctx.threads,
                    gpu=bool(gpu),
                )
                # a DDP item's trial only drives its TorchTrainer, whose workers hold the devices
                trainable = tune.with_resources(
                    trainable,
                    lambda config: (
                        {"cpu": DRIVER_CPU}
                        if payload_world_size(payloads[config["item"]]) > 1
                        else {"cpu": cpu, "gpu": gpu}
                    ),
                )
                tuner = tune.Tuner(
                    trainable,
                    param_space={"item": tune.grid_search([p.id for p in parts])},
                    tune_config=tune.TuneConfig(max_concurrent_trials=ctx.workers, reuse_actors=False),
                    run_config=tune.RunConfig(
                        name=f"kdgrid-{ctx.plan.scale}-{stamp}-stage{k}",
                        storage_path=str(ctx.work / "ray"),
                        verbose=0,
                        callbacks=[_ViewCallback(view, {p.id: p.hashes for p in parts})],
                        failure_config=tune.FailureConfig(max_failures=0),
                    ),
                )
                for result in tuner.fit():
                    item_id = result.config["item"]
                    part = next(p for p in parts if p.id == item_id)
                    got = json.loads((result.metrics or {}).get("kdgrid_results", "{}"))
                    if result.error is not None or not got:
                        reason = (
                            f"Ray trial of {item_id} ended without results: "
                            f"{type(result.error).__name__ if result.error else 'no report'}: "
                            f"{str(result.error).strip().splitlines()[-1] if result.error else ''} "
                            f"(log {log_path(ctx.work, item_id)}, trial dir {result.path})"
                        )
                        mark_abandoned(ctx, part.hashes, reason)
                        got = {h: f"failed: {reason}" for h in part.hashes}
                    for h, o in got.items():
                        outcomes[h] = o
                        view.set_state(h, o)
                if span > 0:
                    pace = (time.monotonic() - t_stage) / span
    finally:
        _VIEWS.pop(id(view), None)
        if not ctx.ray_address:
            ray.shutdown()
    return outcomes
