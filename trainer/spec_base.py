"""The spec's building blocks, shared by trainer.spec and the method modules (trainer.methods).

Kept apart so that a method module can declare its pydantic spec without importing trainer.spec, which
builds `DistillationSpec` from the registered methods (no import cycle).

Without pydantic (the GPU benchmark's machine, benchmarks/bench_gpu.py, which runs the objective on plain
attribute objects) the names below are inert stand-ins, so the method modules still import and their
losses run; nothing can be validated there, and trainer.spec itself needs pydantic.
"""

from __future__ import annotations

from typing import Annotated

try:
    from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

    HAVE_PYDANTIC = True
except ModuleNotFoundError:  # pragma: no cover - exercised by tests/test_bench_gpu.py's blocked child
    HAVE_PYDANTIC = False

    class BaseModel:  # type: ignore[no-redef]
        pass

    def ConfigDict(**kwargs):  # type: ignore[no-redef]  # noqa: N802
        return kwargs

    def Field(default=None, **kwargs):  # type: ignore[no-redef]  # noqa: N802
        return default

    def Strict(*args, **kwargs):  # type: ignore[no-redef]  # noqa: N802
        return None

    def AfterValidator(func):  # type: ignore[no-redef]  # noqa: N802
        return None

    def field_validator(*args, **kwargs):  # type: ignore[no-redef]
        return lambda f: f

    def model_validator(*args, **kwargs):  # type: ignore[no-redef]
        return lambda f: f


# A loss weight: a finite, non-negative number (strings such as "0.2" are rejected, not coerced).
Weight = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
Block = Annotated[int, Strict(), Field(ge=1)]

NOT_HASHED = {"hash": False}  # json_schema_extra marker: execution detail, not part of the run's identity


def hashed_as(tokens: dict[str, str]) -> dict:
    """json_schema_extra marker: a renamed value hashes as the token it replaced, so runs keep their hash."""
    return {"hash_as": tokens}


class StrictModel(BaseModel):
    """Every spec, grid and method model: unknown keys are errors (a typo must not pass as a default), and
    frozen: a validated model is normalised once (in its after-validators) and then never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
