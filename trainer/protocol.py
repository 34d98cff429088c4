"""A run's effective protocol, as it actually ran: logged as `protocol.*` MLflow params.

The report compares these with the paper's protocol (orchestrator/report/protocol.py) and lists every
deviation, so a banner says what ran, not what the scale's name promises.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    try:
        out["timm"] = version("timm")
    except PackageNotFoundError:
        out["timm"] = "none"
    return out


def run_protocol(
    spec, *, world_size: int, accumulation: int, precision: str, train_images: int, val_images: int
) -> dict[str, Any]:
    """The protocol params of one run (spec: an ExperimentSpec): `lr` is the optimizer's, at the global
    batch it trains with; `eval_weights` the weights its accuracy is read from (model or ema)."""
    from trainer.engine.member import effective_lr

    r, d = spec.recipe, spec.data
    out: dict[str, Any] = {
        "batch_per_device": r.batch_size,
        "world_size": world_size,
        "accumulation": accumulation,
        "global_batch": r.batch_size * world_size * accumulation,
        "lr": effective_lr(spec, world_size),
        "precision": precision,
        "eval_weights": r.eval_weights or "model",
        "epochs": r.epochs,
        "train_images": train_images,
        "val_images": val_images,
        "img_size": d.img_size,
        "dataset": d.dataset,
        "student": spec.student.name,
    }
    return out | versions()


def teacher_protocol(weights: dict[str, Any]) -> dict[str, Any]:
    """`weights` as load_teacher records them: source, tag (timm's pretrained tag, or the run's hash),
    the file's sha256 where a file was read, and the eval transform its accuracy was measured with."""
    return {f"teacher_{k}": v for k, v in weights.items()}
