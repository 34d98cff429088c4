"""Validation: top-1 / top-5 / loss of a model over a validation source, summed over ranks, with a distilled
DeiT's two heads also alone and, on request, every image's prediction (the report's agreement matrix)."""

from __future__ import annotations

import torch
from torch import nn

from trainer.distributed import all_sum


def head_logits(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"top1": the model's output}, and for a distilled DeiT (eval mode: the average of its two heads, as
    DeiT infers) its class head ("cls") and distillation head ("dist") on their own."""
    if hasattr(model, "head_dist"):
        f = model.forward_features(x)
        cls, dist = model.head(f[:, 0]), model.head_dist(f[:, 1])
        return {"top1": (cls + dist) / 2, "cls": cls, "dist": dist}
    return {"top1": model(x)}


@torch.inference_mode()
def evaluate(model: nn.Module, val, device: str, autocast, predictions: dict | None = None) -> dict[str, float]:
    """top-1 / top-5 / loss over the validation set (summed across ranks); a distilled DeiT's heads also
    alone (`cls_top1`, `dist_top1`). `autocast`: a context factory (Precision.autocast, or nullcontext).
    `predictions`, when given, receives this rank's per-image top-1 of each head and the labels, in the
    validation set's order."""
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss_sum, n
    heads: dict[str, torch.Tensor] = {}
    preds: dict[str, list] = {}
    for x, y in val.epoch(0, 0):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            outs = head_logits(model, x)
        _count(stats, outs["top1"].float(), y)
        for name, o in outs.items():
            top1 = o.float().argmax(dim=1)
            if name != "top1":
                heads[name] = heads.get(name, torch.zeros((), dtype=torch.float64, device=device)) + (top1 == y).sum()
            if predictions is not None:
                preds.setdefault(name, []).append(top1.cpu())
        if predictions is not None:
            preds.setdefault("label", []).append(y.cpu())
    all_sum(stats)
    for v in heads.values():
        all_sum(v)
    c1, c5, loss, n = stats.tolist()
    if predictions is not None:
        predictions.update({k: torch.cat(v).tolist() for k, v in preds.items()})
    return {
        "top1": 100.0 * c1 / n,
        "top5": 100.0 * c5 / n,
        "loss": loss / n,
        **{f"{k}_top1": 100.0 * v.item() / n for k, v in heads.items()},
    }


def _count(stats: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
    """Add a batch's top-1 and top-5 hits, loss sum and size to `stats`."""
    top5 = out.topk(min(5, out.shape[1]), dim=1).indices
    stats[0] += (top5[:, 0] == y).sum()
    stats[1] += (top5 == y[:, None]).any(dim=1).sum()
    stats[2] += torch.nn.functional.cross_entropy(out, y, reduction="sum")
    stats[3] += y.numel()
