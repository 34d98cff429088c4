"""Datasets as plug-ins, registered as the distillation methods are (`@register`).

A dataset is one module of this package, or of another installed package that names it under the
`kdgrid.datasets` entry-point group. It declares, in one `Dataset` subclass, everything kdgrid asks of a
dataset: its name (`data.dataset` in a spec), how reports and MLflow name it, its full sizes (the cost
model's epoch), why it cannot be read (checked when a spec is loaded and when a grid is planned), where its
images come from, and its (train, val) batch sources (trainer.data: the order, sharding and keyed
augmentation every dataset shares). The spec, the engine, the tracking and the cost model ask the registry
and never name a dataset.

Modules are imported when a dataset is first asked for, not when this package is, so that a dataset module
may import trainer.spec and trainer.data (which import this package) without a cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Dataset:
    """A dataset. Subclasses set `name` and `display_name` and override `build`; the rest has defaults."""

    name: str = ""  # registry name: a spec's `data.dataset`
    display_name: str = ""  # how MLflow's Dataset column and the report name it (default: its name)
    sizes: tuple[int, int] | None = None  # full (train, val) image counts; None: the cost model guesses

    def problem(self, root: str | None) -> str | None:
        """Why the dataset cannot be read from `root` (a spec's data.root), with how to fix it; None when
        it can."""
        return None

    def source(self, spec) -> str:
        """Where a spec's images are read from (MLflow's dataset source, part of its digest); `spec` is a
        DataSpec, as below."""
        return str(Path(spec.root or "").expanduser())

    def build(self, spec, batching) -> tuple[Any, Any]:
        """(train, val) batch sources for a rank reading as `batching` (trainer.data.Batching) says: in
        memory (trainer.data.in_memory) or from files (trainer.data.from_files), each keeping the order and
        keyed augmentation of every dataset."""
        raise NotImplementedError

    def teacher_val_data(self, teacher, spec, val_data) -> tuple[Any, str]:
        """(validation source, how it is transformed) for the frozen teacher's own accuracy (`spec` is the
        ExperimentSpec): by default the student's validation images as they are."""
        return val_data, "the student's"


REGISTRY: dict[str, Dataset] = {}
PLUGIN_GROUP = "kdgrid.datasets"  # entry points of other packages' dataset modules (docs/extending.md)
_discovered = False


def register(cls: type[Dataset]) -> type[Dataset]:
    """Class decorator: add a dataset to the registry (one instance; datasets hold no state). A name is
    taken once: a plug-in may not silently replace another dataset."""
    dataset = cls()
    if not dataset.name:
        raise ValueError(f"dataset {cls.__module__}.{cls.__qualname__} has no name")
    old = REGISTRY.get(dataset.name)
    if old is not None and (type(old).__module__, type(old).__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(
            f"dataset {cls.__module__}.{cls.__qualname__} takes the name {dataset.name!r}, already "
            f"{type(old).__module__}.{type(old).__qualname__}'s"
        )
    dataset.display_name = dataset.display_name or dataset.name
    REGISTRY[dataset.name] = dataset
    return cls


def names() -> list[str]:
    """Every dataset: this package's, the installed plug-ins' and any registered since."""
    _discover()
    return sorted(REGISTRY)


def get(name: str) -> Dataset:
    """The dataset called `name`; ValueError listing the known ones when there is none."""
    _discover()
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}: one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def _discover() -> None:
    """Import every module of this package, then the modules other installed packages name under the
    `kdgrid.datasets` entry-point group, once: each registers its dataset."""
    global _discovered
    if _discovered:
        return
    import importlib
    import pkgutil

    from trainer.plugins import load_group

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")
    load_group(PLUGIN_GROUP)
    _discovered = True
