"""A planned recipe on the devices the launcher gives a run: its world size, and the accumulation that
makes up its global batch."""

from __future__ import annotations

from pydantic import ValidationError

from orchestrator.grid import GridError
from trainer.problems import validation_problems
from trainer.spec import RecipeSpec


def world_size(resources: dict) -> int:
    """Devices of one run's DDP job from a scale's `launch.resources`: gpus (per node) x nodes, else 1.
    On a machine without GPUs the local launcher runs that many CPU (gloo) processes instead."""
    return max(1, int(resources.get("gpus") or 1)) * max(1, int(resources.get("nodes") or 1))


def on_devices(recipe: RecipeSpec, resources: dict, src: str, where: str, res_key: str) -> RecipeSpec:
    """The recipe with the launcher's world size and the accumulation that makes up its global batch;
    a protocol the resources cannot meet is refused here, before anything launches."""
    w = world_size(resources)
    try:
        return RecipeSpec.model_validate({**recipe.model_dump(), "world_size": w, "accumulation": None})
    except ValidationError as err:
        reason = "; ".join(r for _, r in validation_problems(err))
        raise GridError([(src, f"{where}.global_batch / {res_key}.gpus", f"{reason} (world size {w})")]) from None
