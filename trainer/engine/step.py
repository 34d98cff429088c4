"""One member's training step: forward and loss of a micro-batch, backward (scaled under fp16), and the
optimizer step that ends an accumulation; and the epoch's loss terms, checked finite at logging intervals."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from trainer import precision
from trainer.distributed import all_sum, no_sync
from trainer.engine import ema
from trainer.engine.cohort import Batch, NonFiniteLoss
from trainer.engine.member import Member
from trainer.objective import objective
from trainer.precision import Precision


def forward_loss(m: Member, x, target, t_logits, t_feats, autocast) -> dict[str, torch.Tensor]:
    """One student's forward pass and its loss terms (the objective over its methods); "loss" is their sum."""
    with autocast():
        out, s_feats = m.student(x, m.streams.generator)
    return objective(m.spec, out, target, t_logits, s_feats, t_feats, m.streams.generator)


def micro_step(m: Member, b: Batch, sync: bool, accumulation: int, prec: Precision) -> None:
    """Forward, loss and backward of one micro-batch; gradients add up over the accumulation steps (DDP
    all-reduces them only on the last, `sync`), each micro-batch's loss weighted 1 / accumulation."""
    with m.scope(prec.device, b.key), nullcontext() if sync else no_sync(m.student):
        terms = forward_loss(m, b.x, b.target, b.t_logits, b.t_feats, prec.autocast)
        precision.backward(terms["loss"] / accumulation, m.scaler)
    for k, v in terms.items():
        v = v.detach().float()
        m.sums[k] = m.sums[k] + v if k in m.sums else v.clone()
    m.count += 1


def optimizer_step(m: Member, global_step: int) -> None:
    """The optimizer step that ends an accumulation: unscale, clip, step, schedule, EMA; gradients cleared."""
    precision.step(m.optimizer, m.scaler, m.core.parameters(), m.spec.recipe.clip_grad)
    m.optimizer.zero_grad(set_to_none=True)
    m.scheduler.step_update(num_updates=global_step + 1)
    ema.update(m.ema, m.core.model)


def train_step(m: Member, b: Batch, global_step: int, prec: Precision) -> None:
    """One whole optimizer step on one batch (no accumulation): what benchmarks time."""
    micro_step(m, b, True, 1, prec)
    optimizer_step(m, global_step)


def mean_terms(m: Member) -> dict[str, torch.Tensor]:
    """Each loss term's mean over the epoch's micro-batches so far, over every rank (one all-reduce)."""
    keys = sorted(m.sums)
    if not keys:
        return {}
    t = torch.stack(
        [m.sums[k].double() for k in keys]
        + [torch.tensor(float(m.count), dtype=torch.float64, device=m.sums[keys[0]].device)]
    )
    all_sum(t)
    n = max(t[-1].item(), 1.0)
    return {k: t[i] / n for i, k in enumerate(keys)}


def finite_terms(m: Member, epoch: int, step: int) -> dict[str, float]:
    """The epoch's mean loss terms so far, read on the host (a logging interval's one sync); raises
    NonFiniteLoss naming the epoch, the step and each term that is NaN or infinite."""
    values = {k: v.item() for k, v in mean_terms(m).items()}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        terms = ", ".join(f"{k}={values[k]}" for k in bad)
        raise NonFiniteLoss(f"non-finite loss at epoch {epoch + 1} step {step + 1}: {terms}")
    return values
