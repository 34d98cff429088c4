"""The recipe book (`experiments/recipes.yaml`): named recipes for the rows that take one (manifold and
embedding rows: the paper's text or the authors' released script), DeiT's hard distillation for every
Hard row, the default recipe and old names. A recipe's fields are those the methods declare
(`Method.recipe_fields`), plus how the recipe's students are trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, create_model, model_validator

from orchestrator.grid.errors import GridError, invalid, read_yaml
from orchestrator.grid.files import RECIPES_FILE, display_path
from trainer import methods
from trainer.methods.logit import LogitSettings
from trainer.spec_base import StrictModel, Weight

LogitKD = LogitSettings  # the name the grid has always used


class RecipeStudent(StrictModel):
    drop_path: Weight | None = None  # overrides the scale's student drop_path for the recipe's rows
    # False: the recipe's rows train each student's model without the distillation token
    # (deit_tiny_distilled_patch16_224 -> deit_tiny_patch16_224, as the scale maps it), logit KD on the class head.
    distilled: bool = True
    # Per scale name: overrides of that scale's student recipe for the recipe's rows (the released script's
    # batch of 64 per GPU x 8 at the paper scale).
    recipe: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def model(self, paper: str) -> str:
        """The paper model a row's student becomes under this recipe."""
        return paper if self.distilled else paper.replace("_distilled_", "_")


class _Recipe(StrictModel):
    """The distillation of the rows that take a recipe: each method's own settings (its `recipe_fields`)."""

    description: str = ""
    student: RecipeStudent = RecipeStudent()


Recipe = create_model(
    "Recipe",
    __base__=_Recipe,
    __module__=__name__,
    __doc__=_Recipe.__doc__,
    **{
        name: field
        for m in sorted(methods.REGISTRY.values(), key=lambda m: m.order)
        for name, field in m.recipe_fields.items()
    },
)


class RecipeBook(StrictModel):
    hard: LogitSettings  # DeiT's hard-label distillation: every Hard row, whatever the recipe
    recipes: dict[str, Recipe]
    default: str = "paper-mean"
    aliases: dict[str, str] = Field(default_factory=dict)  # old name -> recipe (renames keep old commands working)

    @model_validator(mode="after")
    def _default(self) -> RecipeBook:
        for old, new in self.aliases.items():
            if new not in self.recipes:
                raise ValueError(f"aliases.{old}: {new!r} is not one of the recipes ({', '.join(self.recipes)})")
            if old in self.recipes:
                raise ValueError(f"aliases.{old}: {old!r} is a recipe itself; an alias must be another name")
        if self.canonical(self.default) not in self.recipes:
            raise ValueError(f"default: {self.default!r} is not one of the recipes ({', '.join(self.recipes)})")
        return self

    def canonical(self, name: str) -> str:
        """The recipe a name stands for: itself, or the recipe an alias points to."""
        return self.aliases.get(name, name)


def load_recipes(path: str | Path | None = None) -> RecipeBook:
    path = Path(path) if path else RECIPES_FILE
    data = read_yaml(path)
    try:
        return RecipeBook.model_validate(data)
    except ValidationError as err:
        raise invalid(display_path(path), err, RecipeBook) from None


def recipe_names(book: RecipeBook, names: str | None, path: str | Path | None = None) -> list[str]:
    """`--recipe`/`--recipes` values -> canonical recipe names: None is the default, "all" every recipe,
    "a,b" a list (aliases resolved, duplicates dropped, unknown names an error)."""
    if names is None:
        return [book.canonical(book.default)]
    out: list[str] = []
    for name in (n.strip() for n in str(names).split(",") if n.strip()):
        if name == "all":
            out.extend(book.recipes)
        else:
            get_recipe(book, name, path)
            out.append(book.canonical(name))
    if not out:
        raise GridError([(display_path(path or RECIPES_FILE), "--recipe", "no recipe named")])
    return list(dict.fromkeys(out))


def get_recipe(book: RecipeBook, name: str, path: str | Path | None = None) -> Recipe:
    name = book.canonical(name)
    if name not in book.recipes:
        known = ", ".join(list(book.recipes) + [f"{a} (= {r})" for a, r in book.aliases.items()])
        raise GridError([(display_path(path or RECIPES_FILE), "--recipe", f"no recipe {name!r}: recipes are {known}")])
    return book.recipes[name]
