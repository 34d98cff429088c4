"""Direct embedding transfer (FitNets; Table 7's baseline of Jia et al.): MSE between paired blocks'
patch tokens, through a learned Linear(c_S, c_T) per pair where the widths differ."""

from __future__ import annotations

from torch import nn

from trainer import losses
from trainer.methods import (
    BLOCK_ROW_FIELDS,
    BlockPairs,
    LossInputs,
    Method,
    block_name_parts,
    block_pair_problems,
    blocks_text,
    linear_flops,
    register,
    zero_based,
)
from trainer.spec_base import Block, Weight


class EmbeddingSpec(BlockPairs):
    """Direct embedding transfer (Table 7's baseline): MSE between paired block outputs."""

    student_blocks: tuple[Block, ...] = (1, 2, 3, 4, 9, 10, 11, 12)
    teacher_blocks: tuple[Block, ...] = (1, 2, 3, 4, 21, 22, 23, 24)
    weight: Weight = 1.0


@register
class Embedding(Method):
    key = "embedding"
    order = 20
    fields = {"embedding": (EmbeddingSpec | None, None)}
    rows = {"embedding": "Embedding"}
    row_fields = dict(BLOCK_ROW_FIELDS)
    recipe_fields = {"embedding": (EmbeddingSpec, EmbeddingSpec())}
    recipe_rows = True
    module_name = "projections"  # the attribute name checkpoints have always used
    terms = ("embed",)

    def student_taps(self, e):
        return zero_based(e.student_blocks)

    def teacher_taps(self, e):
        return zero_based(e.teacher_blocks)

    def problems(self, e, s, t, spec):
        return block_pair_problems(self.key, e, s, t, spec)

    def build(self, e, s, t):
        if s.width != t.width:  # FitNets' regressor: a learned linear map per block pair
            return nn.ModuleList(nn.Linear(s.width, t.width) for _ in e.student_blocks)
        return None

    def student_side(self, e, module, feats, generator):
        return feats if module is None else [proj(f) for proj, f in zip(module, feats)]

    def loss(self, e, x: LossInputs):
        emb = sum(losses.embedding_transfer(fs.float(), ft.float()) for fs, ft in zip(x.student, x.teacher))
        emb = emb * e.weight
        return emb, {"embed": emb}

    def flops(self, e, s, t, spec):
        """Per block pair and patch: the projection where the widths differ, and the squared error."""
        p, c_s, c_t = s.num_patches or 0, s.width or 0, t.width or 0
        project = linear_flops(c_s, c_t) if c_s != c_t else 0.0
        return len(e.student_blocks) * p * (project + 3 * c_t)

    def name_parts(self, name, row):
        """Its blocks, after the method's name (Table 7 sets them beside the manifold rows)."""
        blocks = block_name_parts(row)
        return ["embedding", *blocks] if blocks else []

    def resolve_row(self, name, row, recipe, hard):
        loss = recipe.embedding.model_dump()
        loss.update({f: getattr(row, f) for f in self.row_fields if getattr(row, f, None) is not None})
        return {**recipe.logit.model_dump(), "embedding": loss}

    def describe(self, e):
        return [f"blocks s{blocks_text(e.student_blocks)} t{blocks_text(e.teacher_blocks)}"]
