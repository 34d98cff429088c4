"""The Ray launcher: one Ray Tune trial per work item, dependency stage by dependency stage.

Ray is started here for the call (`ray.init(include_dashboard=False, num_cpus=...)`, bound to
127.0.0.1) or joined with `--ray-address` (an existing cluster: the workdir and the MLflow store must
be reachable from every node, e.g. a shared filesystem and an MLflow server; kdgrid's own code is
shipped to the workers with the job, the dependencies must be installed there, as in docker/).

With the cost schedule (the default) each stage's cohorts are cut by estimated cost over the trials that
run at once and handed to Tune longest path first (launch/scheduler.py); the view shows the grid's ETA.
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

from orchestrator.launch import events
from orchestrator.launch.dispatch import Dispatch
from orchestrator.launch.items import LaunchContext, WorkItem, devices_per_run, log_path, payload_world_size, stages
from orchestrator.launch.outcome import Outcome, parse_all
from orchestrator.launch.registry import Launcher, register
from orchestrator.launch.scheduler import Scheduler
from orchestrator.launch.view import RunView
from orchestrator.launch.worker import REPO_ROOT, run_item
from trainer import telemetry


def _init(ctx: LaunchContext) -> None:
    init_ray(ctx.options.ray_address, ctx.tracking_uri)


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
                # the trials' telemetry off too (a cluster's own usage stats are its `ray start`'s to set)
                "env_vars": {"MLFLOW_TRACKING_URI": tracking_uri, **telemetry.environment()},
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


class _Report(events.Emitter):
    """Engine callback inside a trial: run starts, epochs and ends become Tune results (or, inside a Ray
    Train worker, Train reports: every rank calls them alike, as Ray Train requires)."""

    def __init__(self, train: bool = False):
        if train:
            import ray.train

            report = ray.train.report
        else:
            from ray import tune

            report = tune.report
        super().__init__(lambda ev: report({"kdgrid_event": events.to_json(ev), **_flat(ev)}))

    def on_progress(self, run_hash, epoch, step, metrics) -> None:
        pass  # per-step progress stays in the item's log; Tune gets epochs


def _flat(ev) -> dict:
    """An epoch's metrics as Tune result fields (no dots in Tune's names)."""
    if not isinstance(ev, events.EpochEnded):
        return {}
    return {"run": ev.run, "epoch": ev.epoch + 1, **{k.replace(".", "_"): float(v) for k, v in ev.metrics.items()}}


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
            _VIEWS[self.key][0].handle(events.from_json(ev))

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.key in _VIEWS:
            view, hashes = _VIEWS[self.key]
            for h in hashes.get(trial.config.get("item"), ()):
                view.set_state(h, Outcome("running", "trial started"), quiet=True)


def _tuner(parts: list[WorkItem], ctx: LaunchContext, view: RunView, name: str):
    """A Tuner with one trial per part: `run_item` on `--threads` CPUs (and a GPU where the cluster has
    GPUs); a DDP part's trial only drives its TorchTrainer, whose workers hold the devices."""
    from ray import tune

    hints = ctx.hints.get("ray") or {}  # a scale's `launch.ray: {cpus: .., gpus: ..}` per trial
    cpu, gpu = hints.get("cpus", ctx.threads), hints.get("gpus", 1 if _gpus() else 0)
    payloads = {p.id: p.payload() for p in parts}
    ddp = {i for i, pl in payloads.items() if payload_world_size(pl) > 1}
    trainable = tune.with_parameters(
        _trainable, payloads=payloads, work=str(ctx.work), uri=ctx.tracking_uri, threads=ctx.threads, gpu=bool(gpu)
    )
    trainable = tune.with_resources(
        trainable, lambda config: {"cpu": DRIVER_CPU} if config["item"] in ddp else {"cpu": cpu, "gpu": gpu}
    )
    return tune.Tuner(
        trainable,
        param_space={"item": tune.grid_search([p.id for p in parts])},
        tune_config=tune.TuneConfig(max_concurrent_trials=ctx.workers, reuse_actors=False),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(ctx.work / "ray"),
            verbose=0,
            callbacks=[_ViewCallback(view, {p.id: p.hashes for p in parts})],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _settle(result, parts: list[WorkItem], dispatch: Dispatch, ctx: LaunchContext) -> None:
    """A trial's end: its part's outcomes, or, for a trial that ended without them, a failure saying why."""
    part = next(p for p in parts if p.id == result.config["item"])
    got = json.loads((result.metrics or {}).get("kdgrid_results", "{}"))
    if result.error is None and got:
        dispatch.ended(part, parse_all(got))
        return
    err = result.error
    dispatch.died(
        part,
        f"Ray trial of {part.id} ended without results: "
        f"{type(err).__name__ if err else 'no report'}: "
        f"{str(err).strip().splitlines()[-1] if err else ''} "
        f"(log {log_path(ctx.work, part.id)}, trial dir {result.path})",
    )


def _span(stage: list[WorkItem], ctx: LaunchContext) -> float:
    """The estimated makespan of a stage still to come."""
    return Scheduler(stage, ctx.workers, rates=ctx.rates, mode=ctx.schedule).start_all()[1]


@register
class Ray(Launcher):
    """Ray Tune trials, one per work item (part), stage by stage."""

    name = "ray"

    def parallelism(self, ctx: LaunchContext) -> int:
        """Trials the cluster can hold at once: its GPUs, else its CPUs over --threads."""
        import ray

        _init(ctx)
        per_item = devices_per_run(ctx.plan.runs)
        return max(1, (_gpus() or int(ray.cluster_resources().get("CPU", 1)) // max(1, ctx.threads)) // per_item)

    def launch(self, items: list[WorkItem], ctx: LaunchContext, outcomes: dict[str, Outcome]) -> None:
        import ray

        if not ctx.wait:
            raise RuntimeError("the Ray launcher drives its trials from this process: `kdgrid launch` detaches it")
        _init(ctx)
        view = RunView(
            [r for it in items for r in it.runs],
            {h: it.id for it in items for h in it.hashes},
            ctx.console,
            title=f"kdgrid {ctx.plan.scale}: {len(items)} item(s) as Ray Tune trials",
        )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        all_stages = stages(items)
        pace = 1.0  # wall seconds per estimated second, from the stages done (the ETA follows the machine)
        try:
            with view:
                for k, stage in enumerate(all_stages):
                    dispatch = Dispatch(stage, ctx, outcomes, view, ctx.workers)
                    parts, span = dispatch.start_all()  # cost schedule: cut by cost, the longest path first
                    later = sum(_span(s, ctx) for s in all_stages[k + 1 :])
                    view.set_eta((span + later) * pace, len(parts))
                    if not parts:
                        continue
                    t_stage = time.monotonic()
                    for result in _tuner(parts, ctx, view, f"kdgrid-{ctx.plan.scale}-{stamp}-stage{k}").fit():
                        _settle(result, parts, dispatch, ctx)
                    if span > 0:
                        pace = (time.monotonic() - t_stage) / span
        finally:
            _VIEWS.pop(id(view), None)
            if not ctx.options.ray_address:
                ray.shutdown()
