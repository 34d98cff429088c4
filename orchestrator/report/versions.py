"""The numerics versions a report reads (trainer/numerics.py): named in its banner, so a table that mixes
two codes' numbers, or holds another code's only, says so."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from trainer import numerics


def note(results: Iterable) -> str:
    """A sentence naming every numerics version among the runs read (RunResults; missing ones read nothing)."""
    counts = Counter(numerics.version_of(r.tags) for r in results if r.status != "missing")
    if not counts:
        return ""
    this = numerics.NUMERICS_VERSION
    if set(counts) == {this}:
        return f"Numerics version {this} (this code's) in all {counts[this]} run(s) read."
    parts = [
        f"{v} in {n} run(s)" + (" (this code's)" if v == this else "")
        for v, n in sorted(counts.items(), key=lambda kv: (kv[0] != this, kv[0]))
    ]
    return (
        f"Numerics versions read: {'; '.join(parts)}. Runs of another version hold another code's numbers: "
        f"the next launch trains them again under version {this}."
    )
