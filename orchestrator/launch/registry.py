"""Launchers as plug-ins, registered as the distillation methods are (`@register`).

A launcher is one module: a `Launcher` subclass, decorated with `@register`. The built-in ones are the
modules of `orchestrator.launch.launchers`, each named for its launcher; another package's are the entry
points it names under `kdgrid.launchers` (`serial = "kdgrid_serial.launcher"`: the entry point's name is the
launcher's). Both are known by name without importing anything (file names, entry-point names), so
`kdgrid --help` lists them without importing Ray, submitit or a plug-in; a launcher's module is imported
when it is first asked for (plug-ins through `trainer.plugins.load_group`, as methods are). A launcher
defined anywhere else is known once its module has been imported (its `@register` ran).
`kdgrid --launcher NAME`, `execute` and the work items need no edit for a new one.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
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
PLUGIN_GROUP = "kdgrid.launchers"  # entry points of other packages' launcher modules (docs/extending.md)


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


def _plugin_names() -> list[str]:
    """The entry-point names of the group: read from the installed packages' metadata, nothing imported."""
    return [ep.name for ep in entry_points(group=PLUGIN_GROUP)]


def _load_plugins() -> None:
    """Import every plug-in launcher (a module that registers one, or a `module:Class` registered here);
    each must register the launcher its entry point names."""
    from trainer.plugins import PluginError, load_group

    for name, obj in load_group(PLUGIN_GROUP).items():
        if isinstance(obj, type) and issubclass(obj, Launcher):
            register(obj)
        if name not in REGISTRY:
            raise PluginError(
                f"plug-in launcher {name} (entry point group {PLUGIN_GROUP}) registered no launcher named {name!r}"
            )


def names() -> list[str]:
    """Every launcher: the built-in ones and the plug-ins (by module and entry-point name, nothing imported),
    and those registered."""
    return sorted(set(_builtin_names()) | set(_plugin_names()) | set(REGISTRY))


def get(name: str) -> Launcher:
    if name not in REGISTRY:
        builtin, plugins = _builtin_names(), _plugin_names()
        if taken := sorted(set(builtin) & set(plugins)):
            from trainer.plugins import PluginError

            raise PluginError(
                f"plug-in launcher {', '.join(taken)} (entry point group {PLUGIN_GROUP}) takes a built-in's name"
            )
        if name in builtin:
            importlib.import_module(f"{_builtin.__name__}.{name}")
        elif name in plugins:
            _load_plugins()
    if name not in REGISTRY:
        raise ValueError(f"unknown launcher {name!r}: one of {', '.join(names())}")
    return REGISTRY[name]
