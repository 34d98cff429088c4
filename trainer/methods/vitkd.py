"""ViTKD (Yang et al., "ViTKD: Practical Guidelines for ViT feature knowledge distillation", 2022), from its
released code (yzd-v/cls_KD, `mmcls/models/dis_losses/vitkd.py`, and the DeiT configs there).

- Mimicking: the first two blocks' outputs (the raw residual stream, class token dropped), the student's
  through one Linear(c_S, c_T) per block where the widths differ, matched to the teacher's by MSE.
- Generation: the last block's tokens after the final norm, through Linear(c_S, c_T) where the widths
  differ; a fraction `lam` of the tokens of each image is replaced by a learned mask token, the tokens are
  laid out on the patch grid and go through Conv3x3 -> ReLU -> Conv3x3; MSE to the teacher's tokens on the
  masked positions only.
- Both MSEs are summed and divided by the batch size, weighted by alpha = 3e-5 and beta = 3e-6, the
  generation loss also divided by lam, as the released code does. Added to the cross-entropy (and NKD in
  ViTKD + NKD, a separate method).
The masks are drawn per image from the run's own generator, so a run's randomness is its own.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.methods import (
    FINAL,
    FLOAT,
    BlockPairs,
    LossInputs,
    Method,
    block_pair_problems,
    blocks_text,
    linear_flops,
    register,
    zero_based,
)
from trainer.spec_base import Block, Field, Weight

Ratio = Annotated[float, Field(gt=0, lt=1)]


# ---- the maths, pure -------------------------------------------------------------------------------
def random_token_mask(
    n: int,
    length: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(n, length) float mask, 1 on the int(length * (1 - ratio))-th and later tokens of a random order per
    row (so length - int(length * (1 - ratio)) tokens of every image are masked), 0 elsewhere."""
    device = generator.device if generator is not None else device
    noise = torch.rand(n, length, generator=generator, device=device)
    keep = int(length * (1 - ratio))
    masked = noise.argsort(dim=1)[:, keep:]
    return torch.zeros(n, length, device=device).scatter_(1, masked, 1.0)


def fill_masked(x: Tensor, mask: Tensor, token: Tensor) -> Tensor:
    """x (n, p, c) with the tokens where mask (n, p) is 1 replaced by `token` (c,)."""
    m = mask[..., None].to(x.dtype)
    return x * (1 - m) + token.reshape(1, 1, -1).to(x.dtype) * m


def on_grid(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a conv module to (n, p, c) tokens laid out on their sqrt(p) x sqrt(p) patch grid."""
    n, p, c = x.shape
    side = math.isqrt(p)
    if side * side != p:
        raise ValueError(f"{p} tokens do not form a square patch grid")
    y = module(x.transpose(1, 2).reshape(n, c, side, side))
    return y.flatten(2).transpose(1, 2)


def mimic_loss(f_s: list[Tensor], f_t: list[Tensor]) -> Tensor:
    """Sum over the block pairs of the summed squared error, divided by the batch size."""
    n = f_s[0].shape[0]
    return sum(F.mse_loss(a.float(), b.float(), reduction="sum") for a, b in zip(f_s, f_t)) / n


def generation_loss(generated: Tensor, f_t: Tensor, mask: Tensor, ratio: float) -> Tensor:
    """Summed squared error on the masked tokens only, divided by the batch size and by the mask ratio."""
    m = mask[..., None].float()
    return F.mse_loss(generated.float() * m, f_t.float() * m, reduction="sum") / generated.shape[0] / ratio


# ---- the method ------------------------------------------------------------------------------------
class ViTKDSpec(BlockPairs):
    """ViTKD's settings; the defaults are its released code's (DeiT configs)."""

    alpha: Weight = 3e-5  # mimicking
    beta: Weight = 3e-6  # generation
    lam: Ratio = 0.5  # fraction of tokens masked for generation
    student_blocks: tuple[Block, ...] = (1, 2)  # mimicked blocks (the shallow ones), 1-based
    teacher_blocks: tuple[Block, ...] = (1, 2)


class ViTKDModule(nn.Module):
    """ViTKD's trainable parts, held by the student (the optimizer, DDP, EMA and checkpoints see them)."""

    def __init__(self, c_s: int, c_t: int, mimicked: int):
        super().__init__()
        differ = c_s != c_t
        self.align_low = nn.ModuleList(nn.Linear(c_s, c_t) for _ in range(mimicked)) if differ else None
        self.align_high = nn.Linear(c_s, c_t) if differ else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c_t))
        self.generation = nn.Sequential(
            nn.Conv2d(c_t, c_t, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c_t, c_t, 3, padding=1)
        )

    def forward(self, low: list[Tensor], high: Tensor, mask: Tensor) -> tuple[list[Tensor], Tensor]:
        if self.align_low is not None:
            low = [proj(f) for proj, f in zip(self.align_low, low)]
            high = self.align_high(high)
        return low, on_grid(self.generation, fill_masked(high, mask, self.mask_token))


@register
class ViTKD(Method):
    key = "vitkd"
    order = 30
    fields = {"vitkd": (ViTKDSpec | None, None)}
    rows = {"vitkd": "ViTKD"}
    recipe_fields = {}  # its rows train with its released settings, whatever the recipe
    terms = ("vitkd_mim", "vitkd_gen")

    def student_taps(self, v):
        return (*zero_based(v.student_blocks), FINAL)

    def teacher_taps(self, v):
        return (*zero_based(v.teacher_blocks), FINAL)

    def problems(self, v, s, t, spec):
        out = []
        for side, info in (("student", s), ("teacher", t)):
            if info.kind != "vit":
                out.append((f"{side}.name", f"{info.name} is not a ViT: ViTKD needs its patch tokens on a grid"))
        if out:
            return out
        out += block_pair_problems(self.key, v, s, t, spec)
        if s.num_patches and math.isqrt(s.num_patches) ** 2 != s.num_patches:
            out.append(("distillation.vitkd", f"{s.num_patches} patches do not form a square grid"))
        return out

    def build(self, v, s, t):
        return ViTKDModule(s.width, t.width, len(v.student_blocks))

    def no_weight_decay(self):
        return {"mask_token"}

    def student_side(self, v, module, feats, generator):
        *low, high = feats
        mask = random_token_mask(high.shape[0], high.shape[1], v.lam, generator, high.device)
        low, generated = module(low, high, mask)
        return low, generated, mask

    def loss(self, v, x: LossInputs):
        low, generated, mask = x.student
        *low_t, high_t = x.teacher
        mim = v.alpha * mimic_loss(low, low_t)
        gen = v.beta * generation_loss(generated, high_t, mask, v.lam)
        return mim + gen, {"vitkd_mim": mim, "vitkd_gen": gen}

    def footprint(self, v, s, t, batch):
        # the generation branch keeps ~6 token maps of the teacher's width (mask fill, two convs, ReLU, gap)
        # and the mimicked blocks' projections one each
        return FLOAT * batch * (s.num_patches or 0) * (t.width or 0) * (6 + len(v.student_blocks))

    def flops(self, v, s, t, spec):
        """Per patch: the projections where the widths differ (each mimicked block and the final tokens),
        the generation's two 3x3 convolutions at the teacher's width, the mask fill and the squared errors."""
        p, c_s, c_t = s.num_patches or 0, s.width or 0, t.width or 0
        project = linear_flops(c_s, c_t) * (len(v.student_blocks) + 1) if c_s != c_t else 0.0
        convs = 2 * 9 * linear_flops(c_t, c_t)
        return p * (project + convs + 3 * c_t * (len(v.student_blocks) + 2))

    def resolve_row(self, name, row, recipe, hard):
        return {"vitkd": {}}

    def describe(self, v):
        return [
            f"vitkd α={v.alpha:g} β={v.beta:g} λ={v.lam:g} mimic s{blocks_text(v.student_blocks)} "
            f"t{blocks_text(v.teacher_blocks)} + generation on the final tokens"
        ]
