"""Feature taps: per-block patch tokens, through timm's `forward_intermediates`.

timm already drops the class and distillation tokens of intermediates (`return_prefix_tokens=False`),
and CaiT's intermediates are its 24 self-attention blocks only: its class token enters later, in the
class-attention blocks, which are never tapped. Indices here are 0-based; specs use the paper's 1-based.
"""
from __future__ import annotations

import torch
from torch import nn


def forward_taps(model: nn.Module, x: torch.Tensor, blocks: tuple[int, ...]):
    """(logits, [patch tokens (n, p, c) of each block in `blocks`, in that order]).

    `logits` is what the model's head returns: a (class, distillation) pair for a DeiT student in
    distilled training mode, else one tensor.
    """
    if not blocks:
        return model(x), []
    wanted = sorted(set(blocks))
    final, feats = model.forward_intermediates(x, indices=wanted, output_fmt="NLC", norm=False)
    by_block = dict(zip(wanted, feats))
    return model.forward_head(final), [by_block[b] for b in blocks]


class Student(nn.Module):
    """A student with the taps and projections its losses need, so DDP and torch.compile see one module.

    forward(x) -> (logits, manifold features, embedding-transfer features after projection).
    """

    def __init__(self, model: nn.Module, manifold_blocks: tuple[int, ...], embed_blocks: tuple[int, ...],
                 projections: nn.ModuleList | None = None):
        super().__init__()
        self.model = model
        self.manifold_blocks = manifold_blocks
        self.embed_blocks = embed_blocks
        self.projections = projections

    def forward(self, x: torch.Tensor):
        blocks = self.manifold_blocks + self.embed_blocks
        out, feats = forward_taps(self.model, x, blocks)
        mf, emb = feats[: len(self.manifold_blocks)], feats[len(self.manifold_blocks):]
        if self.projections is not None:
            emb = [proj(f) for proj, f in zip(self.projections, emb)]
        return out, mf, emb
