"""A run's EMA of its weights, and which weights its evaluation reads.

The EMA starts from the initial weights and moves by 1 - `ema_decay` after every optimizer step, as mmcv's
EMAHook (`momentum=4e-5` in ViTKD's DeiT-B configs) and DeiT's `ModelEma` do. `recipe.eval_weights: ema`
makes the EMA the run's evaluated weights (`val.*`, its accuracy), as the EMAHook swaps it in before each
evaluation; the trained model is then logged as `val_model.*`. Otherwise the model is `val.*` and an EMA,
where kept, `val_ema.*`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainer.spec import ExperimentSpec


def build(spec: ExperimentSpec, model: nn.Module) -> Any | None:
    """The EMA of `model` (a copy of its initial weights), or None where the recipe keeps none."""
    if not spec.recipe.ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=spec.recipe.ema_decay)


def update(ema: Any | None, model: nn.Module) -> None:
    """One optimizer step's update: ema <- decay * ema + (1 - decay) * model (no warm-up, no first copy)."""
    if ema is not None:
        ema.update(model)


def evaluated(spec: ExperimentSpec, model: nn.Module, ema: Any | None) -> list[tuple[str, nn.Module]]:
    """(metric prefix, weights) to evaluate at an epoch's end: the run's own evaluation (`val`) first."""
    if ema is None:
        return [("val", model)]
    if spec.recipe.eval_weights == "ema":
        return [("val", ema.module), ("val_model", model)]
    return [("val", model), ("val_ema", ema.module)]
