"""Why a spec's dataset cannot be read, checked before anything starts (a spec file's loading, a plan's
checks). Each dataset says it for itself (trainer.datasets)."""

from __future__ import annotations

from trainer import datasets


def dataset_problem(dataset: str, root: str | None) -> str | None:
    """Why `dataset` cannot be read from `root` (a DataSpec's fields), with how to fix it; None when it can."""
    try:
        known = datasets.get(dataset)
    except ValueError as err:
        return str(err)
    return known.problem(root)
