"""The body of a worker, whoever started it (a local process, a Ray trial, a Slurm task): train one work
item and return what became of each of its runs; and what a launcher does when a worker died instead.

`run_item` re-checks each run's teachers in MLflow (a student whose teacher did not finish is blocked,
never trained), sends the item's output to `<workdir>/logs/<item>.log`, and trains through
`trainer.run.train_specs`. Its results are text ({hash: "finished" | "failed: reason" | ...}, the engine's
words), so they cross any process boundary; launchers read them with `outcome.parse_all`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterable
from pathlib import Path

from orchestrator.launch.items import LaunchContext, log_path
from trainer import tracking

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout whose trainer/ and orchestrator/ workers run


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C and child output too) to
    `path`, appended; restore them afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1), os.dup2(fd, 2)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def teacher_problems(payload: dict, tracking_uri: str) -> dict[str, str]:
    """Runs of the item whose teachers have not finished in MLflow -> 'blocked: ...'."""
    deps = {d for ds in payload["deps"].values() for d in ds}
    if not deps:
        return {}
    found = tracking.runs_by_hash(tracking.client(tracking_uri), payload["scale"], deps)
    out = {}
    for h, ds in payload["deps"].items():
        for d in ds:
            run = found.get(d)
            if tracking.finished(run):
                continue
            why = (
                "never started"
                if run is None
                else (run.data.tags.get(tracking.FAILURE) or f"its MLflow run is {run.info.status}")
            )
            out[h] = f"blocked: teacher {d[:8]} has not finished ({why})"
            break
    return out


def wait_for_locks(work: str | Path, hashes: list[str], timeout_s: float) -> None:
    """Wait (at most `timeout_s`) while a live owner holds any of these runs' locks."""
    from trainer import workdir

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = [h for h in hashes if workdir.RunLock(workdir.run_dir(work, h)).held()]
        if not held:
            return
        print(f"waiting for the lock of {len(held)} run(s) held elsewhere: {' '.join(held)}", flush=True)
        time.sleep(min(20.0, max(1.0, deadline - time.monotonic())))


def _specs(payload: dict) -> list:
    """The item's specs, each checked to hash as the launcher planned it."""
    from trainer.spec import parse_experiment

    specs = []
    for h, data in zip(payload["hashes"], payload["specs"]):
        spec = parse_experiment(data, f"item {payload['id']}")
        if spec.content_hash() != h:
            raise RuntimeError(
                f"spec of run {h} hashes to {spec.content_hash()} in the worker: "
                "the worker's kdgrid differs from the launcher's"
            )
        specs.append(spec)
    return specs


def _train(payload: dict, work, tracking_uri: str, threads, device, callbacks, rank: int, lock_wait_s: float):
    from trainer.run import train_specs

    results = teacher_problems(payload, tracking_uri)  # every rank: they must agree
    todo = [s for s, h in zip(_specs(payload), payload["hashes"]) if h not in results]
    if todo and rank == 0 and lock_wait_s > 0:
        wait_for_locks(work, [s.content_hash() for s in todo], lock_wait_s)
    if todo:
        if rank == 0:  # how each run is doing, in the item's log (trainer/progress.py)
            from trainer.progress import LogLines

            callbacks = (*callbacks, LogLines())
        results.update(
            train_specs(
                todo, work=work, tracking_uri=tracking_uri, threads=threads, device=device, callbacks=tuple(callbacks)
            )
        )
    return results


def run_item(
    payload: dict,
    *,
    work: str | Path,
    tracking_uri: str,
    threads: int | None = None,
    device: str | None = None,
    callbacks: Iterable = (),
    rank: int = 0,
    lock_wait_s: float = 0.0,
) -> dict[str, str]:
    """Train one work item; never raises for a run's failure: returns {hash: outcome text} for every run.

    Output goes to `<work>/logs/<item>.log` (`<item>.rank<k>.log` for rank k > 0). With `lock_wait_s`, rank 0
    first waits that long for runs whose lock a live owner holds: a requeued Slurm job may start on another
    node before its previous incarnation's lock has gone stale.
    """
    results: dict[str, str] = {}
    with output_to(log_path(work, payload["id"], rank)):
        print(
            f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} item {payload['id']} on {socket.gethostname()} "
            f"pid {os.getpid()} rank {rank}: {len(payload['hashes'])} run(s) {' '.join(payload['hashes'])}",
            flush=True,
        )
        try:
            results.update(_train(payload, work, tracking_uri, threads, device, callbacks, rank, lock_wait_s))
        except Exception as err:
            traceback.print_exc()
            for h in payload["hashes"]:
                results.setdefault(h, f"failed: {type(err).__name__}: {err}".strip())
        except BaseException as err:  # preempted (submitit's SystemExit), interrupted: not a failure
            traceback.print_exc()
            print(
                f"=== interrupted ({type(err).__name__}: {err}): the runs resume from their checkpoints next time",
                flush=True,
            )
            raise
        for h in payload["hashes"]:
            results.setdefault(h, "failed: the trainer returned no result for this run")
        print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} item {payload['id']} done: {json.dumps(results)}", flush=True)
    return results


def mark_abandoned(ctx: LaunchContext, hashes: Iterable[str], reason: str) -> None:
    """Runs left RUNNING in MLflow by a process that died (its lock is stale): FAILED, with the reason."""
    from trainer import workdir

    try:
        c = tracking.client(ctx.tracking_uri)
        for h, run in tracking.runs_by_hash(c, ctx.plan.scale, hashes).items():
            lock = workdir.RunLock(workdir.run_dir(ctx.work, h))
            if run.info.status == "RUNNING" and not lock.held():
                tracking.RunLog(c, run.info.run_id).finish("FAILED", reason)
    except Exception as err:  # the launcher's summary reports the failure all the same
        print(f"could not mark runs failed in MLflow: {err}", file=sys.stderr)
