"""A run's numeric precision: its autocast and, for fp16, the GradScaler that keeps small gradients alive.

fp16 follows DeiT's and the released ManifoldKD code's `torch.cuda.amp` loop (scale the loss, unscale before
clipping, step through the scaler, update its scale); bf16 autocasts without a scaler (its range is float32's);
fp32 does not autocast. Losses are computed in float32 under any of them (trainer.objective). Torch only, so
the GPU device check (benchmarks/precision_check.py) runs these very functions without pydantic or MLflow.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch

Name = Literal["fp16", "bf16", "fp32"]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
LABELS = {"fp16": "fp16 AMP", "bf16": "bf16 autocast", "fp32": "fp32"}  # the `protocol.precision` record


def effective(precision: Name | None, amp: bool, device: str) -> Name:
    """What a run trains with: `precision` where the spec sets it (on any device); unset, `amp` decides as it
    did before the field existed: fp16 AMP on CUDA (the authors' mixed precision), fp32 on CPU or without amp."""
    if precision is not None:
        return precision
    return "fp16" if amp and device.startswith("cuda") else "fp32"


@dataclass(frozen=True)
class Precision:
    name: Name
    device: str  # "cpu", "cuda", "cuda:1"

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def autocast(self) -> AbstractContextManager:
        """A fresh autocast context for a forward pass (a no-op for fp32)."""
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=DTYPES[self.name])

    def scaler(self) -> torch.amp.GradScaler | None:
        """A new GradScaler for one run's optimizer (fp16 only; each run scales its own loss)."""
        return torch.amp.GradScaler(torch.device(self.device).type) if self.name == "fp16" else None


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, params, clip_grad: float | None
) -> None:
    """One optimizer step on the accumulated gradients: unscaled before clipping (so the norm is the true
    one); with a scaler, a step whose gradients hold inf/nan is skipped and the scale lowered."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
