"""Data: Fashion-MNIST from Debian's package (CPU scales) and an ImageNet folder with DeiT's augmentations.

The data order of every epoch is a pure function of (seed, epoch), and the augmentation of a micro-batch a
function of (seed, epoch, its global index): a run resumed from a checkpoint, trained in a cohort beside
other students, or split differently over GPUs and accumulation steps sees exactly the same micro-batches.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.dataset_files import FASHION_MNIST_FILES, INSTALL_HINT, fashion_mnist_root, has_idx
from trainer.spec import DataSpec

FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


def _cache_dir() -> Path:
    return Path(os.environ.get("KDGRID_CACHE", Path.home() / ".cache" / "kdgrid")).expanduser()


def _fashion_mnist(spec: DataSpec, train: bool):
    """torchvision's FashionMNIST over the Debian files, unpacked once into a cache folder."""
    from torchvision.datasets import FashionMNIST

    src = fashion_mnist_root(spec.root)
    cache = _cache_dir() / "fashion-mnist"
    raw = cache / "FashionMNIST" / "raw"
    if has_idx(src):
        raw.mkdir(parents=True, exist_ok=True)
        for name in FASHION_MNIST_FILES:
            dst = raw / name
            if dst.exists():
                continue
            tmp = raw / f".{name}.{os.getpid()}"
            plain, packed = src / name, src / f"{name}.gz"
            with open(plain, "rb") if plain.exists() else gzip.open(packed, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            os.replace(tmp, dst)  # atomic: concurrent workers never read half a file
        return FashionMNIST(str(cache), train=train, download=False)
    if os.environ.get("KDGRID_ALLOW_DOWNLOAD") == "1":
        return FashionMNIST(str(cache), train=train, download=True)
    raise FileNotFoundError(f"Fashion-MNIST not found at {src}: {INSTALL_HINT}")


def _subset(n: int, size: int | None, seed: int) -> torch.Tensor | None:
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

    Fashion-MNIST is small enough to hold whole; augmenting a batch at once (random crop with zero
    padding, horizontal flip) from an explicit generator keeps a CPU step cheap and the order exact.
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
            yield x.sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD), self.labels[idx]

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


def build(
    spec: DataSpec, batch_size: int, rank: int = 0, world_size: int = 1, accumulation: int = 1, val_transform=None
):
    """(train, val) batch sources for `spec`: training in micro-batches of `batch_size` (the global batch is
    batch_size x world_size x accumulation); val is evaluated on every rank's shard. `val_transform`
    replaces the validation transform of an image folder (a teacher's own eval transform)."""
    if spec.dataset == "fashion_mnist":
        a = spec.augment
        return tuple(
            TensorData(
                *_fashion_mnist_images(spec, train),
                batch_size,
                train,
                crop_padding=a.crop_padding if train else 0,
                crop_scale=a.crop_scale if train else None,
                hflip=a.hflip if train else 0.0,
                rank=rank,
                world_size=world_size,
                accumulation=accumulation,
            )
            for train in (True, False)
        )
    train_ds, val_ds = _image_folders(spec, val_transform)
    return (
        FolderData(
            train_ds, batch_size, True, spec.num_workers, spec.augment.repeated_aug, rank, world_size, accumulation
        ),
        FolderData(val_ds, batch_size, False, spec.num_workers, False, rank, world_size),
    )


def _fashion_mnist_images(spec: DataSpec, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's images (uint8 N x C x H x W, resized and with the spec's channels) and labels, subset."""
    ds = _fashion_mnist(spec, train)
    images, labels = ds.data.unsqueeze(1), ds.targets
    idx = _subset(len(labels), spec.train_subset if train else spec.val_subset, spec.subset_seed + (0 if train else 1))
    if idx is not None:
        images, labels = images[idx], labels[idx]
    if spec.img_size != images.shape[-1]:
        images = (
            torch.nn.functional.interpolate(images.float(), size=spec.img_size, mode="bilinear", align_corners=False)
            .round()
            .clamp(0, 255)
            .byte()
        )
    if spec.in_chans != 1:
        images = images.expand(-1, spec.in_chans, -1, -1).contiguous()
    return images, labels


def _image_folders(spec: DataSpec, val_transform=None):
    """(train, val) ImageFolders under data.root with DeiT's transforms (timm), subset."""
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    a = spec.augment
    root = Path(spec.root).expanduser()
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
    val_tf = val_transform or create_transform(
        spec.img_size, is_training=False, interpolation="bicubic", crop_pct=0.875
    )
    train_ds, val_ds = ImageFolder(root / "train", train_tf), ImageFolder(root / "val", val_tf)
    for ds, size, off in ((train_ds, spec.train_subset, 0), (val_ds, spec.val_subset, 1)):
        idx = _subset(len(ds), size, spec.subset_seed + off)
        if idx is not None:
            ds.samples = [ds.samples[i] for i in idx.tolist()]
            ds.targets = [s[1] for s in ds.samples]
    return train_ds, val_ds


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
