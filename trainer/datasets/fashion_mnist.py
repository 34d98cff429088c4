"""Fashion-MNIST, the CPU scales' dataset: Debian's package (or a folder of its four IDX files), read with
torchvision, held in memory and augmented a batch at a time (trainer.data.TensorData)."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

from trainer import data
from trainer.datasets import Dataset, register

DEBIAN = "/usr/share/datasets/fashion-mnist"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
INSTALL_HINT = (
    "install Debian's package with `sudo apt-get install dataset-fashion-mnist` "
    f"(files under {DEBIAN}), or set data.root to a folder holding the four IDX files "
    "(.gz or not); set KDGRID_ALLOW_DOWNLOAD=1 to let torchvision download them instead"
)
MEAN, STD = 0.2860, 0.3530  # of the training images' pixels in [0, 1]


def root_of(root: str | None) -> Path:
    return Path(root or DEBIAN).expanduser()


def has_idx(root: Path) -> bool:
    """The four IDX files are there, plain or gzipped."""
    return all((root / f).exists() or (root / f"{f}.gz").exists() for f in FILES)


def _download_allowed() -> bool:
    return os.environ.get("KDGRID_ALLOW_DOWNLOAD") == "1"


def _cache_dir() -> Path:
    return Path(os.environ.get("KDGRID_CACHE", Path.home() / ".cache" / "kdgrid")).expanduser()


def _torchvision(root: str | None, train: bool):
    """torchvision's FashionMNIST over the IDX files, unpacked once into a cache folder."""
    from torchvision.datasets import FashionMNIST

    src = root_of(root)
    cache = _cache_dir() / "fashion-mnist"
    raw = cache / "FashionMNIST" / "raw"
    if has_idx(src):
        raw.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            dst = raw / name
            if dst.exists():
                continue
            tmp = raw / f".{name}.{os.getpid()}"
            plain, packed = src / name, src / f"{name}.gz"
            with open(plain, "rb") if plain.exists() else gzip.open(packed, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            os.replace(tmp, dst)  # atomic: concurrent workers never read half a file
        return FashionMNIST(str(cache), train=train, download=False)
    if _download_allowed():
        return FashionMNIST(str(cache), train=train, download=True)
    raise FileNotFoundError(f"Fashion-MNIST not found at {src}: {INSTALL_HINT}")


def _split(root: str | None, train: bool):
    """A split's images (uint8 N x 1 x 28 x 28) and labels."""
    ds = _torchvision(root, train)
    return ds.data.unsqueeze(1), ds.targets


@register
class FashionMNIST(Dataset):
    name = "fashion_mnist"
    display_name = "Fashion-MNIST"
    sizes = (60000, 10000)

    def problem(self, root):
        path = root_of(root)
        if has_idx(path) or _download_allowed():
            return None
        return f"Fashion-MNIST not found at {path}: {INSTALL_HINT}"

    def source(self, spec) -> str:
        return str(root_of(spec.root))

    def build(self, spec, batching):
        train, val = _split(spec.root, True), _split(spec.root, False)
        return data.in_memory(spec, train, val, batching, mean=MEAN, std=STD)
