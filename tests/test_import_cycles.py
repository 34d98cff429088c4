"""The import graph of `trainer` and `orchestrator` has no cycles between modules, imports inside
functions and under TYPE_CHECKING included (grimp reads every import statement). A cycle held together by
function-level imports still means that neither module can be read, tested or moved without the other."""

from __future__ import annotations

import grimp


def shortest_cycles(graph: grimp.ImportGraph) -> list[str]:
    """For each import a -> b that b leads back from, the shortest cycle through it; each cycle once,
    written from its alphabetically first module."""
    cycles = set()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                ring = [importer, *back[:-1]]
                start = ring.index(min(ring))
                ring = ring[start:] + ring[:start]
                cycles.add(" -> ".join([*ring, ring[0]]))
    return sorted(cycles)


def test_cycle_finder_sees_a_cycle_held_by_a_function_level_import(tmp_path, monkeypatch):
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyc import b\n")
    (pkg / "b.py").write_text("def f():\n    from cyc import a\n    return a\n")
    (pkg / "c.py").write_text("from cyc import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyc", cache_dir=None)
    assert shortest_cycles(graph) == ["cyc.a -> cyc.b -> cyc.a"]


def test_no_import_cycles_in_trainer_and_orchestrator():
    graph = grimp.build_graph("trainer", "orchestrator", cache_dir=None)
    assert shortest_cycles(graph) == []
