"""Where each dataset's files are, and why they cannot be read: checked when a spec is loaded, before
anything starts. Imports nothing of kdgrid, so that the spec (trainer.spec) and the data pipeline
(trainer.data) both read it without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
INSTALL_HINT = (
    "install Debian's package with `sudo apt-get install dataset-fashion-mnist` "
    f"(files under {FASHION_MNIST_DEBIAN}), or set data.root to a folder holding the four IDX files "
    "(.gz or not); set KDGRID_ALLOW_DOWNLOAD=1 to let torchvision download them instead"
)


def fashion_mnist_root(root: str | None) -> Path:
    return Path(root or FASHION_MNIST_DEBIAN).expanduser()


def has_idx(root: Path) -> bool:
    """The four IDX files are there, plain or gzipped."""
    return all((root / f).exists() or (root / f"{f}.gz").exists() for f in FASHION_MNIST_FILES)


def dataset_problem(dataset: str, root: str | None) -> str | None:
    """Why `dataset` cannot be read from `root` (a DataSpec's fields), with how to fix it; None when it can."""
    if dataset == "fashion_mnist":
        path = fashion_mnist_root(root)
        if has_idx(path) or os.environ.get("KDGRID_ALLOW_DOWNLOAD") == "1":
            return None
        return f"Fashion-MNIST not found at {path}: {INSTALL_HINT}"
    path = Path(root or "").expanduser()
    if not root or not (path / "train").is_dir() or not (path / "val").is_dir():
        return (
            f"ImageNet not found at {root!r}: set data.root to a folder with train/ and val/ "
            "subfolders of class folders (the layout torchvision's ImageFolder reads)"
        )
    return None
