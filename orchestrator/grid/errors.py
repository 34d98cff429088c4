"""The grid's problems: GridError (a SpecError whose entries each name their file), and the grid's YAML in
and out. Messages read `file: field path: reason`, formatted once in trainer.problems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.grid.files import display_path
from trainer import strict_yaml
from trainer.problems import Entry, SpecError, validation_problems


class GridError(SpecError):
    """Problems found before anything launches, each as (file, field path, reason)."""

    heading = "invalid grid"

    def __init__(self, entries: list[Entry]):
        self._set(list(entries))


def invalid(source: str, err: ValidationError, model: type[BaseModel], prefix: str = "") -> GridError:
    """A GridError of every problem pydantic found in `source`'s data for `model`."""
    return GridError([(source, path, reason) for path, reason in validation_problems(err, prefix, model)])


def read_yaml(path: Path) -> Any:
    """A grid file's data (duplicate keys refused); GridError naming the file when it cannot be read."""
    try:
        return strict_yaml.read(path, display_path(path))
    except SpecError as err:
        raise GridError(err.entries) from None


def to_yaml(model: BaseModel) -> str:
    """YAML out: what the loaders read back to an equal model."""
    return yaml.safe_dump(model.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)
