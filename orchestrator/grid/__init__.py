"""The paper's grid as data: ablation tables, scales and named recipes (pydantic v2, YAML in and out).

- `files`: where the YAML lives (`ablations/`, `experiments/`), and which tables there are;
- `errors`: GridError (file, field path, reason) and the grid's YAML reader (duplicate keys refused);
- `rows` and `tables`: a table's rows (the paper's models, the method, the settings its method varies)
  and how each is printed;
- `scales`: the model each paper model becomes at a scale, its data, recipe, teachers, `--set` overrides;
- `recipes`: the recipe book, whose fields each method declares.

Every model forbids unknown keys. Loading errors name the file, the field path and the reason:
`ablations/table5.yaml: rows[1].teacher_blocks[3]: block 25 is beyond ...`.
"""

from __future__ import annotations

from orchestrator.grid.errors import GridError, read_yaml, to_yaml
from orchestrator.grid.files import (
    ABLATIONS,
    EXPERIMENTS,
    RECIPES_FILE,
    REPO,
    TABLE_ALIASES,
    TABLE_IDS,
    display_path,
    extra_tables,
    is_path_ref,
    is_table_file,
    table_files,
    table_path,
)
from orchestrator.grid.recipes import (
    LogitKD,
    Recipe,
    RecipeBook,
    RecipeStudent,
    get_recipe,
    load_recipes,
    recipe_names,
)
from orchestrator.grid.rows import (
    BLOCK_FIELDS,
    DISPLAY_FIELDS,
    METHOD_FIELDS,
    METHOD_LABEL,
    AblationRow,
    Acc,
    Curve,
    Head,
    RowFields,
    method_label,
    method_problem,
    row_problems,
)
from orchestrator.grid.scales import (
    Launch,
    ModelMap,
    Scale,
    StudentDefaults,
    TeacherSource,
    apply_overrides,
    deep_merge,
    load_scale,
    scale_path,
)
from orchestrator.grid.tables import AblationTable, Column, DisplayField, TableScale, load_table
from trainer.problems import loc_path, validation_problems
from trainer.spec_base import StrictModel

__all__ = [
    "ABLATIONS",
    "BLOCK_FIELDS",
    "DISPLAY_FIELDS",
    "EXPERIMENTS",
    "METHOD_FIELDS",
    "METHOD_LABEL",
    "RECIPES_FILE",
    "REPO",
    "TABLE_ALIASES",
    "TABLE_IDS",
    "AblationRow",
    "AblationTable",
    "Acc",
    "Column",
    "Curve",
    "DisplayField",
    "GridError",
    "Head",
    "Launch",
    "LogitKD",
    "ModelMap",
    "Recipe",
    "RecipeBook",
    "RecipeStudent",
    "RowFields",
    "Scale",
    "StrictModel",
    "StudentDefaults",
    "TableScale",
    "TeacherSource",
    "apply_overrides",
    "deep_merge",
    "display_path",
    "extra_tables",
    "get_recipe",
    "is_path_ref",
    "is_table_file",
    "load_recipes",
    "load_scale",
    "load_table",
    "loc_path",
    "method_label",
    "method_problem",
    "read_yaml",
    "recipe_names",
    "row_problems",
    "scale_path",
    "table_files",
    "table_path",
    "to_yaml",
    "validation_problems",
]


def __getattr__(name: str):
    """EXTRA_TABLES and TABLE_FILES, the names of old, found on first use (ablations/ is not read at import)."""
    if name == "EXTRA_TABLES":
        return extra_tables()
    if name == "TABLE_FILES":
        return table_files()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
