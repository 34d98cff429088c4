"""The training objective: the cross-entropy with the labels plus every registered distillation method the
spec uses (trainer/methods/), summed without naming them.

Pure (torch only, through trainer.losses and the methods): it reads `spec` by attribute (a pydantic
ExperimentSpec in the engine, any object with the same fields elsewhere), so benchmarks can run the
engine's exact loss on a machine without pydantic, mlflow or ray.
"""

from __future__ import annotations

import torch

from trainer import losses, methods


def objective(
    spec, out, target, t_logits, s_feats: dict, t_feats: dict, generator: torch.Generator | None
) -> dict[str, torch.Tensor]:
    """Loss terms of one step: "ce", each method's terms, and their weighted sum "loss".

    out: the student's head output (a (class, distillation) pair for a distilled DeiT); s_feats: the
    Student wrapper's per-method outputs; t_feats: the teacher's features by tap.
    """
    d = spec.distillation
    used = methods.active(d)
    cls_logits, kd_logits = out if isinstance(out, tuple) else (out, out)
    # heads run under autocast (bf16 on a GPU): every loss in float32 (a no-op for float32 logits)
    cls_logits, kd_logits = cls_logits.float(), kd_logits.float()
    smoothing = spec.data.augment.smoothing
    ce = losses.classification_loss(cls_logits, target, smoothing=smoothing)
    if isinstance(out, tuple) and not any(m.uses_dist_head for m in used):
        # a distillation head no method trains learns the labels too
        ce = (ce + losses.classification_loss(kd_logits, target, smoothing=smoothing)) / 2
    scale = 1.0
    for m in used:
        scale *= m.ce_scale(m.settings(d))
    total = ce if scale == 1.0 else scale * ce
    terms: dict[str, torch.Tensor] = {}
    t_logits = t_logits.float() if t_logits is not None else None
    for m in used:
        cfg = m.settings(d)
        x = methods.LossInputs(
            cls_logits=cls_logits,
            kd_logits=kd_logits,
            t_logits=t_logits,
            target=target,
            student=s_feats.get(m.key),
            teacher=[t_feats[b] for b in m.teacher_taps(cfg)],
            generator=generator,
        )
        part, logged = m.loss(cfg, x)
        total = total + part
        terms.update(logged)
    terms["ce"] = ce
    terms["loss"] = total
    return terms
