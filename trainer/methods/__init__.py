"""Distillation methods as plug-ins, registered as timm registers models (`@register`).

A method is one module of this package, or of another installed package that names it under the
`kdgrid.methods` entry-point group. It declares, in one `Method` subclass:
- `fields`: the `DistillationSpec` fields it owns (its pydantic spec, or flat fields such as DeiT's
  kd/tau/kd_weight); `trainer.spec` builds `DistillationSpec` from every registered method;
- `student_taps` / `teacher_taps`: the features it needs (0-based blocks' raw residual stream, or `FINAL`,
  the last block's tokens after the model's final norm; patch tokens only, class/distillation dropped);
- `build`: its extra trainable modules (projections, generators), which `Student` holds, so the optimizer,
  DDP, EMA and checkpoints see them; `student_side` runs them inside the student's forward;
- `loss`: a function of tensors (its maths in trainer.losses, or pure functions of its module);
- `footprint` and `flops`: the memory and the work its loss adds to a student's step (the planner's
  memory budget and the launchers' cost model);
- `rows` / `row_fields` / `resolve_row` / `name_parts`: the table-row methods and fields it accepts, what
  a row resolves to, and how a row's run name shows its settings (read by orchestrator.grid and .plan);
- `recipe_fields`: its part of a named recipe (experiments/recipes.yaml).

The objective (trainer/objective.py), the Student wrapper, the footprint, the cost model, the grid and the
planner iterate over the registry and never name a method. Methods combine: a spec may set several (hard
KD + manifold, ViTKD + NKD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trainer.spec_base import Block, StrictModel, model_validator

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
    recipe_fields: dict[str, tuple[Any, Any]] = {}  # its fields of a named recipe: name -> (annotation, default)
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

    def flops(self, cfg, s_info, t_info, spec) -> float:
        """Forward FLOPs per training image its loss and modules add to the student's and teacher's own
        passes (the cost model counts a training step as three forwards)."""
        return 0.0

    # ---- grid ---------------------------------------------------------------------------------------
    def resolve_row(self, name: str, row, recipe, hard) -> dict[str, Any]:
        """The DistillationSpec fields a table row of method `name` sets (row fields, recipe, hard KD)."""
        raise NotImplementedError

    def name_parts(self, name: str, row) -> list[str]:
        """How a run's name shows what a table row of method `name` sets ("k=384"); [] leaves the run
        named by its method. By default each row field it takes, as field=value."""
        return [f"{f}={_text(getattr(row, f))}" for f in self.row_fields if getattr(row, f, None) is not None]

    def describe(self, cfg) -> list[str]:
        """Its key settings, for `kdgrid plan`."""
        return []


REGISTRY: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method to the registry (one instance; methods hold no state). Its key, spec
    fields and row methods must be its own: a plug-in may not silently replace another method's."""
    method = cls()
    for other in REGISTRY.values():
        clash = (
            ({method.key} & {other.key})
            | (set(method.fields) & set(other.fields))
            | (set(method.rows) & set(other.rows))
        )
        if clash:
            raise ValueError(
                f"distillation method {cls.__module__}.{cls.__qualname__} takes {', '.join(sorted(clash))}, "
                f"already {type(other).__module__}.{type(other).__qualname__}'s"
            )
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


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return str(value)


def loss_flops(spec, s_info, t_info) -> float:
    """Forward FLOPs per training image of a spec's distillation: each method it uses prices its own."""
    d = spec.distillation
    return sum(m.flops(m.settings(d), s_info, t_info, spec) for m in active(d))


# ---- shared by the feature methods ------------------------------------------------------------------
def zero_based(blocks) -> tuple[int, ...]:
    return tuple(b - 1 for b in blocks)


BLOCK_ROW_FIELDS = {"teacher_blocks": tuple[Block, ...] | None, "student_blocks": tuple[Block, ...] | None}


def paired_blocks_problem(student_blocks, teacher_blocks) -> str | None:
    """Feature losses pair the student's blocks with the teacher's in order: as many of each."""
    if student_blocks is None or teacher_blocks is None or len(student_blocks) == len(teacher_blocks):
        return None
    return f"{len(teacher_blocks)} teacher blocks but {len(student_blocks)} student blocks: blocks are paired in order"


class BlockPairs(StrictModel):
    """A method spec with `student_blocks` and `teacher_blocks`, paired in order (1-based, as the paper)."""

    @model_validator(mode="after")
    def _paired(self):
        problem = paired_blocks_problem(self.student_blocks, self.teacher_blocks)
        if problem:
            raise ValueError(f"teacher_blocks: {problem}")
        return self


def block_name_parts(row) -> list[str]:
    """A row's blocks in its run name: the student's (the teacher's when only they are set)."""
    if getattr(row, "student_blocks", None) is not None:
        return [f"blocks {blocks_text(row.student_blocks)}"]
    if getattr(row, "teacher_blocks", None) is not None:
        return [f"teacher blocks {blocks_text(row.teacher_blocks)}"]
    return []


def linear_flops(width_in: int, width_out: int) -> float:
    """A Linear(width_in, width_out) on one token: a multiply and an add per weight."""
    return 2.0 * width_in * width_out


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


PLUGIN_GROUP = "kdgrid.methods"  # entry points of other packages' method modules (docs/plugins.md)


def _discover() -> None:
    """Import every module of this package, then the modules other installed packages name under the
    `kdgrid.methods` entry-point group: each registers its method (a new method is one new file, here or in
    a lab's own package)."""
    import importlib
    import pkgutil

    from trainer.plugins import load_group

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")
    load_group(PLUGIN_GROUP)


_discover()
