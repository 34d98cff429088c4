"""The training objective: the loss functions of trainer.losses combined as a spec says (Eq. 5, 6, 9, 13).

Pure (torch only, through trainer.losses): it reads `spec` by attribute (a pydantic ExperimentSpec in
the engine, any object with the same fields elsewhere), so benchmarks can run the engine's exact loss
on a machine without pydantic, mlflow or ray.
"""
from __future__ import annotations

import torch

from trainer import losses


def objective(spec, out, target, t_logits, f_mf, t_mf, f_emb, t_emb,
              generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    d = spec.distillation
    cls_logits, kd_logits = out if isinstance(out, tuple) else (out, out)
    # heads run under autocast (bf16 on a GPU): every loss in float32 (a no-op for float32 logits)
    cls_logits, kd_logits = cls_logits.float(), kd_logits.float()
    smoothing = spec.data.augment.smoothing
    ce = losses.classification_loss(cls_logits, target, smoothing=smoothing)
    terms: dict[str, torch.Tensor] = {}
    if d.kd == "none":
        if isinstance(out, tuple):  # a distillation head without a teacher learns the labels too
            ce = (ce + losses.classification_loss(kd_logits, target, smoothing=smoothing)) / 2
        total = ce
    else:
        kd = losses.kd_loss(kd_logits, t_logits.float(), kind=d.kd, tau=d.tau)
        total = (1 - d.kd_weight) * ce + d.kd_weight * kd
        terms["kd"] = kd
    terms["ce"] = ce
    if d.manifold is not None:
        m = d.manifold
        weights = {"ci": m.term_scale.ci * m.weight, "cp": m.term_scale.cp * m.alpha * m.weight,
                   "rs": m.term_scale.rs * m.beta * m.weight}
        mf = losses.manifold_loss(f_mf, t_mf, terms=m.terms, weights=weights, k=m.k, reduction=m.reduction,
                                  layer_reduce=m.layer_reduce,
                                  exact_weight=m.exact_weight * m.weight if m.exact else 0.0,
                                  generator=generator)
        total = total + mf.pop("total")
        terms.update({f"mf_{k}": v for k, v in mf.items()})
    if d.embedding is not None:
        emb = sum(losses.embedding_transfer(fs.float(), ft.float()) for fs, ft in zip(f_emb, t_emb))
        emb = emb * d.embedding.weight
        total = total + emb
        terms["embed"] = emb
    terms["loss"] = total
    return terms
