"""torch.distributed from the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

Whoever starts the processes (torchrun, the Slurm launcher from submitit's job environment) sets these;
the trainer only reads them, so it knows nothing of launchers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str | None = None) -> DistEnv:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", rank=rank, world_size=world)
    return DistEnv(rank, world, local, device)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def broadcast_flags(flags: list[bool], device: str) -> list[bool]:
    """Rank 0's decisions (which runs to train) for every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return flags
    t = torch.tensor([int(f) for f in flags], device=device)
    dist.broadcast(t, 0)
    return [bool(v) for v in t.tolist()]


def no_sync(module: torch.nn.Module):
    """DDP's no_sync (gradients kept local during accumulation); a no-op for a module that is not DDP."""
    from contextlib import nullcontext

    return module.no_sync() if hasattr(module, "no_sync") else nullcontext()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
