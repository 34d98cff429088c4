"""Data: Fashion-MNIST from Debian's package (CPU scales) and an ImageNet folder with DeiT's augmentations.

The data order of every epoch is a pure function of (seed, epoch): a run resumed from a checkpoint, or
trained in a cohort beside other students, sees exactly the batches it would have seen alone.
"""
from __future__ import annotations

import gzip
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from trainer.spec import DataSpec

FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
INSTALL_HINT = ("install Debian's package with `sudo apt-get install dataset-fashion-mnist` "
                f"(files under {FASHION_MNIST_DEBIAN}), or set data.root to a folder holding the four IDX files "
                "(.gz or not); set KDGRID_ALLOW_DOWNLOAD=1 to let torchvision download them instead")


def _fmnist_root(spec: DataSpec) -> Path:
    return Path(spec.root or FASHION_MNIST_DEBIAN).expanduser()


def _has_idx(root: Path) -> bool:
    return all((root / f).exists() or (root / f"{f}.gz").exists() for f in FASHION_MNIST_FILES)


def dataset_problem(spec: DataSpec) -> str | None:
    """Why the dataset cannot be read, with how to fix it; None when it can."""
    if spec.dataset == "fashion_mnist":
        root = _fmnist_root(spec)
        if _has_idx(root) or os.environ.get("KDGRID_ALLOW_DOWNLOAD") == "1":
            return None
        return f"Fashion-MNIST not found at {root}: {INSTALL_HINT}"
    root = Path(spec.root or "").expanduser()
    if not spec.root or not (root / "train").is_dir() or not (root / "val").is_dir():
        return (f"ImageNet not found at {spec.root!r}: set data.root to a folder with train/ and val/ "
                "subfolders of class folders (the layout torchvision's ImageFolder reads)")
    return None


def _cache_dir() -> Path:
    return Path(os.environ.get("KDGRID_CACHE", Path.home() / ".cache" / "kdgrid")).expanduser()


def _fashion_mnist(spec: DataSpec, train: bool):
    """torchvision's FashionMNIST over the Debian files, unpacked once into a cache folder."""
    from torchvision.datasets import FashionMNIST

    src = _fmnist_root(spec)
    cache = _cache_dir() / "fashion-mnist"
    raw = cache / "FashionMNIST" / "raw"
    if _has_idx(src):
        raw.mkdir(parents=True, exist_ok=True)
        for name in FASHION_MNIST_FILES:
            dst = raw / name
            if dst.exists():
                continue
            tmp = raw / f".{name}.{os.getpid()}"
            plain, packed = src / name, src / f"{name}.gz"
            with (open(plain, "rb") if plain.exists() else gzip.open(packed, "rb")) as fin, open(tmp, "wb") as fout:
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
    """The generator that orders (and augments) epoch `epoch` of a run with seed `seed`."""
    return torch.Generator().manual_seed(1_000_003 * (seed + 1) + epoch)


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

    def __len__(self) -> int:
        per_rank = len(self.labels) // self.world_size
        return per_rank // self.batch_size if self.train else -(-per_rank // self.batch_size)

    def epoch(self, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        g = epoch_generator(seed, epoch)
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        order = order[self.rank: n - n % self.world_size: self.world_size] if self.world_size > 1 else order
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx].float().div_(255)
            if self.train:
                x = self._augment(x, g)
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


class FolderData:
    """An ImageFolder behind a DataLoader, with DeiT's transforms and samplers from timm."""

    def __init__(self, dataset, batch_size: int, train: bool, num_workers: int, repeated_aug: bool,
                 rank: int, world_size: int):
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.num_workers, self.rank, self.world_size = num_workers, rank, world_size
        self.repeated_aug = repeated_aug

    def _sampler(self, seed: int, epoch: int):
        from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

        if self.train and self.repeated_aug and self.world_size > 1:
            from timm.data.distributed_sampler import RepeatAugSampler

            s = RepeatAugSampler(self.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True)
            s.set_epoch(1_000_003 * (seed + 1) + epoch)
            return s
        if self.world_size > 1:
            s = DistributedSampler(self.dataset, self.world_size, self.rank, shuffle=self.train, seed=seed,
                                   drop_last=self.train)
            s.set_epoch(epoch)
            return s
        return RandomSampler(self.dataset, generator=epoch_generator(seed, epoch)) if self.train \
            else SequentialSampler(self.dataset)

    def __len__(self) -> int:
        n = len(self.dataset) // self.world_size
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def epoch(self, seed: int, epoch: int):
        from torch.utils.data import DataLoader

        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self._sampler(seed, epoch),
                            num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                            drop_last=self.train, generator=epoch_generator(seed, epoch),
                            persistent_workers=False)
        yield from loader


def build(spec: DataSpec, batch_size: int, rank: int = 0, world_size: int = 1):
    """(train, val) batch sources for `spec`; val is evaluated on every rank's shard."""
    if spec.dataset == "fashion_mnist":
        out = []
        for train, size in ((True, spec.train_subset), (False, spec.val_subset)):
            ds = _fashion_mnist(spec, train)
            images, labels = ds.data.unsqueeze(1), ds.targets
            idx = _subset(len(labels), size, spec.subset_seed + (0 if train else 1))
            if idx is not None:
                images, labels = images[idx], labels[idx]
            if spec.img_size != images.shape[-1]:
                images = torch.nn.functional.interpolate(images.float(), size=spec.img_size, mode="bilinear",
                                                         align_corners=False).round().clamp(0, 255).byte()
            if spec.in_chans != 1:
                images = images.expand(-1, spec.in_chans, -1, -1).contiguous()
            out.append(TensorData(images, labels, batch_size, train,
                                  crop_padding=spec.augment.crop_padding if train else 0,
                                  crop_scale=spec.augment.crop_scale if train else None,
                                  hflip=spec.augment.hflip if train else 0.0,
                                  rank=rank, world_size=world_size))
        return tuple(out)

    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    a = spec.augment
    root = Path(spec.root).expanduser()
    train_tf = create_transform(spec.img_size, is_training=True, color_jitter=a.color_jitter or None,
                                auto_augment=a.rand_augment, interpolation="bicubic", re_prob=a.reprob,
                                re_mode="pixel", re_count=1, hflip=a.hflip,
                                scale=a.crop_scale or (0.08, 1.0))
    _posterize_zero_bits(train_tf)
    val_tf = create_transform(spec.img_size, is_training=False, interpolation="bicubic", crop_pct=0.875)
    train_ds, val_ds = ImageFolder(root / "train", train_tf), ImageFolder(root / "val", val_tf)
    for ds, size, off in ((train_ds, spec.train_subset, 0), (val_ds, spec.val_subset, 1)):
        idx = _subset(len(ds), size, spec.subset_seed + off)
        if idx is not None:
            ds.samples = [ds.samples[i] for i in idx.tolist()]
            ds.targets = [s[1] for s in ds.samples]
    return (FolderData(train_ds, batch_size, True, spec.num_workers, a.repeated_aug, rank, world_size),
            FolderData(val_ds, batch_size, False, spec.num_workers, False, rank, world_size))


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

    return Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mixup_prob, switch_prob=a.mixup_switch_prob,
                 label_smoothing=a.smoothing, num_classes=spec.num_classes)
