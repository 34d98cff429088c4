"""The Slurm launcher: submitit jobs, one per work item (or job arrays), students held by dependencies.

Resources come from a launcher config YAML (`--slurm-config`, validated by `SlurmConfig`; see
experiments/slurm.example.yaml), with per-role overrides (`teacher:` / `student:`).

- Each item becomes a `ItemJob`, a `submitit.helpers.Checkpointable`: on preemption or time-out submitit
  calls its `checkpoint()`, which resubmits it as it is, and the requeued job resumes every run from its
  last per-epoch checkpoint (the trainer reopens the same MLflow run).
- A job with several tasks (tasks_per_node x nodes) trains with DDP: each task sets RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR and MASTER_PORT from `submitit.JobEnvironment()` before calling the trainer,
  which initialises torch.distributed from them (NCCL on GPUs, gloo on CPUs) and scales the learning
  rate as DeiT does. Only rank 0 talks to MLflow.
- Students wait for their teachers' jobs with `--dependency=afterany:<jobid>`: the job starts once its
  teachers' jobs have ended, however they ended, and checks its teachers in MLflow first, so a student
  whose teacher failed or was cancelled is reported blocked at once instead of pending forever
  (`afterok` would leave it PENDING with DependencyNeverSatisfied when a teacher job is cancelled).
  `launch` can therefore submit the whole grid and return.
- Jobs run the launcher's own interpreter (`sys.executable`, or `python:` in the config) with the repo
  on PYTHONPATH; the MLflow URI they get is absolute (a SQLite path or a server URL), and the workdir
  and the submitit folder must be on a filesystem the nodes share.
- Submitted job ids are kept in `<folder>/kdgrid-jobs.json`: a second `launch` of the same grid while
  the first one's jobs are pending or running submits nothing for their runs (they are reported
  "running elsewhere") and makes its students depend on those jobs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.launch.dispatch import runnable
from orchestrator.launch.events import EpochEnded
from orchestrator.launch.items import LaunchContext, WorkItem, log_path
from orchestrator.launch.outcome import Outcome, blocked_by, parse_all
from orchestrator.launch.registry import Launcher, register
from orchestrator.launch.view import RunView
from orchestrator.launch.worker import REPO_ROOT, mark_abandoned, run_item
from trainer import atomic, telemetry

ALIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "PREEMPTED",
}


# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------
class Resources(BaseModel):
    """What one job asks Slurm for."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    tasks_per_node: int = Field(1, ge=1)  # one task per GPU for DDP
    cpus_per_task: int | None = Field(None, ge=1)  # default: --threads
    mem_gb: float | None = Field(None, gt=0)
    gpu_mem_gb: float | None = Field(None, gt=0)  # memory of one GPU on these nodes: sizes cohorts to fit
    timeout_min: int = Field(240, ge=1)  # a job that runs out of time checkpoints and is requeued
    signal_delay_s: int = Field(120, ge=0)  # how long before the time limit submitit is warned (SIGUSR2)
    additional: dict[str, Any] = Field(default_factory=dict)  # any other sbatch option: {"mail-type": "END"}
    setup: list[str] = Field(default_factory=list)  # shell lines run before the job (module load ...)
    srun_args: list[str] = Field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node


class SlurmConfig(Resources):
    """The launcher config: default resources, per-role overrides, and how jobs are submitted."""

    folder: str | None = None  # submitit's folder (job pickles and Slurm logs); default <workdir>/slurm
    python: str | None = None  # the interpreter the jobs run; default: the launcher's own (sys.executable)
    array: bool = True  # items of equal resources and deps go in one job array (executor.batch())
    array_parallelism: int = Field(16, ge=1)  # most tasks of one array running at once
    max_timeouts: int = Field(3, ge=0)  # requeues after time-outs (preemptions are not counted)
    poll_s: float = Field(10.0, gt=0)  # reproduce: how often to look at the jobs and MLflow
    lock_wait_s: float = Field(240.0, ge=0)  # a requeued job waits this long for its old locks to go stale
    teacher: dict[str, Any] = Field(default_factory=dict)  # Resources fields for teacher-training items
    student: dict[str, Any] = Field(default_factory=dict)  # Resources fields for student items

    def resources(self, role: str) -> Resources:
        base = {k: getattr(self, k) for k in Resources.model_fields}
        return Resources.model_validate({**base, **(self.teacher if role == "teacher" else self.student)})


def _hinted(resources: dict[str, Any]) -> dict[str, Any]:
    """A scale's `launch.resources` (nodes, gpus, cpus, mem_gb, time_min: per job) as Resources fields:
    one task per GPU, the CPUs shared among the tasks."""
    out: dict[str, Any] = {}
    if "nodes" in resources:
        out["nodes"] = resources["nodes"]
    if resources.get("gpus"):
        out["gpus_per_node"] = out["tasks_per_node"] = resources["gpus"]
    if "cpus" in resources:
        out["cpus_per_task"] = max(1, int(resources["cpus"]) // out.get("tasks_per_node", 1))
    if "mem_gb" in resources:
        out["mem_gb"] = resources["mem_gb"]
    if "time_min" in resources:
        out["timeout_min"] = resources["time_min"]
    return out


def load_config(path: str | None, threads: int = 1, hints: dict[str, Any] | None = None) -> SlurmConfig:
    """The config file's settings over the scale's `launch:` hints (resources, teacher_resources, slurm)
    over the defaults; cpus_per_task falls back to --threads."""
    from trainer.spec import SpecError, format_validation_error

    hints = hints or {}
    data: dict[str, Any] = {**_hinted(hints.get("resources") or {}), **(hints.get("slurm") or {})}
    teacher = _hinted(hints.get("teacher_resources") or {})
    if teacher:
        data["teacher"] = {**teacher, **data.get("teacher", {})}
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise SpecError([("", f"no such file {p}")], str(p))
        user = yaml.safe_load(p.read_text()) or {}
        if not isinstance(user, dict):
            raise SpecError([("", "a Slurm launcher config is a mapping of settings")], str(p))
        for role in ("teacher", "student"):
            if isinstance(user.get(role), dict) and isinstance(data.get(role), dict):
                user[role] = {**data[role], **user[role]}
        data.update(user)
    try:
        cfg = SlurmConfig.model_validate(data)
        for role in ("teacher", "student"):
            try:
                cfg.resources(role)
            except ValidationError as err:
                raise SpecError(format_validation_error(err, role), path) from None
    except ValidationError as err:
        raise SpecError(format_validation_error(err), path) from None
    if cfg.cpus_per_task is None:
        cfg.cpus_per_task = threads
    return cfg


# ---------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------
class ItemJob(submitit.helpers.Checkpointable):
    """A work item as a Slurm job; requeued as it is on preemption or time-out (`checkpoint()`)."""

    def __init__(self, payload: dict, work: str, tracking_uri: str, threads: int, lock_wait_s: float):
        self.payload, self.work, self.tracking_uri = payload, work, tracking_uri
        self.threads, self.lock_wait_s = threads, lock_wait_s

    def __call__(self) -> dict[str, str]:
        from trainer.distributed import shutdown

        env = submitit.JobEnvironment()
        rank = env.global_rank
        if env.num_tasks > 1:
            single = env.num_nodes == 1
            digits = re.sub(r"\D", "", str(env.job_id)) or "0"
            os.environ.update(
                RANK=str(rank),
                WORLD_SIZE=str(env.num_tasks),
                LOCAL_RANK=str(env.local_rank),
                MASTER_ADDR="127.0.0.1" if single else env.hostnames[0],
                MASTER_PORT=str(20000 + int(digits) % 20000),
            )
            if single:
                os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        try:
            return run_item(
                self.payload,
                work=self.work,
                tracking_uri=self.tracking_uri,
                threads=self.threads,
                rank=rank,
                lock_wait_s=self.lock_wait_s,
            )
        finally:
            shutdown()


# ---------------------------------------------------------------------------------------------------
# Submission
# ---------------------------------------------------------------------------------------------------
def _folder(cfg: SlurmConfig, ctx: LaunchContext) -> Path:
    return Path(cfg.folder).expanduser().resolve() if cfg.folder else ctx.work / "slurm"


class Ledger:
    """Every submission from this folder: {run hash: job id} and {job id: item id}."""

    def __init__(self, folder: Path):
        self.path = folder / "kdgrid-jobs.json"
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.runs: dict[str, str] = data.get("runs", {})
        self.items: dict[str, str] = data.get("items", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.path, json.dumps({"runs": self.runs, "items": self.items}, indent=1, sort_keys=True))


@dataclass
class Tracked:
    """A job this launch waits for: submitted now, or adopted from an earlier launch of the same grid."""

    job: Any  # submitit Job
    item: str
    hashes: list[str]  # the runs of this launch it trains
    adopted: bool = False


def _state(folder: Path, job_id: str) -> str:
    try:
        return submitit.SlurmJob(folder=folder, job_id=job_id).state
    except Exception:
        return "UNKNOWN"


def _executor(
    cfg: SlurmConfig, res: Resources, ctx: LaunchContext, folder: Path, name: str, after: list[str], array_size: int = 0
):
    ex = submitit.AutoExecutor(
        folder=folder,
        cluster="slurm",
        slurm_max_num_timeout=cfg.max_timeouts,
        slurm_python=cfg.python or shlex.quote(sys.executable),
    )
    threads = res.cpus_per_task or ctx.threads
    setup = [
        f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}",
        f"export MLFLOW_TRACKING_URI={shlex.quote(ctx.tracking_uri)}",
        *(f"export {k}={shlex.quote(v)}" for k, v in telemetry.environment().items()),  # whatever sbatch exports
        *res.setup,
    ]
    additional = dict(res.additional)
    if after:
        additional["dependency"] = "afterany:" + ":".join(after)
    params: dict[str, Any] = dict(
        name=name,
        timeout_min=res.timeout_min,
        nodes=res.nodes,
        tasks_per_node=res.tasks_per_node,
        cpus_per_task=threads,
        gpus_per_node=res.gpus_per_node,
        mem_gb=res.mem_gb,
        slurm_partition=res.partition,
        slurm_account=res.account,
        slurm_qos=res.qos,
        slurm_constraint=res.constraint,
        slurm_signal_delay_s=res.signal_delay_s,
        slurm_setup=setup,
        slurm_srun_args=res.srun_args or None,
        slurm_additional_parameters=additional or None,
    )
    if array_size:
        params["slurm_array_parallelism"] = min(cfg.array_parallelism, array_size)
    if not res.gpus_per_node:
        params.pop("gpus_per_node")
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex, threads


def _adopt(items: list[WorkItem], folder: Path, ledger: Ledger, outcomes: dict[str, Outcome], view) -> dict:
    """{job id: hashes} of the runs a live job of an earlier launch from this folder holds: 'running
    elsewhere', not submitted again."""
    adopted: dict[str, list[str]] = {}
    for h in (h for it in items for h in it.hashes):
        old = ledger.runs.get(h)
        if old and _state(folder, old) in ALIVE:
            adopted.setdefault(old, []).append(h)
            outcomes[h] = Outcome("running elsewhere", f"Slurm job {old} of an earlier launch")
            if view is not None:
                view.set_state(h, outcomes[h], quiet=True)
    return adopted


def _batches(items: list[WorkItem], level: int, outcomes, job_of_run) -> dict[tuple[str, tuple[str, ...]], list]:
    """Items of one level that can share a job array: same role (resources) and same dependency jobs (the
    jobs of earlier levels, submitted just before, or adopted); runs with an outcome already are left out."""
    batches: dict[tuple[str, tuple[str, ...]], list[WorkItem]] = {}
    for it in items:
        runs = [r for r in it.runs if r.hash not in outcomes]
        if it.level != level or not runs:
            continue
        after = tuple(sorted({job_of_run[d] for r in runs for d in r.deps if d in job_of_run}))
        batches.setdefault((it.role, after), []).append(
            WorkItem(id=it.id, runs=runs, deps=it.deps, key=it.key, level=it.level)
        )
    return batches


def _submit_batch(role: str, after: tuple[str, ...], subs: list[WorkItem], ctx, cfg, folder) -> list:
    """One batch as Slurm jobs (a job array when there are several and `array` is on); the jobs, in order."""
    use_array = cfg.array and len(subs) > 1
    ex, threads = _executor(
        cfg,
        cfg.resources(role),
        ctx,
        folder,
        f"kdgrid-{ctx.plan.scale}-{role}",
        list(after),
        len(subs) if use_array else 0,
    )
    calls = [ItemJob(s.payload(), str(ctx.work), ctx.tracking_uri, threads, cfg.lock_wait_s) for s in subs]
    if not use_array:
        return [ex.submit(c) for c in calls]
    with ex.batch():
        return [ex.submit(c) for c in calls]


def submit(
    items: list[WorkItem],
    ctx: LaunchContext,
    outcomes: dict[str, Outcome],
    cfg: SlurmConfig,
    view: RunView | None = None,
) -> list[Tracked]:
    """Submit every item, deps first. Runs that a live job of an earlier launch from the same folder
    holds are not submitted again: that job is adopted (waited for) and serves as their students'
    dependency."""
    folder = _folder(cfg, ctx)
    folder.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(folder)
    adopted = _adopt(items, folder, ledger, outcomes, view)
    job_of_run = {h: j for j, hs in adopted.items() for h in hs}  # run hash -> job id, for the students
    tracked = [
        Tracked(submitit.SlurmJob(folder=folder, job_id=j), ledger.items.get(j, j), hs, adopted=True)
        for j, hs in adopted.items()
    ]
    if adopted:
        ctx.console.print(
            f"{len(job_of_run)} run(s) already in Slurm job(s) of an earlier launch: "
            f"{', '.join(adopted)}; not submitted again",
            highlight=False,
        )
    for level in sorted({it.level for it in items}):
        for (role, after), subs in sorted(_batches(items, level, outcomes, job_of_run).items()):
            submitted = _submit_batch(role, after, subs, ctx, cfg, folder)
            for s, job in zip(subs, submitted):
                tracked.append(Tracked(job, s.id, s.hashes))
                ledger.items[job.job_id] = s.id
                for h in s.hashes:
                    job_of_run[h] = ledger.runs[h] = job.job_id
                    outcomes[h] = Outcome(
                        "submitted", f"Slurm job {job.job_id}" + (f" (after {', '.join(after)})" if after else "")
                    )
                    if view is not None:
                        view.set_state(h, outcomes[h], quiet=True)
            ledger.save()
            ctx.console.print(
                f"submitted {len(subs)} {role} item(s) as Slurm job(s) "
                f"{', '.join(j.job_id for j in submitted)}" + (f" after {', '.join(after)}" if after else ""),
                highlight=False,
            )
    return tracked


# ---------------------------------------------------------------------------------------------------
# Waiting
# ---------------------------------------------------------------------------------------------------
def _job_failure(t: Tracked, ctx: LaunchContext, err: BaseException) -> str:
    state = _state(Path(t.job.paths.folder), t.job.job_id)
    last = str(err).strip().splitlines()
    text = last[-1] if last else type(err).__name__
    return (
        f"Slurm job {t.job.job_id} {state}: {text[:300]} (log {log_path(ctx.work, t.item)}, "
        f"Slurm log {t.job.paths.stderr})"
    )


def _poll_mlflow(view: RunView, ctx: LaunchContext, hashes: list[str], seen: dict[str, int]) -> None:
    """Epochs logged since the last poll become view events."""
    from trainer import tracking

    if not hashes:
        return
    c = tracking.client(ctx.tracking_uri)
    for h, run in tracking.runs_by_hash(c, ctx.plan.scale, hashes).items():
        try:
            hist = tracking.retry(c.get_metric_history, run.info.run_id, "val.top1")
        except Exception:
            continue
        epochs = sorted({m.step for m in hist})
        for e in epochs:
            if e > seen.get(h, 0):
                seen[h] = e
                view.handle(EpochEnded(h, e - 1, dict(run.data.metrics) if e == epochs[-1] else {}))


def _results(t: Tracked, ctx: LaunchContext, runs: dict, outcomes: dict[str, Outcome]) -> dict[str, Outcome]:
    """What an ended job says of its runs; a job that failed fails them, in MLflow too."""
    try:
        got = parse_all(t.job.results()[0])
    except Exception as err:
        reason = _job_failure(t, ctx, err)
        mark_abandoned(ctx, t.hashes, reason)
        got = {h: Outcome("failed", reason) for h in t.hashes}
    out = {}
    for h in t.hashes:
        o = got.get(h, Outcome("failed", f"Slurm job {t.job.job_id} returned no result for this run"))
        if o.kind == "blocked" and any(d in outcomes and outcomes[d].bad for d in runs[h].deps):
            o = blocked_by(runs[h], outcomes, ctx.names) or o  # the teacher's fate in this launch
        out[h] = o
    return out


def _wait(tracked: list[Tracked], ctx: LaunchContext, cfg, runs: dict, outcomes, view: RunView) -> None:
    """Poll the jobs until every one has ended; settle each one's runs as it ends."""
    seen: dict[str, int] = {}
    running: set[str] = set()
    while tracked:
        time.sleep(cfg.poll_s)
        for t in list(tracked):
            if not t.job.done():
                if t.job.state == "RUNNING" and t.job.job_id not in running:
                    running.add(t.job.job_id)
                    for h in t.hashes:
                        view.set_state(h, Outcome("running", f"Slurm job {t.job.job_id}"))
                continue
            tracked.remove(t)
            running.discard(t.job.job_id)
            for h, o in _results(t, ctx, runs, outcomes).items():
                outcomes[h] = o
                view.set_state(h, o)
        _poll_mlflow(view, ctx, [h for t in tracked if t.job.job_id in running for h in t.hashes], seen)


@register
class Slurm(Launcher):
    """submitit jobs, one per work item or job arrays, students held by `--dependency`."""

    name = "slurm"
    detaches = True  # `kdgrid launch` submits and returns
    scheduled = False  # Slurm starts the jobs; cohorts are cut by count when the items are made

    def parallelism(self, ctx: LaunchContext) -> int:
        return load_config(ctx.options.slurm_config, ctx.threads, ctx.hints).array_parallelism

    def devices(self, ctx: LaunchContext):
        """(the world size of a run's job, the config that sets it): its role's nodes x tasks_per_node, which
        the plan-time checks hold against the run's global batch (plan/checks.py)."""
        cfg = load_config(ctx.options.slurm_config, ctx.threads, ctx.hints)
        sizes = {role: cfg.resources(role).world_size for role in ("teacher", "student")}
        return (lambda run: sizes[run.role]), ctx.options.slurm_config or "the Slurm launcher's defaults"

    def memory_budget(self, ctx: LaunchContext) -> int | None:
        """Bytes one student job may hold per process: 90% of a GPU (`gpu_mem_gb`), else 80% of `mem_gb`."""
        r = load_config(ctx.options.slurm_config, ctx.threads, ctx.hints).resources("student")
        if r.gpus_per_node:
            return int(0.9 * r.gpu_mem_gb * 2**30) if r.gpu_mem_gb else None
        return int(0.8 * r.mem_gb * 2**30 / r.tasks_per_node) if r.mem_gb else None

    def launch(self, items: list[WorkItem], ctx: LaunchContext, outcomes: dict[str, Outcome]) -> None:
        cfg = load_config(ctx.options.slurm_config, ctx.threads, ctx.hints)
        # Students of runs that failed earlier are not submitted; everything else goes in, deps first.
        todo = [p for it in items if (p := runnable(it, outcomes, ctx.names)) is not None]
        item_of = {h: it.id for it in items for h in it.hashes}
        runs = {r.hash: r for it in items for r in it.runs}
        view = RunView(
            list(runs.values()),
            item_of,
            ctx.console,
            title=f"kdgrid {ctx.plan.scale}: {len(items)} item(s) as Slurm jobs",
        )
        for h, o in outcomes.items():
            if h in item_of:
                view.set_state(h, o, quiet=True)
        tracked = submit(todo, ctx, outcomes, cfg, view)
        if not ctx.wait:
            ctx.console.print(
                f"{len(tracked)} Slurm job(s) hold the missing runs; follow them with squeue, or wait "
                "for them and the report with `kdgrid reproduce` and the same options (it submits "
                "nothing twice)",
                highlight=False,
            )
            return
        with view:
            _wait(tracked, ctx, cfg, runs, outcomes, view)


__all__ = ["SlurmConfig", "Resources", "load_config", "ItemJob", "submit", "Slurm"]
