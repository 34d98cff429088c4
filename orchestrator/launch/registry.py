"""Launchers as plug-ins, registered as the distillation methods are (`@register`).

A launcher is one module: a `Launcher` subclass, decorated with `@register`. The built-in ones are the
modules of `orchestrator.launch.launchers`, each named for its launcher: their names are known from the file
names, so `kdgrid --help` lists them without importing Ray or submitit, and a module is imported when its
launcher is first asked for. A launcher defined anywhere else is known once its module has been imported
(its `@register` ran; discovery through a package's entry points would go in `names` and `get`).
`kdgrid --launcher NAME`, `execute` and the work items need no edit for a new one.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

from orchestrator.launch import launchers as _builtin

if TYPE_CHECKING:
    from orchestrator.launch.items import LaunchContext, WorkItem
    from orchestrator.launch.outcome import Outcome


class Launcher:
    """What `execute` asks of a launcher. Subclasses override what they use; the defaults suit a launcher
    that trains in the command's own process tree and waits."""

    name: str = ""
    # `kdgrid launch` (wait=False): True when `launch` can hand the work over and return (Slurm submits its
    # jobs); False when the work lives in this process's children, so `kdgrid launch` starts a `reproduce`
    # in the background instead.
    detaches: bool = False
    # Whether items are started by the cost-aware scheduler (launch/scheduler.py), so `--schedule cost`
    # leaves cutting cohorts to it and its rates are calibrated on the store.
    scheduled: bool = True

    def parallelism(self, ctx: LaunchContext) -> int:
        """Items it trains at once when `--workers` is not given."""
        return 1

    def memory_budget(self, ctx: LaunchContext) -> int | None:
        """Bytes one item may use (cohorts are cut to fit); None: no limit known."""
        return None

    def launch(self, items: list[WorkItem], ctx: LaunchContext, outcomes: dict[str, Outcome]) -> Any:
        """Train (or, with ctx.wait False and `detaches`, submit) every item; fill `outcomes` ({hash: Outcome})
        for each of their runs."""
        raise NotImplementedError


REGISTRY: dict[str, Launcher] = {}


def register(cls: type[Launcher]) -> type[Launcher]:
    """Class decorator: add a launcher to the registry (one instance; launchers hold no state)."""
    launcher = cls()
    if not launcher.name:
        raise ValueError(f"launcher {cls.__name__} has no name")
    old = REGISTRY.get(launcher.name)
    if old is not None and (type(old).__module__, type(old).__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"launcher {launcher.name!r} registered twice")
    REGISTRY[launcher.name] = launcher
    return cls


def _builtin_names() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(_builtin.__path__) if not m.name.startswith("_")]


def names() -> list[str]:
    """Every launcher: the built-in ones (by module name, nothing imported) and those registered."""
    return sorted(set(_builtin_names()) | set(REGISTRY))


def get(name: str) -> Launcher:
    if name not in REGISTRY and name in _builtin_names():
        importlib.import_module(f"{_builtin.__name__}.{name}")
    if name not in REGISTRY:
        raise ValueError(f"unknown launcher {name!r}: one of {', '.join(names())}")
    return REGISTRY[name]
