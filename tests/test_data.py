"""Fashion-MNIST from Debian's files: deterministic subsets, epoch order and augmentation."""

from __future__ import annotations

import torch

from trainer import data
from trainer.datasets.fashion_mnist import MEAN, STD
from trainer.spec import AugmentSpec, DataSpec


def batches(spec: DataSpec, seed: int, epoch: int, batch: int = 64):
    train, _ = data.build(spec, batch)
    return list(train.epoch(seed, epoch))


def test_order_and_augmentation_are_functions_of_seed_and_epoch():
    spec = DataSpec(
        dataset="fashion_mnist",
        train_subset=512,
        val_subset=64,
        augment=AugmentSpec(hflip=0.5, crop_padding=2, crop_scale=(0.3, 1.0)),
    )
    a, b = batches(spec, 0, 3), batches(spec, 0, 3)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    other_epoch, other_seed = batches(spec, 0, 4), batches(spec, 1, 3)
    assert not torch.equal(a[0][1], other_epoch[0][1])
    assert not torch.equal(a[0][1], other_seed[0][1])
    assert len(a) == 512 // 64 and a[0][0].shape == (64, 1, 28, 28)


def test_subsets_are_deterministic_and_validation_is_unaugmented():
    spec = DataSpec(
        dataset="fashion_mnist",
        train_subset=300,
        val_subset=200,
        subset_seed=5,
        augment=AugmentSpec(hflip=1.0, crop_scale=(0.2, 0.2)),
    )
    t1, v1 = data.build(spec, 50)
    t2, v2 = data.build(spec, 50)
    assert torch.equal(t1.labels, t2.labels) and len(t1.labels) == 300 and len(v1.labels) == 200
    x, _ = next(iter(v1.epoch(7, 9)))  # validation: no augmentation, same for any seed/epoch
    raw = v1.images[:50].float().div(255).sub(MEAN).div(STD)
    assert torch.allclose(x, raw)


def test_random_resized_crop_zooms_in():
    """A crop of 20% of the area, resized back: the garment's bounding box grows beyond the image."""
    spec = DataSpec(
        dataset="fashion_mnist", train_subset=256, val_subset=64, augment=AugmentSpec(hflip=0.0, crop_scale=(0.2, 0.2))
    )
    train, _ = data.build(spec, 256)
    x, _ = next(iter(train.epoch(0, 0)))
    pixels = x * STD + MEAN  # back to [0, 1]
    raw = train.images.float().div(255)
    lit_crop, lit_raw = (pixels > 0.15).float().mean(), (raw > 0.15).float().mean()
    assert lit_crop > 1.3 * lit_raw  # zoomed in: more of the frame is garment
