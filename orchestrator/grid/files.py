"""Where the grid's YAML lives: the paper's tables and the other tables (`ablations/`), the scales and the
recipe book (`experiments/`). Every lookup of a file by name goes through here.

In a checkout (an editable install included) they are the checkout's top-level folders, next to the code;
an installed wheel carries them as package data, `orchestrator/grid/data/` (setup.py maps them there).

Other tables are found by content, lazily (on the first lookup, not at import): a file of `ablations/` is a
table when it has `table:` and `rows:` at its top (the folder also holds searches).
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]  # the checkout (site-packages, when installed)
_PACKAGED = Path(__file__).resolve().parent / "data"  # a wheel's package data (pip installs wheels as folders)
GRID_ROOT = _PACKAGED if (_PACKAGED / "experiments").is_dir() else REPO  # holds experiments/ and ablations/
ABLATIONS = GRID_ROOT / "ablations"
EXPERIMENTS = GRID_ROOT / "experiments"
RECIPES_FILE = EXPERIMENTS / "recipes.yaml"
SOURCES_FILE = EXPERIMENTS / "sources.yaml"  # each paper-scale setting's source (orchestrator/grid/sources.py)
NOT_SCALES = ("recipes", "sources")  # the files of experiments/ that are no scale

# The paper's tables in order, and the file each lives in. `--tables all` (the default) is the paper's.
TABLE_IDS: tuple[str, ...] = ("2", "3", "4", "5", "6", "7", "fig4")
PAPER_TABLE_FILES = {**{t: f"table{t}.yaml" for t in TABLE_IDS[:-1]}, "fig4": "figure4.yaml"}
TABLE_ALIASES = {
    "figure4": "fig4",
    "f4": "fig4",
    "fig4": "fig4",
    **{f"t{t}": t for t in TABLE_IDS[:-1]},
    **{f"table{t}": t for t in TABLE_IDS[:-1]},
}


def display_path(path: str | Path) -> str:
    """A path as the user should read it: the grid's own files as `experiments/...`, `ablations/...` (in a
    checkout, any file inside it relative to it), others as given."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(GRID_ROOT))
    except ValueError:
        return str(path)


def is_path_ref(ref: str | Path) -> bool:
    """Whether `--tables`/`--scale` names a file rather than an id."""
    s = str(ref)
    return isinstance(ref, Path) or s.endswith((".yaml", ".yml")) or "/" in s


def is_table_file(path: Path) -> bool:
    """A table file has `table:` and `rows:` at its top (ablations/ may hold other YAML, e.g. searches).
    A sniff, read leniently: a table with a problem (a duplicate key) is still found, and load_table says why."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "table" in data and "rows" in data


@functools.cache
def extra_tables() -> tuple[str, ...]:
    """The other tables of ablations/ (other papers' comparisons: vitkd, deit), by file name."""
    paper = set(PAPER_TABLE_FILES.values())
    return tuple(sorted(p.stem for p in ABLATIONS.glob("*.yaml") if p.name not in paper and is_table_file(p)))


def table_files() -> dict[str, str]:
    """Every table id of ablations/ -> its file name: the paper's in order, then the others."""
    return {**PAPER_TABLE_FILES, **{t: f"{t}.yaml" for t in extra_tables()}}


def table_id(ref: str) -> str:
    """A table id from an id or alias ("t2", "figure4" -> "2", "fig4"); unknown ids come back as given."""
    return TABLE_ALIASES.get(str(ref).lower(), str(ref))


def table_path(ref: str) -> Path | None:
    """The file of a table id ("2".."7", "fig4", aliases, other tables), or None when `ref` is not one."""
    files = table_files()
    t = table_id(ref)
    return ABLATIONS / files[t] if t in files else None


def unknown_table(ref: str, hint: str = "") -> tuple[str, str, str]:
    """The problem of a `--tables` id that names no table, as (file, field, reason)."""
    return (
        display_path(ABLATIONS / f"table{ref}.yaml"),
        "--tables",
        f"no table {ref!r}: the paper's tables are {', '.join(TABLE_IDS)}, the others "
        f"{', '.join(extra_tables()) or 'none'}{hint}",
    )


def scale_names() -> list[str]:
    return sorted(
        p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem not in NOT_SCALES and not p.stem.endswith(".example")
    )


def unknown_scale(ref: str) -> tuple[str, str, str]:
    """The problem of a `--scale` name that names no scale, as (file, field, reason)."""
    reason = f"no scale {ref!r}: scales are {', '.join(scale_names())}, or give a path to a scale YAML"
    return display_path(EXPERIMENTS / f"{ref}.yaml"), "--scale", reason


def scale_file(ref: str | Path) -> Path | None:
    """The file of a scale by name (experiments/<name>.yaml) or path; None for a name that is no scale."""
    if is_path_ref(ref):
        return Path(ref)
    path = EXPERIMENTS / f"{ref}.yaml"
    return path if path.is_file() and ref not in NOT_SCALES else None
