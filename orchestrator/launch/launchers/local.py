"""The local launcher: a pool of spawned worker processes on this machine, with a live view.

Each worker is a fresh interpreter (multiprocessing "spawn": no forked torch or MLflow state) with one
torch thread by default (`--threads`); there are as many as the machine's cores over threads (or its GPUs,
one each) unless `--workers` says otherwise. A run planned on several devices (`launch.resources.gpus`, the
world size of its DDP job) makes each worker hold that many GPUs and train each item as one DDP job of as
many processes (launch/ddp.py); on a machine without GPUs those are CPU processes over gloo, each with
`--threads` threads. A worker takes items one at a time, so the cost of importing
torch is paid once per worker, not per item. An item starts once the items it depends on have ended;
its runs whose teacher did not finish are reported blocked and not started. Workers report through a
multiprocessing queue (launch/events.py), feeding the live table.

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

from orchestrator.launch.dispatch import Dispatch
from orchestrator.launch.events import Emitter, ItemEnded, ItemStarted
from orchestrator.launch.items import LaunchContext, WorkItem, devices_per_run, log_path, payload_world_size
from orchestrator.launch.outcome import Outcome, parse_all
from orchestrator.launch.registry import Launcher, register
from orchestrator.launch.view import RunView
from orchestrator.launch.worker import run_item


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
    teacher's new seeds in a `--resolve` round) can still use every worker if the scheduler finds it pays."""
    most = len(items) if schedule == "order" else sum(len(it.runs) for it in items)
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

    callbacks = (Emitter(events.put),)
    while True:
        payload = tasks.get()
        if payload is None:
            return
        events.put(ItemStarted(wid, payload["id"]))
        try:
            world = payload_world_size(payload)
            if world > 1:
                from orchestrator.launch.ddp import run_item_ddp

                results = run_item_ddp(
                    payload, world, work=work, tracking_uri=uri, threads=threads, callbacks=callbacks
                )
            else:
                results = run_item(payload, work=work, tracking_uri=uri, threads=threads, callbacks=callbacks)
        except KeyboardInterrupt:
            events.put(ItemEnded(wid, payload["id"], {h: Outcome("failed", "interrupted") for h in payload["hashes"]}))
            return
        events.put(ItemEnded(wid, payload["id"], parse_all(results)))


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


class _Grid:
    """One launch on the pool: idle workers get the parts the scheduler picks, events feed the view, ended
    and dead workers settle their parts."""

    def __init__(self, items: list[WorkItem], ctx: LaunchContext, outcomes: dict[str, Outcome]):
        devices = devices_per_run(r for it in items for r in it.runs)
        _, gpus = default_workers(ctx.threads, devices)
        self.ctx = ctx
        self.view = RunView(
            [r for it in items for r in it.runs],
            {h: it.id for it in items for h in it.hashes},
            ctx.console,
            title=f"kdgrid {ctx.plan.scale}: {len(items)} item(s) on {ctx.workers} local worker(s)",
        )
        self.events = mp.get_context("spawn").Queue()
        self.pool = _Pool(ctx, pool_size(ctx.workers, items, ctx.schedule), gpus, self.events, devices)
        self.dispatch = Dispatch(items, ctx, outcomes, self.view, len(self.pool.procs))
        self.running: dict[int, WorkItem] = {}
        self.idle = set(self.pool.procs)

    def start_parts(self) -> None:
        busy = {w: it.id for w, it in self.running.items()}
        for wid, part in self.dispatch.assign(self.idle, busy):
            self.idle.discard(wid)
            self.running[wid] = part
            self.pool.tasks[wid].put(part.payload())
        self.view.set_eta(self.dispatch.eta({w: it.id for w, it in self.running.items()}), len(self.running))

    def handle(self, ev) -> bool:
        """Apply one event; True when a worker became idle."""
        if isinstance(ev, ItemStarted):
            for h in self.running[ev.worker].hashes:
                self.view.set_state(h, Outcome("running", "starting"), quiet=True)
        elif isinstance(ev, ItemEnded):
            self.dispatch.ended(self.running.pop(ev.worker), ev.results)
            self.idle.add(ev.worker)
            return True
        else:
            self.view.handle(ev)
        return False

    def drain(self, timeout: float = 0.5) -> bool:
        """Every event waiting (after up to `timeout` for the first); True when a worker became idle."""
        freed = False
        try:
            ev = self.events.get(timeout=timeout)
            while True:
                freed |= self.handle(ev)
                ev = self.events.get_nowait()
        except queue_mod.Empty:
            return freed

    def reap(self) -> bool:
        """Workers that died: their parts fail, fresh workers replace them. True when any did."""
        dead = [(wid, it) for wid, it in self.running.items() if not self.pool.procs[wid].is_alive()]
        for wid, it in dead:
            p = self.pool.procs[wid]
            self.dispatch.died(
                it, f"worker process {p.pid} {_signal_name(p.exitcode)} (log {log_path(self.ctx.work, it.id)})"
            )
            self.running.pop(wid)
            self.pool.start(wid)
            self.idle.add(wid)
        return bool(dead)

    def run(self) -> None:
        changed = True
        while self.running or self.dispatch.pending:
            if changed:
                self.start_parts()
                if not self.running:
                    break  # nothing could start: every remaining run is blocked
            changed = self.drain()
            changed |= self.reap()
        self.dispatch.never_started()


@register
class Local(Launcher):
    """A pool of spawned worker processes on this machine (the default launcher)."""

    name = "local"

    def launch(self, items: list[WorkItem], ctx: LaunchContext, outcomes: dict[str, Outcome]) -> None:
        """Train every item on a local pool; what each idle worker trains next is the scheduler's choice
        (with the cost schedule: the critical path first, cohorts cut by cost over the free workers)."""
        if not ctx.wait:
            raise RuntimeError("the local launcher trains in this process's children: `kdgrid launch` detaches it")
        grid = _Grid(items, ctx, outcomes)
        try:
            with _sigterm_as_interrupt(), grid.view:
                grid.run()
        except KeyboardInterrupt:
            grid.pool.interrupt()
            grid.pool.stop(grace=30.0)
            raise
        finally:
            grid.pool.stop()

    def memory_budget(self, ctx: LaunchContext) -> int:
        """Bytes one worker may use: 90% of a GPU (a worker per GPU), else 80% of the RAM shared by the workers."""
        import torch

        if torch.cuda.is_available():
            return int(
                0.9 * min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
            )
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return int(0.8 * ram / max(1, ctx.workers))

    def parallelism(self, ctx: LaunchContext) -> int:
        return ctx.hints.get("workers") or default_workers(ctx.threads, devices_per_run(ctx.plan.runs))[0]
