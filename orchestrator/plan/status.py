"""Which planned runs the tracking store has finished, started or never seen."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.plan.model import Plan
from trainer import tracking


def run_states(plan: Plan, uri: str | None = None) -> tuple[dict[str, str], str | None]:
    """finished / partial / missing per planned hash, from MLflow; a missing store means all missing.

    Never creates a store: a SQLite file or a local folder that does not exist is read as empty.
    """
    uri = uri or tracking.default_uri()
    missing = {r.hash: "missing" for r in plan.runs}
    local = None
    if uri.startswith("sqlite:///"):
        local = Path(uri[len("sqlite:///") :])
    elif uri.startswith("file:"):
        local = Path(uri[len("file:") :].removeprefix("//"))
    elif "://" not in uri:
        local = Path(uri)
    if local is not None and not local.exists():
        return missing, f"no MLflow store at {uri} yet: every run is missing"
    if uri.startswith(("http://", "https://")):  # answer soon when the server is down
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        c = tracking.client(uri)
        found = tracking.runs_by_hash(c, plan.scale, missing)
    except Exception as err:  # unreachable server, foreign file, ...
        return missing, f"could not read MLflow at {uri} ({type(err).__name__}: {err}): every run shown missing"
    return {h: tracking.run_state(found.get(h)) for h in missing}, None
