"""Plug-ins: what other installed packages add to kdgrid's registries, named under an entry-point group
(`kdgrid.methods`, `kdgrid.datasets`). Loading an entry point imports its module, which
registers what it provides, as kdgrid's own modules do; a lab's package extends kdgrid without forking it.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any


class PluginError(ImportError):
    """A plug-in that failed to load, named with its group, entry point and distribution."""


def load_group(group: str) -> dict[str, Any]:
    """Load every entry point of `group`, in name order: name -> the object it names (a module, or
    `module:attr`'s attribute). A plug-in that fails stops kdgrid: a grid must not run without a piece it
    was planned with."""
    loaded: dict[str, Any] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            loaded[ep.name] = ep.load()
        except Exception as err:
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "an unknown distribution"
            raise PluginError(
                f"plug-in {ep.name} = {ep.value} (entry point group {group}, from {dist}) failed to load: "
                f"{type(err).__name__}: {err}"
            ) from err
    return loaded
