"""Nothing leaves the machine unless the user asks: the environment variables that turn off the usage reports
of the libraries kdgrid runs, given to every process kdgrid starts (docs/tracking.md, "Privacy").

MLflow 3.17 reads MLFLOW_DISABLE_TELEMETRY (and DO_NOT_TRACK, but only the value "true") when it is
imported; Ray reads RAY_USAGE_STATS_ENABLED in the processes that start a cluster. DO_NOT_TRACK=1 is the
convention other tools follow. `KDGRID_TELEMETRY=1` leaves all of them to the libraries' own defaults, and
a variable the user set keeps its value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

SWITCH = "KDGRID_TELEMETRY"
OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the user turned the libraries' telemetry back on (KDGRID_TELEMETRY=1)."""
    env = os.environ if environ is None else environ
    return env.get(SWITCH, "").strip().lower() in ("1", "true", "yes", "on")


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """These variables as a process kdgrid starts gets them: the user's own values where set, the others
    off (none with KDGRID_TELEMETRY=1)."""
    env = os.environ if environ is None else environ
    return {k: env.get(k, off) for k, off in OFF.items() if k in env or not enabled(env)}


def apply(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set them in this process (before MLflow or Ray is imported), for it and every process it starts."""
    env = os.environ if environ is None else environ
    values = environment(env)
    env.update(values)
    return values
