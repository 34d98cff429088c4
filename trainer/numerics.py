"""The numerics version: which code's numbers a run holds, since a content hash names the spec, not the code.

A change that alters a run's numbers for an unchanged spec (data order or augmentation keys, a loss's
arithmetic, initialisation, the optimizer's steps) bumps `NUMERICS_VERSION`; tests/test_numerics.py fails
until it does. Every run records it (tag `kdgrid.numerics`, param `protocol.numerics_version`, and its
checkpoints), so a store never mixes two codes' numbers under one hash unnoticed. A run trained before the
tag existed counts as version 1.

Versions:
1. The numbers of kdgrid as of issue 27 (data order and augmentation keyed by (seed, epoch, micro-batch)).
"""

from __future__ import annotations

from collections.abc import Mapping

NUMERICS_VERSION = 1
TAG = "kdgrid.numerics"
UNTAGGED = 1  # runs trained before kdgrid recorded its numerics version


def version_of(tags: Mapping[str, str]) -> int:
    """The numerics version a run's MLflow tags record (UNTAGGED where they record none)."""
    value = tags.get(TAG)
    return UNTAGGED if value is None else int(value)


def matches(tags: Mapping[str, str]) -> bool:
    """Whether a run's numbers are this code's: what the planner asks before reusing a finished run."""
    return version_of(tags) == NUMERICS_VERSION


def checkpoint_version(state: Mapping) -> int:
    """The numerics version a checkpoint was written by (UNTAGGED for checkpoints older than the field)."""
    return int(state.get("numerics", UNTAGGED))
