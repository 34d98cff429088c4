"""What became of a planned run in a launch: a kind and its detail.

The engine reports runs as text ("finished", "failed: reason", "locked: held by ...", "skipped: ..."); it is
parsed once, where a worker's results come back (`Outcome.parse`), and the launchers add their own kinds
(blocked, deferred, submitted, running elsewhere). "running elsewhere" (another launch holds the run's lock)
and "deferred" (its teacher is running elsewhere) are not failures: the same command run again later
picks them up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

KINDS = (
    "finished",
    "skipped",
    "failed",
    "blocked",
    "running elsewhere",
    "deferred",
    "submitted",
    "queued",
    "running",
)
_ALIASES = {"locked": "running elsewhere"}  # the engine's word for a run another process holds


@dataclass(frozen=True)
class Outcome:
    kind: str
    detail: str = ""

    @classmethod
    def parse(cls, text: str) -> Outcome:
        head, _, detail = text.partition(":")
        head = head.strip()
        return cls(_ALIASES.get(head, head), detail.strip())

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind

    @property
    def done(self) -> bool:
        """Finished, now or before: a run that needs it may start."""
        return self.kind in ("finished", "skipped")

    @property
    def bad(self) -> bool:
        """Failed, or blocked by a teacher that failed: the command ends with an error."""
        return self.kind in ("failed", "blocked")


def parse_all(results: Mapping[str, str | Outcome]) -> dict[str, Outcome]:
    """A worker's {hash: outcome} as Outcomes (text crosses process and JSON boundaries)."""
    return {h: o if isinstance(o, Outcome) else Outcome.parse(o) for h, o in results.items()}


def blocked_by(run, outcomes: Mapping[str, Outcome], names: Mapping[str, str] | None = None) -> Outcome | None:
    """Why a run cannot start: a dep ended without finishing, or another launch has it (None: it may start)."""
    for d in run.deps:
        o = outcomes.get(d)
        if o is None or o.done:
            continue
        who = f"{d[:8]}" + (f" ({names[d]})" if names and d in names else "")
        if o.kind == "running elsewhere":
            return Outcome("deferred", f"teacher {who} is being trained by another launch; run again once it finishes")
        return Outcome("blocked", f"teacher {who} did not finish ({o})")
    return None
