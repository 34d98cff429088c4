"""Distillation methods as plug-ins, registered as timm registers models (`@register`).

A method is one module of this package. It declares, in one `Method` subclass:
- `fields`: the `DistillationSpec` fields it owns (its pydantic spec, or flat fields such as DeiT's
  kd/tau/kd_weight); `trainer.spec` builds `DistillationSpec` from every registered method;
- `student_taps` / `teacher_taps`: the features it needs (0-based blocks' raw residual stream, or `FINAL`,
  the last block's tokens after the model's final norm; patch tokens only, class/distillation dropped);
- `build`: its extra trainable modules (projections, generators), which `Student` holds, so the optimizer,
  DDP, EMA and checkpoints see them; `student_side` runs them inside the student's forward;
- `loss`: a function of tensors (its maths in trainer.losses, or pure functions of its module);
- `footprint`: the memory its loss adds to a student's step;
- `rows` / `row_fields` / `resolve_row`: the table-row methods and fields it accepts and what a row
  resolves to (read by orchestrator/grid.py and plan.py).

The objective (trainer/objective.py), the Student wrapper, the footprint and the planner iterate over the
registry and never name a method. Methods combine: a spec may set several (hard KD + manifold, ViTKD + NKD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

FINAL = "final"  # tap: the last block's tokens after the model's final norm
Tap = int | str  # a 0-based block index (its output, the raw residual stream) or FINAL
FLOAT = 4  # bytes per element in footprint estimates


@dataclass
class LossInputs:
    """What a method's loss may read; logits are float32."""

    cls_logits: Tensor  # the class head
    kd_logits: Tensor  # the distillation head (the class head when the student has none)
    t_logits: Tensor | None
    target: Tensor  # class indices, or Mixup/CutMix soft targets
    student: Any  # the method's `student_side` output
    teacher: list[Tensor]  # the teacher's features at `teacher_taps`, in that order
    generator: torch.Generator | None


class Method:
    """A distillation method. Subclasses override what they use; the defaults are "nothing"."""

    key: str = ""  # registry name; for methods with a sub-spec, the DistillationSpec field holding it
    fields: dict[str, tuple[Any, Any]] = {}  # DistillationSpec fields it owns: name -> (annotation, default)
    rows: dict[str, str] = {}  # table-row method names it provides -> the label tables print
    row_fields: dict[str, Any] = {}  # table-row fields it accepts: name -> annotation (None = unset)
    recipe_rows: bool = False  # its rows take the named recipe (experiments/recipes.yaml)
    uses_dist_head: bool = False  # trains a distilled student's distillation head
    module_name: str | None = None  # attribute of its trainable module on Student (default: key)
    terms: tuple[str, ...] = ()  # the loss terms it logs (train.<term>)
    order: int = 50  # place in the objective's sum (logit KD first, as DeiT's Eq. 5-6 then Eq. 13)

    # ---- spec ---------------------------------------------------------------------------------------
    def settings(self, d) -> Any:
        """Its settings in a DistillationSpec (or any object with the same attributes), None when unused."""
        return getattr(d, self.key, None)

    def canonical(self, d) -> dict[str, Any]:
        """Fields of `d` to normalise (settings that cannot change the loss), so equal losses hash equally."""
        return {}

    def problems(self, cfg, s_info, t_info, spec) -> list[tuple[str, str]]:
        """Checks that need the models' shapes, as (field path, reason)."""
        return []

    # ---- training -----------------------------------------------------------------------------------
    def student_taps(self, cfg) -> tuple[Tap, ...]:
        return ()

    def teacher_taps(self, cfg) -> tuple[Tap, ...]:
        return ()

    def build(self, cfg, s_info, t_info) -> nn.Module | None:
        return None

    def no_weight_decay(self) -> set[str]:
        """Parameter names inside its module that AdamW must not decay."""
        return set()

    def student_side(self, cfg, module: nn.Module | None, feats: list[Tensor], generator) -> Any:
        """Runs in the student's forward (so DDP sees its modules): features -> what `loss` compares."""
        return feats

    def ce_scale(self, cfg) -> float:
        """Factor on the cross-entropy with the labels (DeiT: 1 - lambda)."""
        return 1.0

    def loss(self, cfg, x: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        """(its weighted contribution to the loss, the terms to log)."""
        raise NotImplementedError

    def footprint(self, cfg, s_info, t_info, batch: int) -> int:
        """Bytes its loss adds to one student's step (beyond the student's own activations)."""
        return 0

    # ---- grid ---------------------------------------------------------------------------------------
    def resolve_row(self, name: str, row, recipe, hard) -> dict[str, Any]:
        """The DistillationSpec fields a table row of method `name` sets (row fields, recipe, hard KD)."""
        raise NotImplementedError

    def describe(self, cfg) -> list[str]:
        """Its key settings, for `kdgrid plan`."""
        return []


REGISTRY: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method to the registry (one instance; methods hold no state)."""
    method = cls()
    if method.key in REGISTRY:
        raise ValueError(f"distillation method {method.key!r} registered twice")
    REGISTRY[method.key] = method
    return cls


def active(d) -> list[Method]:
    """The methods a DistillationSpec uses, in their `order` (logit first)."""
    return sorted((m for m in REGISTRY.values() if m.settings(d) is not None), key=lambda m: m.order)


def row_methods() -> dict[str, Method]:
    """Every table-row method name -> the method providing it."""
    return {name: m for m in REGISTRY.values() for name in m.rows}


def row_labels() -> dict[str, str]:
    return {"none": "None", **{name: label for m in REGISTRY.values() for name, label in m.rows.items()}}


def split_row_method(method: str) -> list[str]:
    """ "vitkd+nkd" -> ["vitkd", "nkd"]; "none" -> []."""
    return [] if method == "none" else [p.strip() for p in method.split("+")]


def row_field_owners() -> dict[str, list[str]]:
    """Every row field a method accepts -> the row methods that take it."""
    out: dict[str, list[str]] = {}
    for m in REGISTRY.values():
        for f in m.row_fields:
            out.setdefault(f, []).extend(m.rows)
    return out


def teacher_tap_union(d) -> set[Tap]:
    return {t for m in active(d) for t in m.teacher_taps(m.settings(d))}


# ---- shared by the feature methods ------------------------------------------------------------------
def zero_based(blocks) -> tuple[int, ...]:
    return tuple(b - 1 for b in blocks)


def block_pair_problems(key: str, cfg, s, t, spec) -> list[tuple[str, str]]:
    """Paired-block feature losses: transformer teacher, blocks within depth, equal patch counts."""
    here = f"distillation.{key}"
    if t.kind == "cnn":
        return [
            (
                "teacher.name",
                f"{t.name} is a CNN: it has no patch tokens for the {key} loss "
                f"(use kd: hard/soft only, or a transformer teacher)",
            )
        ]
    if s.kind == "cnn":
        return []
    problems = []
    for side, info, blocks in (("student", s, cfg.student_blocks), ("teacher", t, cfg.teacher_blocks)):
        for i, b in enumerate(blocks):
            if b > info.depth:
                problems.append(
                    (
                        f"{here}.{side}_blocks[{i}]",
                        f"block {b} is beyond {info.name}'s depth {info.depth} (indices are 1-based)",
                    )
                )
    if s.num_patches != t.num_patches:
        problems.append(
            (
                here,
                f"student {s.name} has {s.num_patches} patches but teacher {t.name} has "
                f"{t.num_patches}: the {key} loss pairs patches one to one",
            )
        )
    return problems


def blocks_text(b) -> str:
    return "{" + ",".join(str(x) for x in b) + "}"


def _discover() -> None:
    """Import every module of this package: each registers its method (a new method is one new file)."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")


_discover()
