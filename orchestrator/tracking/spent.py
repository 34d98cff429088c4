"""What finished runs cost, as the engine logged it (`cost.setup_cpu_s` + every epoch's `cost.cpu_s`)."""

from __future__ import annotations

from collections.abc import Iterable

from trainer import tracking


def run_cpu_s(uri: str, scale: str, hashes: Iterable[str], cache: dict[str, float] | None = None) -> dict[str, float]:
    """CPU-seconds each finished run of these hashes logged; `cache` keeps what was read (a finished run's
    cost does not change)."""
    hashes = list(hashes)
    cache = {} if cache is None else cache
    want = [h for h in hashes if h not in cache]
    if want:
        c = tracking.client(uri)
        for h, run in tracking.finished_runs(c, scale, want).items():
            cache[h] = sum(
                m.value
                for key in ("cost.setup_cpu_s", "cost.cpu_s")
                for m in tracking.retry(c.get_metric_history, run.info.run_id, key)
            )
    return {h: cache[h] for h in hashes if h in cache}
