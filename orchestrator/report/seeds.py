"""The seeds `kdgrid reproduce --resolve` added: rows that MLflow holds more finished seeds of than planned,
so that `kdgrid report --added-seeds` counts them."""

from __future__ import annotations

from typing import Any

from trainer import tracking


def added_seeds(wide: Any, tracking_uri: str, seeds: int) -> dict[str, int]:
    """{row key: seeds} for the rows whose seeds 0..n-1 (n > `seeds`) are all finished in MLflow. `wide`:
    the grid planned with as many seeds as `--resolve` may have added."""
    done = set(tracking.finished_runs(tracking.client(tracking_uri), wide.scale, [r.hash for r in wide.runs]))
    out: dict[str, int] = {}
    for hs in wide.row_hashes.values():
        n = 0
        while n < len(hs) and hs[n] in done:
            n += 1
        if n > seeds:
            out[hs[0]] = max(out.get(hs[0], 0), n)
    return out
