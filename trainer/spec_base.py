"""The spec's building blocks, shared by trainer.spec and the method modules (trainer.methods).

Kept apart so that a method module can declare its pydantic spec without importing trainer.spec, which
builds `DistillationSpec` from the registered methods (no import cycle).
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict

# A loss weight: a finite, non-negative number (strings such as "0.2" are rejected, not coerced).
Weight = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
Block = Annotated[int, Strict(), Field(ge=1)]

NOT_HASHED = {"hash": False}  # json_schema_extra marker: execution detail, not part of the run's identity


class StrictModel(BaseModel):
    # Frozen: a validated spec is normalised once (in its after-validators) and then never changes.
    model_config = ConfigDict(extra="forbid", frozen=True)
