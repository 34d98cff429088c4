"""NKD, normalized knowledge distillation (Yang et al., "From Knowledge Distillation to Self-Knowledge
Distillation", 2023), as ViTKD pairs it with its feature loss (yzd-v/cls_KD, `mmcls/models/dis_losses/nkd.py`,
the DeiT configs: temp 1, gamma 1; added to the cross-entropy with weight 1).

Two parts on the student's logits: the target class's log-probability weighted by the teacher's probability
of it, and the distributions over the non-target classes (each renormalised without the target) matched by
cross-entropy at temperature `temp`. Under Mixup/CutMix the target is the soft label's argmax, as there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.methods import LossInputs, Method, register
from trainer.spec_base import Positive, StrictModel, Weight


def nkd_loss(logit_s: Tensor, logit_t: Tensor, target: Tensor, *, temp: float = 1.0, gamma: float = 1.0) -> Tensor:
    """-mean_i t_i[y] log s_i[y] - gamma temp^2 mean_i sum_{c != y} T_i[c] log S_i[c], where T and S are the
    teacher's and student's softmax at `temp` over the classes other than the target y."""
    label = target.argmax(dim=1) if target.is_floating_point() else target
    logit_t = logit_t.detach()  # the teacher is a target
    n, c = logit_s.shape
    log_s = F.log_softmax(logit_s, dim=1)
    p_t = F.softmax(logit_t, dim=1)
    target_part = -(p_t.gather(1, label[:, None]) * log_s.gather(1, label[:, None])).mean()
    keep = torch.ones_like(logit_s, dtype=torch.bool).scatter_(1, label[:, None], False)
    non_s, non_t = logit_s[keep].view(n, c - 1), logit_t[keep].view(n, c - 1)
    non = (F.softmax(non_t / temp, dim=1) * F.log_softmax(non_s / temp, dim=1)).sum(dim=1).mean()
    return target_part - gamma * temp**2 * non


class NKDSpec(StrictModel):
    """NKD's settings; the defaults are the DeiT configs of ViTKD's code."""

    temp: Positive = 1.0
    gamma: Weight = 1.0
    weight: Weight = 1.0  # added to the cross-entropy


@register
class NKD(Method):
    key = "nkd"
    order = 40  # after the feature losses: "vitkd+nkd" as ViTKD names the combination
    fields = {"nkd": (NKDSpec | None, None)}
    rows = {"nkd": "NKD"}
    recipe_fields = {}  # its rows train with ViTKD's settings for it, whatever the recipe
    uses_dist_head = True
    terms = ("nkd",)

    def loss(self, cfg, x: LossInputs):
        value = nkd_loss(x.kd_logits, x.t_logits, x.target, temp=cfg.temp, gamma=cfg.gamma)
        return cfg.weight * value, {"nkd": value}

    def flops(self, cfg, s, t, spec):
        """Softmaxes over all classes and over the non-target ones, for student and teacher, and the sums."""
        return 16 * spec.data.num_classes

    def resolve_row(self, name, row, recipe, hard):
        return {"nkd": {}}

    def describe(self, cfg):
        return [f"nkd temp={cfg.temp:g} γ={cfg.gamma:g} w={cfg.weight:g}"]
