"""The data pipeline every dataset shares: its order, sharding, subsets and augmentation, and the two
batch sources a dataset (trainer.datasets) builds, images in memory or a torch dataset behind a DataLoader.

The data order of every epoch is a pure function of (seed, epoch), and the augmentation of a micro-batch a
function of (seed, epoch, its global index): a run resumed from a checkpoint, trained in a cohort beside
other students, or split differently over GPUs and accumulation steps sees exactly the same micro-batches.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from trainer import datasets
from trainer.spec import DataSpec


def subset_indices(n: int, size: int | None, seed: int) -> torch.Tensor | None:
    """The sorted indices of a split's deterministic subset of `size` of its `n` images; None: all."""
    if size is None or size >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:size].sort().values


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders epoch `epoch` of a run with seed `seed`."""
    return torch.Generator().manual_seed(1_000_003 * (seed + 1) + epoch)


def micro_seed(seed: int, epoch: int, index: int, salt: str = "") -> int:
    """A seed for global micro-batch `index` of an epoch (and a purpose, `salt`): what a micro-batch draws
    (augmentation, mixup, drop-path, L_rs) depends on which images it holds, never on the rank or the
    accumulation step that trains it, so a run is the same on 1 GPU x 8 steps as on 8 GPUs x 1."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}/{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def micro_batches(n: int, seed: int, epoch: int, micro: int, group: int, repeats: int = 1) -> torch.Tensor:
    """The sample indices of every global micro-batch of an epoch: (steps x group, micro).

    One permutation of the n images per (seed, epoch) (each image `repeats` times in a row: DeiT's repeated
    augmentation), cut into optimizer steps of group x micro images (group = world size x accumulation, so
    the global batch); within a step, consecutive images go to consecutive micro-batches (image e to
    micro-batch e mod group), so an image's repeats land in different micro-batches, as DeiT's sampler puts
    them on different GPUs. Micro-batch j = s x group + a x world + r is trained by rank r at accumulation
    step a of optimizer step s. With group 1 the micro-batches are contiguous slices of the permutation.
    """
    order = torch.randperm(n, generator=epoch_generator(seed, epoch))
    if repeats > 1:
        order = order.repeat_interleave(repeats)[:n]
    steps = n // (micro * group)
    return order[: steps * group * micro].view(steps, micro, group).transpose(1, 2).reshape(steps * group, micro)


def rank_rows(total: int, rank: int, world_size: int) -> range:
    """The global micro-batches rank `rank` trains, in training order: j = i x world + rank."""
    return range(rank, total, world_size)


@dataclass
class TensorData:
    """An in-memory image set (uint8 N x C x H x W) served in batches with batched augmentation.

    For sets small enough to hold whole (Fashion-MNIST): augmenting a batch at once (random crop with zero
    padding, random-resized crop, horizontal flip) from an explicit generator keeps a CPU step cheap and the
    order exact. Pixels are scaled to [0, 1], then normalised with the dataset's `mean` and `std`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    train: bool
    crop_padding: int = 0
    crop_scale: tuple[float, float] | None = None
    hflip: float = 0.0
    rank: int = 0
    world_size: int = 1
    accumulation: int = 1
    mean: float = 0.0
    std: float = 1.0

    def __len__(self) -> int:
        """Micro-batches this rank trains per epoch (train), or evaluates (val: its shard, every image)."""
        n = len(self.labels)
        if self.train:
            return n // (self.batch_size * self.world_size * self.accumulation) * self.accumulation
        return -(-len(range(self.rank, n, self.world_size)) // self.batch_size)

    def epoch(self, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.train:
            rows = micro_batches(n, seed, epoch, self.batch_size, self.world_size * self.accumulation)
            batches = ((j, rows[j]) for j in rank_rows(len(rows), self.rank, self.world_size))
        else:
            order = torch.arange(self.rank, n, self.world_size)
            batches = ((None, order[i : i + self.batch_size]) for i in range(0, len(order), self.batch_size))
        for j, idx in batches:
            x = self.images[idx].float().div_(255)
            if self.train:
                x = self._augment(x, torch.Generator().manual_seed(micro_seed(seed, epoch, j, "augment")))
            yield x.sub_(self.mean).div_(self.std), self.labels[idx]

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.crop_scale is not None:
            x = _random_resized_crop(x, self.crop_scale, g)
        if self.crop_padding:
            p = self.crop_padding
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
            rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, c, h, w + 2 * p)
            x = padded.gather(2, rows)
            cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, c, h, w)
            x = x.gather(3, cols)
        if self.hflip:
            flip = torch.rand(n, generator=g) < self.hflip
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x


def _random_resized_crop(x: torch.Tensor, scale: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """timm/torchvision's RandomResizedCrop (ratio 3/4..4/3), per image, for a whole batch at once.

    Each image gets a crop of area fraction U(scale) and log-uniform aspect ratio, resized back to the
    full size (bilinear), as an affine resampling. DeiT's argument for hard distillation rests on this:
    a crop that misses part of the object is where the teacher's label beats the ground truth.
    """
    n = x.shape[0]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=g)
    log_ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
    ratio = log_ratio.exp()
    cw = (area * ratio).sqrt().clamp(max=1.0)  # crop width, as a fraction of the image side
    ch = (area / ratio).sqrt().clamp(max=1.0)
    tx = (torch.rand(n, generator=g) * 2 - 1) * (1 - cw)  # crop centre in [-1, 1] coordinates
    ty = (torch.rand(n, generator=g) * 2 - 1) * (1 - ch)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw, tx, ch, ty
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class KeyedSamples(torch.utils.data.Dataset):
    """A dataset whose item (index, key) is transformed with every RNG the transforms use (random, numpy,
    torch) seeded from `key`: an image's augmentation is a function of where it falls in the epoch, not of
    the loader worker or rank that reads it. A plain index reads without touching any RNG (validation)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        if not isinstance(item, tuple):
            return self.dataset[item]
        import random

        import numpy as np

        index, key = item
        py, npy = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(key), np.random.seed(key % 2**32), torch.default_generator.manual_seed(key)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py), np.random.set_state(npy)


class FolderData:
    """An ImageFolder behind a DataLoader, with DeiT's transforms from timm and the global micro-batch order
    of `micro_batches` (repeated augmentation included), each sample's augmentation keyed to its place."""

    def __init__(
        self,
        dataset,
        batch_size: int,
        train: bool,
        num_workers: int,
        repeated_aug: bool,
        rank: int,
        world_size: int,
        accumulation: int = 1,
    ):
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.num_workers, self.rank, self.world_size = num_workers, rank, world_size
        self.repeated_aug, self.accumulation = repeated_aug, accumulation

    def _batches(self, seed: int, epoch: int) -> list[list]:
        n = len(self.dataset)
        if not self.train:
            order = list(range(self.rank, n, self.world_size))
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        rows = micro_batches(
            n, seed, epoch, self.batch_size, self.world_size * self.accumulation, repeats=3 if self.repeated_aug else 1
        )
        return [
            [(int(i), micro_seed(seed, epoch, j, f"sample{p}")) for p, i in enumerate(rows[j].tolist())]
            for j in rank_rows(len(rows), self.rank, self.world_size)
        ]

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.train:
            return n // (self.batch_size * self.world_size * self.accumulation) * self.accumulation
        return -(-len(range(self.rank, n, self.world_size)) // self.batch_size)

    def epoch(self, seed: int, epoch: int):
        from torch.utils.data import DataLoader

        loader = DataLoader(
            KeyedSamples(self.dataset),
            batch_sampler=self._batches(seed, epoch),
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )
        yield from loader


@dataclass(frozen=True)
class Batching:
    """How a rank reads a dataset: micro-batches of `batch_size`, its shard of `world_size`, and the
    accumulation steps of an optimizer step (the global batch is batch_size x world_size x accumulation)."""

    batch_size: int
    rank: int = 0
    world_size: int = 1
    accumulation: int = 1


def build(spec: DataSpec, batch_size: int, rank: int = 0, world_size: int = 1, accumulation: int = 1):
    """(train, val) batch sources for `spec`, built by its dataset (trainer.datasets): training in
    micro-batches of `batch_size`; val is evaluated on every rank's shard."""
    return datasets.get(spec.dataset).build(spec, Batching(batch_size, rank, world_size, accumulation))


def subset(spec: DataSpec, n: int, train: bool) -> torch.Tensor | None:
    """The indices of the spec's subset of a split of `n` images (train_subset or val_subset, drawn with
    subset_seed, the validation split's with subset_seed + 1); None: every image."""
    size = spec.train_subset if train else spec.val_subset
    return subset_indices(n, size, spec.subset_seed + (0 if train else 1))


def fit_images(spec: DataSpec, images: torch.Tensor, labels: torch.Tensor, train: bool):
    """A split held in memory (uint8 N x C x H x W, labels) cut to the spec: its subset, its image size
    (bilinear), its channels (a grey image repeated)."""
    idx = subset(spec, len(labels), train)
    if idx is not None:
        images, labels = images[idx], labels[idx]
    if spec.img_size != images.shape[-1]:
        images = (
            torch.nn.functional.interpolate(images.float(), size=spec.img_size, mode="bilinear", align_corners=False)
            .round()
            .clamp(0, 255)
            .byte()
        )
    if spec.in_chans != images.shape[1]:
        if images.shape[1] != 1:
            raise ValueError(f"data.in_chans: {spec.in_chans}, but the images have {images.shape[1]} channels")
        images = images.expand(-1, spec.in_chans, -1, -1).contiguous()
    return images, labels


def in_memory(
    spec: DataSpec,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    b: Batching,
    mean: float,
    std: float,
) -> tuple[TensorData, TensorData]:
    """(train, val) TensorData of two splits held whole (uint8 images N x C x H x W, labels), each fitted to
    the spec (`fit_images`); the training split augmented as spec.augment says (padding crop, resized crop,
    flip), both normalised with the dataset's `mean` and `std`."""
    a = spec.augment
    return tuple(
        TensorData(
            *fit_images(spec, *split, is_train),
            b.batch_size,
            is_train,
            crop_padding=a.crop_padding if is_train else 0,
            crop_scale=a.crop_scale if is_train else None,
            hflip=a.hflip if is_train else 0.0,
            rank=b.rank,
            world_size=b.world_size,
            accumulation=b.accumulation,
            mean=mean,
            std=std,
        )
        for is_train, split in ((True, train), (False, val))
    )


def from_files(spec: DataSpec, train_ds, val_ds, b: Batching) -> tuple[FolderData, FolderData]:
    """(train, val) FolderData over two torch datasets read from files (their transforms applied per
    sample, keyed to its place), with the spec's loader workers and repeated augmentation."""
    return (
        FolderData(
            train_ds,
            b.batch_size,
            True,
            spec.num_workers,
            spec.augment.repeated_aug,
            b.rank,
            b.world_size,
            b.accumulation,
        ),
        FolderData(val_ds, b.batch_size, False, spec.num_workers, False, b.rank, b.world_size),
    )


def image_transforms(spec: DataSpec):
    """(train, val) transforms of images read from files, DeiT's from timm: training as spec.augment says
    (random-resized crop, flip, RandAugment, colour jitter, random erasing; bicubic), validation a bicubic
    resize and centre crop of 0.875."""
    from timm.data import create_transform

    a = spec.augment
    train_tf = create_transform(
        spec.img_size,
        is_training=True,
        color_jitter=a.color_jitter or None,
        auto_augment=a.rand_augment,
        interpolation="bicubic",
        re_prob=a.reprob,
        re_mode="pixel",
        re_count=1,
        hflip=a.hflip,
        scale=a.crop_scale or (0.08, 1.0),
    )
    _posterize_zero_bits(train_tf)
    val_tf = create_transform(spec.img_size, is_training=False, interpolation="bicubic", crop_pct=0.875)
    return train_tf, val_tf


def with_transform(val_data: FolderData, transform) -> FolderData:
    """The same validation images read through another transform (a teacher's own eval transform)."""
    import copy

    out = copy.copy(val_data)
    out.dataset = copy.copy(val_data.dataset)
    out.dataset.transform = transform
    return out


def _posterize(img, bits_to_keep, **_):
    """Posterize as Pillow did before it rejected 0 bits: keep `bits_to_keep` high bits, 0 -> black."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def _posterize_zero_bits(transform) -> None:
    """DeiT's RandAugment ('rand-m9-mstd0.5-inc1') asks timm's PosterizeIncreasing for 0 bits at the top
    magnitudes; recent Pillow (13 here) raises on that, which would kill a run mid-epoch. Give this transform's
    posterize ops the old semantics (the image DeiT was trained with), leaving timm itself untouched."""
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize


def mixup_fn(spec: DataSpec):
    """timm's Mixup/CutMix (with label smoothing) when the spec asks for it, else None."""
    a = spec.augment
    if a.mixup <= 0 and a.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=a.mixup,
        cutmix_alpha=a.cutmix,
        prob=a.mixup_prob,
        switch_prob=a.mixup_switch_prob,
        label_smoothing=a.smoothing,
        num_classes=spec.num_classes,
    )
