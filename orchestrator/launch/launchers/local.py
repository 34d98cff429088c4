"""The local launcher: a pool of spawned worker processes on this machine, with a live view.

Each worker is a fresh interpreter (multiprocessing "spawn": no forked torch or MLflow state) with one
torch thread by default (`--threads`); there are as many as the machine's cores over threads (or its GPUs,
one each) unless `--workers` says otherwise. A run planned on several devices (`launch.resources.gpus`, the
world size of its DDP job) makes each worker hold that many GPUs and train each item as one DDP job of as
many processes (launch/ddp.py); on a machine without GPUs those are CPU processes over gloo, each with
`--threads` threads. A worker takes items one at a time, so the cost of importing
torch is paid once per worker, not per item. An item starts once the items it depends on have ended;
its runs whose teacher did not finish are reported blocked and not started. Workers report through a
multiprocessing queue (the engine callback `view.QueueCallback`), feeding the live table.

A worker that dies (killed, out of memory) fails only its item: its runs are marked failed in MLflow
with the reason, a fresh worker replaces it, and the other items go on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import threading
import time
from contextlib import contextmanager

from orchestrator.launch.items import (
    LaunchContext,
    WorkItem,
    blocked_by,
    devices_per_run,
    log_path,
    mark_abandoned,
    payload_world_size,
    run_item,
    runnable,
)
from orchestrator.launch.planner import Planner
from orchestrator.launch.view import QueueCallback, RunView


def default_workers(threads: int, devices: int = 1) -> tuple[int, int]:
    """(workers, gpus): one worker per `devices` GPUs where there are GPUs, else cores // (threads x devices)."""
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:
        pass
    if gpus:
        if devices > gpus:
            raise ValueError(
                f"the runs are planned on {devices} GPUs each (launch.resources.gpus) but this machine "
                f"has {gpus}: --set launch.resources.gpus={gpus} (or 1), and accumulation makes up the "
                "global batch"
            )
        return gpus // devices, gpus
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, threads * devices)), 0


def pool_size(workers: int, items: list[WorkItem], schedule: str) -> int:
    """Worker processes to start: as many as can be busy at once. Plan order trains whole items, one per
    worker; the cost schedule may cut a cohort into as many parts as it has runs, so a lone cohort (one
    teacher's new seeds in a `--resolve` round) can still use every worker if the planner finds it pays."""
    most = len(items) if schedule == "plan" else sum(len(it.runs) for it in items)
    return max(1, min(workers, most))


def _worker(wid: int, tasks, events, work: str, uri: str, threads: int, env: dict[str, str]) -> None:
    """A worker process: set its environment before torch loads, then train items until told to stop."""
    os.environ.update(env)
    out = log_path(work, f"worker-{wid}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # stray output stays off the view
    os.dup2(fd, 1), os.dup2(fd, 2)
    os.close(fd)
    import trainer.run  # noqa: F401  (torch, timm, MLflow: loaded while the first item is still queued)

    callback = QueueCallback(events)
    while True:
        payload = tasks.get()
        if payload is None:
            return
        events.put(("item_start", wid, payload["id"]))
        try:
            world = payload_world_size(payload)
            if world > 1:
                from orchestrator.launch.ddp import run_item_ddp

                results = run_item_ddp(
                    payload, world, work=work, tracking_uri=uri, threads=threads, callbacks=(callback,)
                )
            else:
                results = run_item(payload, work=work, tracking_uri=uri, threads=threads, callbacks=(callback,))
        except KeyboardInterrupt:
            events.put(("item_end", wid, payload["id"], {h: "failed: interrupted" for h in payload["hashes"]}))
            return
        events.put(("item_end", wid, payload["id"], results))


def _signal_name(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exited with code {code}"


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (`kill`, a batch system's time-out, a CI runner) stops the grid as Ctrl-C does: the workers
    are interrupted and joined. Python's default would end this process alone and leave its workers
    training as orphans, holding their runs' locks."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Pool:
    def __init__(self, ctx: LaunchContext, n: int, gpus: int, events, devices: int = 1):
        self.ctx, self.gpus, self.events, self.devices = ctx, gpus, events, devices
        self.mp = mp.get_context("spawn")
        self.procs: dict[int, mp.Process] = {}
        self.tasks: dict[int, object] = {}
        for wid in range(n):
            self.start(wid)

    def start(self, wid: int) -> None:
        env = {
            "OMP_NUM_THREADS": str(self.ctx.threads),
            "MKL_NUM_THREADS": str(self.ctx.threads),
            "PYTHONUNBUFFERED": "1",
        }
        if self.gpus:  # worker wid holds GPUs wid x devices ... (wid + 1) x devices - 1
            first = (wid * self.devices) % self.gpus
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + k) for k in range(self.devices))
        self.tasks[wid] = self.mp.Queue()
        # Not daemonic: a daemonic process may not start processes, and a worker starts DDP ranks and its
        # DataLoader's workers (data.num_workers > 0 at the paper scale); stop() ends every worker.
        p = self.mp.Process(
            target=_worker,
            name=f"kdgrid-worker-{wid}",
            daemon=False,
            args=(wid, self.tasks[wid], self.events, str(self.ctx.work), self.ctx.tracking_uri, self.ctx.threads, env),
        )
        p.start()
        self.procs[wid] = p

    def stop(self, grace: float = 30.0) -> None:
        for wid, p in self.procs.items():
            if p.is_alive():
                self.tasks[wid].put(None)
        deadline = time.monotonic() + grace
        for p in self.procs.values():
            p.join(max(0.1, deadline - time.monotonic()))
        for p in self.procs.values():
            if p.is_alive():
                p.kill()
                p.join(5)

    def interrupt(self) -> None:
        for p in self.procs.values():
            if p.is_alive() and p.pid:
                try:
                    os.kill(p.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass


def launch(items: list[WorkItem], ctx: LaunchContext, outcomes: dict[str, str]) -> dict[str, str]:
    """Train every item on a local pool; fill and return `outcomes` ({hash: outcome}).

    What each idle worker trains next is the planner's choice (launch/planner.py): with the cost schedule,
    the critical path first and cohorts cut by cost over the workers free when their teacher ends."""
    if not ctx.wait:
        raise RuntimeError("the local launcher trains in this process's children: use `launch_detached`")
    devices = devices_per_run(r for it in items for r in it.runs)
    _, gpus = default_workers(ctx.threads, devices)
    names = ctx.names
    item_of = {h: it.id for it in items for h in it.hashes}
    view = RunView(
        [r for it in items for r in it.runs],
        item_of,
        ctx.console,
        title=f"kdgrid {ctx.plan.scale}: {len(items)} item(s) on {ctx.workers} local worker(s)",
    )
    events = mp.get_context("spawn").Queue()
    pool = _Pool(ctx, pool_size(ctx.workers, items, ctx.schedule), gpus, events, devices)
    planner = Planner(items, len(pool.procs), rates=ctx.rates, mode=ctx.schedule)
    running: dict[int, WorkItem] = {}
    idle = set(pool.procs)
    dirty = True

    def settle() -> None:
        """Ready groups lose the runs whose teacher did not finish; idle workers get parts to train."""
        for gid in planner.order:
            if gid not in planner.ended and gid not in pruned and planner.ready(gid):
                pruned.add(gid)
                planner.prune(gid, lambda part: runnable(part, outcomes, names))
                for h in planner.groups[gid].hashes:
                    if h in outcomes:
                        view.set_state(h, outcomes[h])
        busy = {w: it.id for w, it in running.items()}
        for wid, part in planner.assign(sorted(idle), busy, progress=view.progress):
            idle.discard(wid)
            running[wid] = part
            for h in part.hashes:
                ctx.item_of[h] = part.id
                view.set_item(h, part.id)
            pool.tasks[wid].put(part.payload())
        busy = {w: it.id for w, it in running.items()}
        view.set_eta(planner.eta(time.monotonic(), busy, progress=view.progress), len(running))

    pruned: set[str] = set()
    try:
        with _sigterm_as_interrupt(), view:
            while running or any(planner.left[g] for g in planner.order if g not in planner.ended):
                if dirty:
                    settle()
                    dirty = False
                    if not running:
                        break  # nothing could start: every remaining run is blocked
                try:
                    ev = events.get(timeout=0.5)
                except queue_mod.Empty:
                    ev = None
                while ev is not None:
                    if ev[0] == "item_start":
                        for h in running[ev[1]].hashes:
                            view.set_state(h, "running: starting", quiet=True)
                    elif ev[0] == "item_end":
                        wid, item_id, results = ev[1], ev[2], ev[3]
                        running.pop(wid)
                        for h, o in results.items():
                            outcomes[h] = o
                            view.set_state(h, o)
                        planner.finish(item_id)
                        idle.add(wid)
                        dirty = True
                    else:
                        view.handle(ev)
                    try:
                        ev = events.get_nowait()
                    except queue_mod.Empty:
                        ev = None
                for wid, it in list(running.items()):
                    p = pool.procs[wid]
                    if p.is_alive():
                        continue
                    reason = f"worker process {p.pid} {_signal_name(p.exitcode)} (log {log_path(ctx.work, it.id)})"
                    mark_abandoned(ctx, it.hashes, reason)
                    for h in it.hashes:
                        outcomes.setdefault(h, f"failed: {reason}")
                        view.set_state(h, outcomes[h])
                    running.pop(wid)
                    planner.finish(it.id, counted=False)
                    pool.start(wid)
                    idle.add(wid)
                    dirty = True
    except KeyboardInterrupt:
        pool.interrupt()
        pool.stop(grace=30.0)
        raise
    finally:
        pool.stop()
    for gid in planner.order:  # what never started (its teacher's whole group failed): say why
        for r in planner.left[gid]:
            outcomes.setdefault(r.hash, blocked_by(r, outcomes, names) or "blocked: never started")
    return outcomes


def memory_budget(ctx: LaunchContext) -> int:
    """Bytes one worker may use: 90% of a GPU (a worker per GPU), else 80% of the RAM shared by the workers."""
    import torch

    if torch.cuda.is_available():
        return int(
            0.9 * min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
        )
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(0.8 * ram / max(1, ctx.workers))


def default_parallelism(ctx: LaunchContext) -> int:
    return ctx.hints.get("workers") or default_workers(ctx.threads, devices_per_run(ctx.plan.runs))[0]
