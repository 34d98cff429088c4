"""Starting a cohort: which runs this process trains (claimed against MLflow and the run locks), the data
and precision they share, each member built and resumed from its newest sound checkpoint of this code's
numerics version with its MLflow run opened, and the teacher loaded and measured."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer import data as data_mod
from trainer import dataset_inputs, numerics, tracking, workdir
from trainer.distributed import DistEnv, broadcast_flags
from trainer.engine.cohort import Cohort
from trainer.engine.member import build_member, precision_of
from trainer.engine.runlog import backfill, log_datasets, log_start, warn_resume
from trainer.engine.teacher import evaluate_teacher, load_teacher
from trainer.protocol import run_protocol
from trainer.spec import ExperimentSpec, accumulation_steps


@dataclass(frozen=True)
class Session:
    """Where this process trains and records: its place in the job, the work directory, MLflow (a client on
    rank 0 only), and whether finished runs train again (`force`)."""

    env: DistEnv
    wd: Path
    client: Any
    tracking_uri: str | None
    force: bool = False


def claim(specs: list[ExperimentSpec], session: Session, results: dict[str, str]):
    """Which runs to train: not finished in MLflow, not locked by another process (rank 0 decides).
    Returns (specs to train, the locks taken); the others' outcomes go into `results`."""
    todo, locks = [], {}
    for s in dict((s.content_hash(), s) for s in specs).values():
        ok = True
        if session.env.main:
            ok = _claim_one(s, session, locks, results)
        todo.append((s, ok))
    flags = broadcast_flags([ok for _, ok in todo], session.env.device)
    return [s for (s, _), ok in zip(todo, flags) if ok], locks


def _claim_one(s: ExperimentSpec, session: Session, locks: dict, results: dict[str, str]) -> bool:
    h = s.content_hash()
    run = tracking.runs_by_hash(session.client, s.scale, [h]).get(h)
    if run is not None and run.info.status == "FINISHED" and not session.force:
        results[h] = "skipped: finished in MLflow"
        return False
    lock = workdir.RunLock(workdir.run_dir(session.wd, h))
    try:
        lock.acquire()
    except workdir.LockHeld as err:
        results[h] = f"locked: {err}"
        return False
    locks[h] = lock
    return True


def new_cohort(spec: ExperimentSpec, env: DistEnv, callbacks: tuple) -> Cohort:
    """The cohort's data, in micro-batches that make up the global batch on this world size, its precision
    and mixup; no member yet. Raises ValueError when the protocol cannot be met here."""
    accumulation = accumulation_steps(spec.recipe, env.world_size)
    train_data, val_data = data_mod.build(spec.data, spec.recipe.batch_size, env.rank, env.world_size, accumulation)
    cohort = Cohort(
        spec=spec,
        members=[],
        train_data=train_data,
        val_data=val_data,
        env=env,
        precision=precision_of(spec, env.device),
        accumulation=accumulation,
        callbacks=callbacks,
        mixup=data_mod.mixup_fn(spec.data),
    )
    if cohort.steps == 0:
        raise ValueError(
            f"the training set has fewer images than one global batch of {spec.recipe.global_batch_at(env.world_size)}"
        )
    return cohort


def open_members(cohort: Cohort, specs: list[ExperimentSpec], session: Session, cpu0: float) -> None:
    """Each run opened into `cohort.members` (so that a failure half-way closes those already open), then the
    teacher loaded and measured; the set-up's CPU seconds since `cpu0` are split evenly among the runs."""
    for s in specs:
        _open_member(s, cohort, session)
    if cohort.spec.teacher is not None:
        cohort.teacher = load_teacher(cohort.spec, session.wd, session.tracking_uri, cohort.env.device)
        taps = {b for m in cohort.members for b in m.t_taps}
        cohort.t_blocks = tuple(sorted(taps, key=lambda t: (isinstance(t, str), str(t).zfill(9))))
        evaluate_teacher(cohort)
    share = (time.process_time() - cpu0) / len(cohort.members)
    if cohort.env.main:
        for m in cohort.members:
            m.run.log_metrics({"cost.setup_cpu_s": share}, step=m.start_epoch)


def protocol(cohort: Cohort) -> dict[str, Any]:
    """How this process runs the cohort's members (run_protocol's arguments but the spec)."""
    return dict(
        world_size=cohort.env.world_size,
        accumulation=cohort.accumulation,
        precision=cohort.precision.label,
        train_images=dataset_inputs.count(cohort.train_data),
        val_images=dataset_inputs.count(cohort.val_data),
    )


def _open_member(s: ExperimentSpec, cohort: Cohort, session: Session) -> None:
    """A member built into `cohort.members`, resumed from its checkpoint when a sound one is left, and its
    MLflow run opened: the checkpoint's, else the hash's, unless that holds another numerics version."""
    env = cohort.env
    m = build_member(s, env, session.wd, cohort.steps)
    cohort.members.append(m)  # from here on, a failure closes its run
    state, rejected = workdir.Resume(None, []) if session.force else workdir.load_checkpoint(m.dir / "checkpoint.pt")
    if state is not None and numerics.checkpoint_version(state) != numerics.NUMERICS_VERSION:
        rejected.append(f"its checkpoint holds numerics version {numerics.checkpoint_version(state)}")
        state = None
    if state is not None:
        m.restore(state)
    if env.main:
        m.dir.mkdir(parents=True, exist_ok=True)
        workdir.remove_temporary(m.dir)
        (m.dir / "spec.yaml").write_text(s.to_yaml())
        run_id, new = _run_to_reopen(session, s, m.hash, state.get("run_id") if state else None)
        m.run = tracking.RunLog.open(session.client, s, m.hash, run_id, new=new)
        log_start(m, env, run_protocol(s, **protocol(cohort)), cohort.precision.name)
        log_datasets(m, cohort.train_data, cohort.val_data)
        m.run.start_system_metrics(torch.device(env.device).index or 0 if env.device.startswith("cuda") else None)
        backfill(m)
    if rejected:
        warn_resume(m, rejected)
    for cb in cohort.callbacks:
        cb.on_start(m.hash, s, m.start_epoch, cohort.steps)


def _run_to_reopen(session: Session, s: ExperimentSpec, h: str, run_id: str | None) -> tuple[str | None, bool]:
    """(run id, new): the MLflow run a resume goes on in (the checkpoint's, else the hash's newest). One that
    holds another numerics version is not mixed with this code's numbers: it is closed (KILLED, if it was
    left open) and a new run opened; `force` always opens a new one."""
    if session.force:
        return None, True
    c = session.client
    prior = None
    if run_id is not None:
        try:
            prior = tracking.retry(c.get_run, run_id)
        except Exception:  # the store was reset since the checkpoint was written
            prior = None
    prior = prior or tracking.runs_by_hash(c, s.scale, [h]).get(h)
    if prior is None:
        return None, True
    if numerics.matches(prior.data.tags):
        return prior.info.run_id, False
    if prior.info.status in ("RUNNING", "SCHEDULED"):
        tracking.retry(c.set_terminated, prior.info.run_id, "KILLED")
    return None, True
