"""`kdgrid check`: every dependency, its installed version and the range kdgrid supports."""

from __future__ import annotations

from orchestrator.requirements import RANGES, installed_versions, problem


def run(args) -> int:
    versions = installed_versions(r.name for r in RANGES)
    bad = 0
    for r in RANGES:
        p = problem(r, versions[r.name])
        bad += p is not None
        print(f"ok   {r.name:<12} {versions[r.name]:<14} within {r}" if p is None else f"BAD  {p}")
    print("all dependencies within kdgrid's ranges" if not bad else f"{bad} dependency(ies) outside kdgrid's ranges")
    return 1 if bad else 0
