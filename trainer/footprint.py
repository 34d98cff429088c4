"""How much memory a run needs: used to split cohorts that would not fit the memory they are given.

An estimate, not a measurement, erring high: parameters with AdamW's state (weights, gradients, two
moments: 16 bytes a parameter, +4 with EMA), the activations a training step keeps for backward, and the
manifold loss's relation maps; for a teacher, its weights and one block's activations (inference mode
keeps nothing for backward) plus the features it hands to the students. Each method adds its own loss's
memory (`Method.footprint`: the manifold loss's relation maps, ...). Activations per token and block
follow the tensors a pre-norm transformer block saves (norm inputs, q/k/v, attention output and
projection, the 4x MLP hidden before and after GELU: ~16 widths) plus the attention probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer import methods
from trainer.models import model_info
from trainer.spec import ExperimentSpec

FLOAT = 4  # bytes: estimates are for float32; fp16 or bf16 autocast only lowers them


@dataclass(frozen=True)
class Footprint:
    student: int  # bytes for one student's training step
    teacher: int  # bytes for the teacher's forward (shared by a cohort), 0 without a teacher


def _block_activations(info, batch: int, heads: int) -> int:
    tokens = (info.num_patches or 0) + 2
    return FLOAT * batch * tokens * (16 * info.width + 2 * heads * tokens)


def _heads(kwargs: dict, width: int) -> int:
    return int(kwargs.get("num_heads", max(1, width // 64)))


def footprint(spec: ExperimentSpec) -> Footprint:
    b = spec.recipe.batch_size
    s_kwargs = spec.model_kwargs()
    s = model_info(spec.student.name, **s_kwargs)
    student = s.params * (16 + (4 if spec.recipe.ema else 0))
    if s.kind == "cnn":  # no per-token model: a generous multiple of the input per image
        student += FLOAT * b * spec.data.in_chans * spec.data.img_size**2 * 64
    else:
        student += s.depth * _block_activations(s, b, _heads(s_kwargs, s.width))
    d = spec.distillation
    if s.kind != "cnn" and spec.teacher is not None:
        t_info = model_info(spec.teacher.name, **spec.teacher_kwargs())
        for m in methods.active(d):
            student += m.footprint(m.settings(d), s, t_info, b)
    teacher = 0
    if spec.teacher is not None:
        t_kwargs = spec.teacher_kwargs()
        t = model_info(spec.teacher.name, **t_kwargs)
        teacher = t.params * FLOAT
        if t.kind == "cnn":
            teacher += FLOAT * b * spec.data.in_chans * spec.data.img_size**2 * 16
        else:
            teacher += _block_activations(t, b, _heads(t_kwargs, t.width))
            teacher += FLOAT * b * t.num_patches * t.width * len(methods.teacher_tap_union(d))
    return Footprint(student=student, teacher=teacher)


def cohort_bytes(specs: list[ExperimentSpec]) -> int:
    """A cohort's peak: one teacher forward (its widest member's taps) plus every student's step."""
    prints = [footprint(s) for s in specs]
    return max(p.teacher for p in prints) + sum(p.student for p in prints)
