"""Models: the paper's timm models, their small CPU analogs, and what the spec needs to know about each.

The analogs keep the paper's depths (DeiT students 12 blocks, CaiT teachers 24 self-attention blocks plus
2 class-attention blocks) so that the block indices of the paper's Table 5 mean the same thing at every
scale; only width, patch size and input size shrink. They are registered with timm, so
`timm.create_model("analog_cait_s24")` works like any timm model and a scale can override their
keyword arguments (width, patch size, ...) from YAML.
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.models import register_model
from timm.models.cait import Cait
from timm.models.deit import VisionTransformerDistilled
from timm.models.regnet import RegNet, RegNetCfg
from timm.models.vision_transformer import VisionTransformer
from torch.overrides import TorchFunctionMode

# Shared defaults of every analog: Fashion-MNIST shaped input.
_ANALOG_INPUT = dict(img_size=28, in_chans=1, num_classes=10)


def _vit(cls, defaults: dict, kwargs: dict):
    kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None), kwargs.pop("cache_dir", None)
    return cls(**{**_ANALOG_INPUT, **defaults, **kwargs})


@register_model
def analog_deit_tiny(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """DeiT-Tiny analog without distillation token (the no-distillation baseline of Figure 4)."""
    return _vit(VisionTransformer, dict(patch_size=4, embed_dim=48, depth=12, num_heads=3), kwargs)


@register_model
def analog_deit_tiny_distilled(pretrained: bool = False, **kwargs) -> VisionTransformerDistilled:
    """DeiT-Tiny analog with DeiT's distillation token: 12 blocks, a quarter of the width."""
    return _vit(VisionTransformerDistilled, dict(patch_size=4, embed_dim=48, depth=12, num_heads=3), kwargs)


@register_model
def analog_deit_small(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _vit(VisionTransformer, dict(patch_size=4, embed_dim=96, depth=12, num_heads=6), kwargs)


@register_model
def analog_deit_small_distilled(pretrained: bool = False, **kwargs) -> VisionTransformerDistilled:
    """DeiT-Small analog: twice the Tiny analog's width, as in the paper (384 vs 192)."""
    return _vit(VisionTransformerDistilled, dict(patch_size=4, embed_dim=96, depth=12, num_heads=6), kwargs)


# CaiT's LayerScale starts its residual branches at 1e-5 for 24-block models trained 400 epochs on
# ImageNet; the analogs train for a few epochs, where 1e-5 leaves the branches nearly silent (measured:
# 38% vs 53% top-1 after 2 epochs of 20k Fashion-MNIST images), so they start at 0.1.
_CAIT_ANALOG_INIT = 0.1


@register_model
def analog_cait_xxs24(pretrained: bool = False, **kwargs) -> Cait:
    """CaiT-XXS24 analog: 24 self-attention + 2 class-attention blocks, the Tiny analog's width."""
    return _vit(Cait, dict(patch_size=4, embed_dim=48, depth=24, num_heads=4, init_values=_CAIT_ANALOG_INIT), kwargs)


@register_model
def analog_cait_s24(pretrained: bool = False, **kwargs) -> Cait:
    """CaiT-S24 analog: 24 + 2 blocks at the Small analog's width."""
    return _vit(Cait, dict(patch_size=4, embed_dim=96, depth=24, num_heads=8, init_values=_CAIT_ANALOG_INIT), kwargs)


@register_model
def analog_regnety_160(pretrained: bool = False, **kwargs) -> RegNet:
    """A small RegNetY (squeeze-excitation, grouped convs) standing in for DeiT's RegNetY-16GF teacher."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    cfg = dict(
        depth=kwargs.pop("depth", 10),
        w0=kwargs.pop("w0", 16),
        wa=kwargs.pop("wa", 12.0),
        wm=kwargs.pop("wm", 2.0),
        group_size=kwargs.pop("group_size", 8),
        se_ratio=0.25,
    )
    kwargs.pop("img_size", None)  # convolutional: any input size
    args = {**_ANALOG_INPUT, **kwargs}
    args.pop("img_size")
    return RegNet(RegNetCfg(**cfg), **args)


ANALOGS = (
    "analog_deit_tiny",
    "analog_deit_tiny_distilled",
    "analog_deit_small",
    "analog_deit_small_distilled",
    "analog_cait_xxs24",
    "analog_cait_s24",
    "analog_regnety_160",
)

# How the paper (and the report) names each model.
DISPLAY = {
    "deit_tiny_patch16_224": "DeiT-Tiny",
    "deit_tiny_distilled_patch16_224": "DeiT-Tiny",
    "deit_small_patch16_224": "DeiT-Small",
    "deit_small_distilled_patch16_224": "DeiT-Small",
    "deit_base_patch16_224": "DeiT-Base",
    "deit_base_distilled_patch16_224": "DeiT-Base",
    "cait_xxs24_224": "CaiT-XXS24",
    "cait_s24_224": "CaiT-S24",
    "regnety_160": "RegNetY-16GF",
    # ViTKD's teachers (DeiT III, ImageNet-21k pre-trained, fine-tuned on ImageNet-1k)
    "deit3_small_patch16_224": "DeiT III-Small",
    "deit3_base_patch16_224": "DeiT III-Base",
    "deit3_large_patch16_224": "DeiT III-Large",
}
SHORT = {
    "deit_tiny_patch16_224": "deit_tiny",
    "deit_tiny_distilled_patch16_224": "deit_tiny",
    "deit_small_patch16_224": "deit_small",
    "deit_small_distilled_patch16_224": "deit_small",
    "deit_base_patch16_224": "deit_base",
    "deit_base_distilled_patch16_224": "deit_base",
    "cait_xxs24_224": "cait_xxs24",
    "cait_s24_224": "cait_s24",
    "regnety_160": "regnety_160",
    "deit3_small_patch16_224": "deit3_small",
    "deit3_base_patch16_224": "deit3_base",
    "deit3_large_patch16_224": "deit3_large",
}


class UnknownModel(ValueError):
    pass


@dataclass(frozen=True)
class ModelInfo:
    """What validation needs to know about a model, read off an instance built on the meta device."""

    name: str
    kind: str  # "vit" (ViT/DeiT), "cait" or "cnn"
    depth: int | None  # self-attention blocks whose patch tokens can be tapped
    width: int | None
    num_patches: int | None
    img_size: int | None
    distilled: bool  # has DeiT's distillation token and head
    params: int  # parameters (weights) in all


def known_models() -> list[str]:
    return sorted(set(timm.list_models()) | set(ANALOGS))


def check_known(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, known_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModel(
            f"unknown model {name!r}.{hint} Use a timm model name (timm.list_models()) "
            f"or one of the CPU analogs: {', '.join(ANALOGS)}."
        )


# Weight initialisers and the in-place arithmetic they are made of: they write values, never shapes.
_VALUE_WRITES = frozenset(
    "uniform_ normal_ trunc_normal_ zero_ zeros_ ones_ fill_ constant_ erfinv_ mul_ add_ sub_ div_ clamp_ copy_ "
    "kaiming_uniform_ kaiming_normal_ xavier_uniform_ xavier_normal_ lecun_normal_ orthogonal_".split()
)


class _NoValues(TorchFunctionMode):
    """A meta tensor has no values, so its initialisers have nothing to do; on the meta device they would
    still run through torch's Python reference kernels, most of the time it takes to build a model there."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in _VALUE_WRITES and args and getattr(args[0], "is_meta", False):
            return args[0]
        return func(*args, **(kwargs or {}))


def build_on_meta(name: str, **kwargs: Any) -> torch.nn.Module:
    """`create(name, **kwargs)` on the meta device: the model's structure and shapes, no weights."""
    check_known(name)
    with torch.device("meta"), _NoValues():
        return timm.create_model(name, pretrained=False, **kwargs)


@functools.lru_cache(maxsize=256)
def _info(name: str, frozen_kwargs: str) -> ModelInfo:
    model = build_on_meta(name, **json.loads(frozen_kwargs))
    blocks = getattr(model, "blocks", None)
    patch_embed = getattr(model, "patch_embed", None)
    if isinstance(model, Cait):
        kind = "cait"
    elif isinstance(model, VisionTransformer):
        kind = "vit"
    else:
        kind = "cnn"
    img = getattr(patch_embed, "img_size", None)
    return ModelInfo(
        name=name,
        kind=kind,
        depth=len(blocks) if blocks is not None and kind != "cnn" else None,
        width=getattr(model, "embed_dim", None) if kind != "cnn" else None,
        num_patches=getattr(patch_embed, "num_patches", None) if kind != "cnn" else None,
        img_size=img[0] if isinstance(img, (tuple, list)) else img,
        distilled=isinstance(model, VisionTransformerDistilled),
        params=sum(p.numel() for p in model.parameters()),
    )


def model_info(name: str, **kwargs: Any) -> ModelInfo:
    """Introspect `name` as `create_model(name, **kwargs)` would build it, without allocating weights."""
    return _info(name, json.dumps(kwargs, sort_keys=True))


def create(name: str, **kwargs: Any) -> torch.nn.Module:
    check_known(name)
    return timm.create_model(name, pretrained=False, **kwargs)
