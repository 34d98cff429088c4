"""DeiT's logit distillation (Touvron et al., 2021, Eq. 5-6): soft (KL at temperature tau) or hard
(cross-entropy against the teacher's argmax), on the distillation head of a distilled student, else on
the class head: (1 - kd_weight) CE + kd_weight KD.

The soft KL is averaged over the batch (`kd_reduction` unset, as kdgrid always did) or, as DeiT's released
code does (`reduction='sum' ... / outputs_kd.numel()`), over every element of the batch's logits
(`kd_reduction: elements`, the batch mean divided by the number of classes).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from trainer import losses
from trainer.methods import LossInputs, Method, register
from trainer.spec_base import Field, Positive, Strict, StrictModel

KDWeight = Annotated[float, Strict(), Field(ge=0, le=1)]
Reduction = Literal["batch", "elements"]
FLOPS_PER_CLASS = 10  # softmaxes of student and teacher and the KL (or cross-entropy) over one image's logits


class LogitSettings(StrictModel):
    """The logit distillation of a recipe's rows, and DeiT's hard distillation of every Hard row (Eq. 5-6):
    (1 - kd_weight) CE + kd_weight KD."""

    kd: Literal["none", "soft", "hard"]
    tau: Positive = 1.0
    kd_weight: KDWeight = 0.5


@register
class LogitKD(Method):
    key = "kd"
    order = 0
    fields = {
        "kd": (Literal["none", "soft", "hard"], "none"),
        "tau": (Positive, 1.0),
        "kd_weight": (KDWeight, 0.5),  # DeiT's lambda: (1 - lambda) CE + lambda KD
        "kd_reduction": (Reduction | None, None),  # soft only; unset = batch (keeps earlier hashes)
    }
    rows = {"hard": "Hard", "soft": "Soft"}
    row_fields = {"tau": Positive | None, "kd_weight": KDWeight | None, "kd_reduction": Reduction | None}
    recipe_fields = {"logit": (LogitSettings, ...)}  # required: every recipe says how its rows distil logits
    uses_dist_head = True
    terms = ("kd",)

    def settings(self, d) -> Any:
        return d if getattr(d, "kd", "none") != "none" else None

    def canonical(self, d) -> dict[str, Any]:
        fix: dict[str, Any] = {}
        if d.kd == "none":
            fix.update(tau=1.0, kd_weight=0.0)
        if d.kd != "soft":
            fix.update(tau=1.0, kd_reduction=None)
        return fix

    def ce_scale(self, d) -> float:
        return 1 - d.kd_weight

    def loss(self, d, x: LossInputs):
        kd = losses.kd_loss(
            x.kd_logits, x.t_logits, kind=d.kd, tau=d.tau, reduction=getattr(d, "kd_reduction", None) or "batch"
        )
        return d.kd_weight * kd, {"kd": kd}

    def flops(self, d, s, t, spec) -> float:
        return FLOPS_PER_CLASS * spec.data.num_classes

    def name_parts(self, name: str, row) -> list[str]:
        """hard / soft, the row's temperature, weight and reduction, and "class token" for a student without
        a distillation token (DeiT's table has both, with the same model name)."""
        settings = [f"{sym}={v:g}" for sym, v in (("τ", row.tau), ("λ", row.kd_weight)) if v is not None]
        if row.kd_reduction is not None:
            settings.append(f"kl/{row.kd_reduction}")
        undistilled = row.student and "distilled" not in row.student
        return [name, *([" ".join(settings)] if settings else []), *(["class token"] if undistilled else [])]

    def resolve_row(self, name: str, row, recipe, hard) -> dict[str, Any]:
        out = hard.model_dump() if name == "hard" else {"kd": "soft", "tau": 1.0, "kd_weight": 0.5}
        out.update({f: getattr(row, f) for f in self.row_fields if getattr(row, f, None) is not None})
        return out

    def describe(self, d) -> list[str]:
        text = f"kd={d.kd}" + (f" τ={d.tau:g}" if d.kd == "soft" else "") + f" w={d.kd_weight:g}"
        if getattr(d, "kd_reduction", None):
            text += f" kl/{d.kd_reduction}"
        return [text]
