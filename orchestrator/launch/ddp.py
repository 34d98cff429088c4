"""One work item as one DDP job on this machine: `world_size` spawned processes, one per device.

The trainer reads torch.distributed's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
trainer/distributed.py); this module sets it for each process it spawns, as torchrun would, and runs the
item in every one. With GPUs (the caller's CUDA_VISIBLE_DEVICES) rank r trains on cuda:r over NCCL; without,
every rank is a CPU process over gloo (`--set launch.resources.gpus=2` on a CPU-only machine: two
processes), which is how the tests run DDP here. Rank 0's results are the item's; a rank that dies fails
the item, and the others are stopped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import socket
from collections.abc import Iterable
from typing import Any

from orchestrator.launch.worker import run_item


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, payload: dict, kwargs: dict, results, callbacks) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from trainer.distributed import shutdown

    try:
        out = run_item(payload, rank=rank, callbacks=callbacks if rank == 0 else (), **kwargs)
    finally:
        shutdown()
    if rank == 0:
        results.put(out)


def run_item_ddp(
    payload: dict,
    world_size: int,
    *,
    work: str,
    tracking_uri: str,
    threads: int | None = None,
    callbacks: Iterable = (),
    timeout_s: float | None = None,
) -> dict[str, str]:
    """Train one item with `world_size` DDP processes; {hash: outcome} as `run_item` returns it."""
    kwargs: dict[str, Any] = dict(work=work, tracking_uri=tracking_uri, threads=threads)
    if world_size <= 1:
        return run_item(payload, callbacks=tuple(callbacks), **kwargs)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_rank_main,
            name=f"kdgrid-rank-{r}",
            daemon=False,
            args=(r, world_size, port, payload, kwargs, results, tuple(callbacks) if r == 0 else ()),
        )
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    out: dict[str, str] | None = None
    try:
        while out is None:
            try:
                out = results.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead or all(p.exitcode is not None for p in procs):
                    why = (
                        ", ".join(f"rank {procs.index(p)} exited with code {p.exitcode}" for p in dead)
                        or "rank 0 returned no result"
                    )
                    out = {h: f"failed: DDP job of {world_size} processes: {why}" for h in payload["hashes"]}
        for p in procs:
            p.join(timeout_s)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    return out
