"""Feature taps: per-block patch tokens, through timm's `forward_intermediates`.

timm already drops the class and distillation tokens of intermediates (`return_prefix_tokens=False`),
and CaiT's intermediates are its 24 self-attention blocks only: its class token enters later, in the
class-attention blocks, which are never tapped. Indices here are 0-based; specs use the paper's 1-based.
A tap is a block index (that block's output: the raw residual stream) or `FINAL` (the last block's
tokens after the model's final norm, which is what the head reads), patch tokens only either way.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer import methods
from trainer.methods import FINAL, Tap


def forward_taps(model: nn.Module, x: torch.Tensor, blocks: tuple[Tap, ...]):
    """(logits, [patch tokens (n, p, c) of each tap in `blocks` (block indices or FINAL), in that order]).

    `logits` is what the model's head returns: a (class, distillation) pair for a DeiT student in
    distilled training mode, else one tensor.
    """
    taps = blocks
    if not taps:
        return model(x), []
    wanted = sorted({b for b in taps if b != FINAL})
    if wanted:
        final, feats = model.forward_intermediates(x, indices=wanted, output_fmt="NLC", norm=False)
    else:
        final, feats = model.forward_features(x), []
    by_tap: dict[Tap, torch.Tensor] = dict(zip(wanted, feats))
    if FINAL in taps:  # the final norm's output, prefix (class, distillation) tokens dropped
        by_tap[FINAL] = final[:, getattr(model, "num_prefix_tokens", 1) :]
    return model.forward_head(final), [by_tap[b] for b in taps]


class Student(nn.Module):
    """A student with the taps and trainable modules its methods need, so DDP and torch.compile see one
    module, and the optimizer, EMA and checkpoints see every parameter.

    forward(x, generator) -> (logits, {method key: what the method's `student_side` made of its taps}).
    Each method's module is an attribute named by the method (`projections` for embedding transfer, as
    checkpoints have always named it).
    """

    def __init__(self, model: nn.Module, distillation=None, s_info=None, t_info=None):
        super().__init__()
        self.model = model
        self.plan: list[tuple[str, str | None, tuple[Tap, ...]]] = []  # (method key, module attribute, taps)
        used = methods.active(distillation) if distillation is not None else []
        for m in used:
            cfg = m.settings(distillation)
            taps = tuple(m.student_taps(cfg))
            module = m.build(cfg, s_info, t_info)
            attr = None
            if module is not None:
                attr = m.module_name or m.key
                self.add_module(attr, module)
            if taps:
                self.plan.append((m.key, attr, taps))
        self._distillation = distillation

    def no_weight_decay(self) -> set[str]:
        out = set()
        for key, attr, _ in self.plan:
            if attr is not None:
                out |= {f"{attr}.{n}" for n in methods.REGISTRY[key].no_weight_decay()}
        return out

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        taps = tuple(t for _, _, ts in self.plan for t in ts)
        out, feats = forward_taps(self.model, x, taps)
        sides, at = {}, 0
        for key, attr, ts in self.plan:
            m = methods.REGISTRY[key]
            own, at = feats[at : at + len(ts)], at + len(ts)
            module = getattr(self, attr) if attr is not None else None
            sides[key] = m.student_side(m.settings(self._distillation), module, own, generator)
        return out, sides
