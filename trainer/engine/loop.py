"""The cohort loop: claim the runs, start the cohort, train every member epoch by epoch, end each run.

Each epoch goes in micro-batches: every batch is augmented once and goes through the teacher once, then
each member takes its own step. Nothing syncs the host inside a step except at logging intervals
(`recipe.log_every` steps, or trainer.progress's seconds if that comes first, in a single process), where
the loss terms are read and checked finite and the callbacks told. A member that fails (an error in
its step, a non-finite loss, a full disk at its checkpoint) leaves the cohort with its reason; the others
go on.
"""

from __future__ import annotations

import math
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from trainer import progress, tracking, workdir
from trainer.data import micro_seed
from trainer.distributed import DistEnv
from trainer.engine import ema
from trainer.engine.cohort import Batch, Callback, Cohort, NonFiniteLoss, cohort_key
from trainer.engine.evaluation import evaluate
from trainer.engine.member import Member
from trainer.engine.runlog import PREDICTIONS, fail, finish, interrupted, save_predictions
from trainer.engine.start import Session, claim, new_cohort, open_members
from trainer.engine.step import finite_terms, mean_terms, micro_step, optimizer_step
from trainer.engine.teacher import teacher_forward
from trainer.spec import ExperimentSpec
from trainer.throughput import EpochMeter


def train(
    specs: list[ExperimentSpec],
    *,
    env: DistEnv | None = None,
    work: str | Path = "kdgrid_runs",
    tracking_uri: str | None = None,
    callbacks: tuple[Callback, ...] = (),
    force: bool = False,
) -> dict[str, str]:
    """Train `specs` (one cohort) to completion. Returns {hash: finished|skipped|locked|failed: reason}."""
    env = env or DistEnv(device="cuda" if torch.cuda.is_available() else "cpu")
    cpu0 = time.process_time()
    if len({cohort_key(s) for s in specs}) != 1:
        raise ValueError("a cohort's runs must share teacher, data, seed and batch size (cohort_key)")
    client = tracking.client(tracking_uri) if env.main else None
    session = Session(env, Path(work).expanduser().resolve(), client, tracking_uri, force)
    results: dict[str, str] = {}
    todo, locks = claim(specs, session, results)
    if not todo:
        return results
    members: list[Member] = []
    try:
        cohort = new_cohort(todo[0], env, tuple(callbacks))  # ValueError: the protocol cannot be met here
        members = cohort.members
        open_members(cohort, todo, session, cpu0)
        run_epochs(cohort)
        end_runs(cohort, results)
    except BaseException as err:  # KeyboardInterrupt, SIGTERM from a scheduler, ...
        interrupted(members, set(results), err)
        raise
    finally:
        for m in members:
            if m.run is not None:
                m.run.stop_system_metrics()
        for lock in locks.values():
            lock.release()
    for m in members:
        if m.failed:
            for cb in callbacks:
                cb.on_end(m.hash, "failed", m.failed)
    return results


def run_epochs(c: Cohort) -> None:
    """Every member from its own start epoch to its own last one; a failed member leaves the cohort."""
    for epoch in range(min(m.start_epoch for m in c.members), max(m.epochs for m in c.members)):
        active = [m for m in c.members if m.start_epoch <= epoch < m.epochs and not m.failed]
        if not active:
            continue
        cpu_epoch = time.process_time()
        meter = EpochMeter(c.env.device, c.env.world_size)
        train_epoch(c, active, epoch, meter)
        meter.stop()
        share = (time.process_time() - cpu_epoch) / len(active)
        for m in active:
            if m.failed:
                continue
            # A full disk fails this run at its checkpoint. Not on one rank alone: the others would wait for it
            # in its next all-reduce, so there the error ends the job (each run FAILED with the reason).
            with member_guard(m) if c.env.world_size == 1 else nullcontext():
                metrics = end_epoch(c, m, epoch, share, meter.metrics(m.hash, len(active)))
            if m.failed:
                continue
            for cb in c.callbacks:
                cb.on_epoch(m.hash, epoch, metrics)


def train_epoch(c: Cohort, active: list[Member], epoch: int, meter: EpochMeter | None = None) -> None:
    """One epoch in micro-batches: this rank's i-th is global micro-batch j = i x world + rank, accumulation
    step i mod A of optimizer step i // A; everything random in it is keyed to (seed, epoch, j)."""
    for m in active:
        m.student.train()
        m.sums, m.count = {}, 0
    meter = meter or EpochMeter(c.env.device, c.env.world_size)
    t0 = time.perf_counter()
    # Every rank must report at the same steps (the loss terms are all-reduced): by the clock only alone.
    every_s = progress.interval_s() if c.env.world_size == 1 else math.inf
    due = t0 + every_s
    for i, (x, y) in enumerate(meter.batches(c.train_data.epoch(c.spec.seed, epoch))):
        step, acc = divmod(i, c.accumulation)
        last = acc == c.accumulation - 1
        b = _batch(c, x, y, epoch, i * c.env.world_size + c.env.rank, meter)
        for m in active:
            if m.failed:
                continue
            with member_guard(m), meter.part(m.hash):
                micro_step(m, b, last, c.accumulation, c.precision)
                if last:
                    optimizer_step(m, epoch * m.steps + step)
        now = time.perf_counter()
        if last and ((step + 1) % c.spec.recipe.log_every == 0 or step + 1 == c.steps or now >= due):
            _report_progress(c, active, epoch, step, now - t0, meter.images * c.env.world_size / max(now - t0, 1e-9))
            due = time.perf_counter() + every_s


def _batch(c: Cohort, x, y, epoch: int, j: int, meter: EpochMeter) -> Batch:
    """Global micro-batch j on the device, mixed (mixup), with the teacher's outputs for every member."""
    seed = c.spec.seed
    x, y = x.to(c.env.device, non_blocking=True), y.to(c.env.device, non_blocking=True)
    target = y
    if c.mixup is not None:  # timm's Mixup draws from numpy's global RNG: make it a function of the micro-batch
        np.random.seed(micro_seed(seed, epoch, j, "mixup") % 2**32)
        x, target = c.mixup(x, y)
    t_logits, t_feats = None, {}
    if c.teacher is not None:
        with meter.part("teacher"):
            t_logits, t_feats = teacher_forward(c.teacher, x, c.t_blocks, c.precision.autocast)
    return Batch(x, target, t_logits, t_feats, micro_seed(seed, epoch, j, "member"))


@contextmanager
def member_guard(m: Member):
    """One student's failure does not stop its cohort: an error fails that member's run with its reason."""
    try:
        yield
    except (NonFiniteLoss, workdir.DiskFull) as err:  # a diagnosis, not a bug: no traceback
        fail(m, f"{type(err).__name__}: {err}", None)
    except Exception as err:
        fail(m, f"{type(err).__name__}: {err}", traceback.format_exc())


def _report_progress(c: Cohort, active: list[Member], epoch: int, step: int, elapsed: float, images_s: float) -> None:
    """A logging interval: each member's mean loss terms so far, checked finite, to the callbacks, with the
    epoch's pace (seconds per step, images per second of the cohort)."""
    for m in active:
        if m.failed:
            continue
        with member_guard(m):
            values = finite_terms(m, epoch, step)  # the host sync of a logging interval
        if m.failed:
            continue
        values["lr"] = m.optimizer.param_groups[0]["lr"]
        values["step_time_s"] = elapsed / (step + 1)
        values["images_per_s"] = images_s
        for cb in c.callbacks:
            cb.on_progress(m.hash, epoch, step + 1, values)


def end_epoch(c: Cohort, m: Member, epoch: int, train_cpu_s: float, measured: dict[str, float]) -> dict[str, float]:
    """The epoch's metrics (train loss terms, validation, EMA's, lr, time and CPU cost), checkpointed first,
    then logged with this process's `measured` throughput (logged, not checkpointed): a kill in between loses
    no epoch and logs none twice (runlog.backfill), and an epoch MLflow holds already (trained again from an
    older checkpoint, to the same numbers) is not logged again."""
    t_eval, cpu_eval = time.perf_counter(), time.process_time()
    metrics = {f"train.{k}": v.item() for k, v in mean_terms(m).items()}
    last = epoch + 1 == m.epochs and c.env.world_size == 1  # a rank's predictions are a shard: single process only
    m.predictions = {} if last else None
    autocast, device = c.precision.autocast, c.env.device
    for prefix, weights in ema.evaluated(m.spec, m.core.model, m.ema):  # the run's own (`val`) first
        preds = m.predictions if prefix == "val" else None
        metrics.update({f"{prefix}.{k}": v for k, v in evaluate(weights, c.val_data, device, autocast, preds).items()})
    metrics["lr"] = m.optimizer.param_groups[0]["lr"]
    metrics["eval_time_s"] = time.perf_counter() - t_eval
    metrics["cost.cpu_s"] = train_cpu_s + time.process_time() - cpu_eval  # this run's share of the epoch
    metrics[tracking.TRAIN_SHARE] = train_cpu_s  # equal for the process's members: costs regroups on it
    m.best_top1 = max(m.best_top1, metrics["val.top1"])
    metrics["val.best_top1"] = m.best_top1
    m.history.append({"epoch": epoch + 1, **metrics})
    m.start_epoch = epoch + 1
    if c.env.main:
        if m.predictions:  # on disk before the checkpoint: a run killed before it finishes still logs them
            save_predictions(m, PREDICTIONS, m.predictions)
        workdir.save_checkpoint(m.state(epoch + 1), m.dir / "checkpoint.pt", epoch + 1)
        if epoch + 1 not in m.logged:
            m.run.log_metrics(metrics | measured, step=epoch + 1)
            m.logged.add(epoch + 1)
    return metrics


def end_runs(c: Cohort, results: dict[str, str]) -> None:
    """Each member's outcome into `results`: finished (final weights and metrics logged) or failed: reason."""
    for m in c.members:
        if m.failed:
            results[m.hash] = f"failed: {m.failed}"
            continue
        if c.env.main:
            finish(m)
        results[m.hash] = "finished"
        for cb in c.callbacks:
            cb.on_end(m.hash, "finished", None)
