"""Cosine distillation: the student's distillation-head logits pulled towards the teacher's direction,
1 - cos(z_s, z_t) averaged over the batch, added to the cross-entropy with `weight`."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from trainer.methods import LossInputs, Method, register
from trainer.spec_base import StrictModel, Weight


def cosine_loss(logit_s: Tensor, logit_t: Tensor) -> Tensor:
    """Mean over the batch of 1 - cos(student logits, teacher logits); the teacher is a target."""
    return (1 - F.cosine_similarity(logit_s, logit_t.detach(), dim=1)).mean()


class CosineSpec(StrictModel):
    """Its settings in a run's spec (`distillation.cosine`); unset, the method is off."""

    weight: Weight = 1.0


@register
class Cosine(Method):
    key = "cosine"  # the spec field `distillation.cosine`
    fields = {"cosine": (CosineSpec | None, None)}
    rows = {"cosine": "Cosine"}  # a table row's `method: cosine`, printed "Cosine"
    row_fields = {"cosine_weight": Weight | None}  # what a table row may vary
    uses_dist_head = True  # on a distilled student's distillation head, as DeiT's hard distillation
    terms = ("cosine",)  # logged as train.cosine

    def loss(self, cfg, x: LossInputs):
        value = cosine_loss(x.kd_logits, x.t_logits)
        return cfg.weight * value, {"cosine": value}

    def flops(self, cfg, s, t, spec):
        """Two norms, a dot product and a division over the classes."""
        return 6 * spec.data.num_classes

    def resolve_row(self, name, row, recipe, hard):
        return {"cosine": {} if row.cosine_weight is None else {"weight": row.cosine_weight}}

    def describe(self, cfg):
        return [f"cosine w={cfg.weight:g}"]
