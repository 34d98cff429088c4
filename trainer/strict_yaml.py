"""YAML in, as `yaml.safe_load` reads it, except that a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys without a word, so a scale that maps a model twice silently
trains whichever comes last. Keys merged in with `<<: *anchor` may be overridden, as YAML intends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from trainer.problems import SpecError, loc_path

_MERGE = "tag:yaml.org,2002:merge"


def duplicate_keys(node: yaml.Node | None, loc: tuple = (), seen: set | None = None) -> Iterator[tuple[str, str]]:
    """(field path, reason) for every key a mapping of the composed document gives twice."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:  # an alias is checked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from duplicate_keys(item, (*loc, i), seen)
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[tuple[str, str], int] = {}
    for key, value in node.value:
        if key.tag == _MERGE or not isinstance(key, yaml.ScalarNode):
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in first:
            where = loc_path((*loc, key.value))
            yield where, f"duplicate key {key.value!r} on line {line} (first on line {first[key.tag, key.value]})"
        first.setdefault((key.tag, key.value), line)
        yield from duplicate_keys(value, (*loc, key.value), seen)


def loads(text: str, source: str | None = None) -> Any:
    """Parse YAML text as safe_load does; SpecError naming `source`, the key and its line on a duplicate key."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        duplicates = list(duplicate_keys(node))
        if duplicates:
            raise SpecError(duplicates, source)
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as err:
        raise SpecError([("", f"not valid YAML: {err}")], source) from None
    finally:
        loader.dispose()


def read(path: str | Path, source: str | None = None) -> Any:
    """A YAML file's data; SpecError naming the file (as `source`, default the path) when it cannot be read."""
    path = Path(path)
    source = source or str(path)
    if not path.is_file():
        raise SpecError([("", "no such file")], source)
    return loads(path.read_text(), source)
