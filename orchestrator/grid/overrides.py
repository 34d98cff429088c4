"""Partial spec sections: what a table's own protocol changes in a scale's data and recipe, each key checked
against the spec's own field (name and type) when the table loads, so a typo or a bad value is named at its
file and field. The merged spec is validated in full when the plan resolves the row."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Optional

from pydantic import BaseModel, create_model

from trainer.spec import AugmentSpec, DataSpec, RecipeSpec
from trainer.spec_base import StrictModel


@functools.cache
def partial(model: type[BaseModel]) -> type[StrictModel]:
    """`model` with every field optional (unset: the scale's value), nested models partial too."""
    fields: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            ann = partial(ann)
        elif f.metadata:
            ann = Annotated[(ann, *f.metadata)]
        fields[name] = (Optional[ann], None)  # noqa: UP045 (ann is a runtime type: X | None needs a class)
    return create_model(
        f"{model.__name__}Override", __base__=StrictModel, __module__=__name__, __doc__=model.__doc__, **fields
    )


AugmentOverride = partial(AugmentSpec)
DataOverride = partial(DataSpec)
RecipeOverride = partial(RecipeSpec)


def given(override: BaseModel) -> dict[str, Any]:
    """The keys an override sets, nested, as a mapping to deep-merge into the scale's."""
    return override.model_dump(exclude_unset=True)
