"""Shared test fixtures and the one way tests run the command line: small and generic."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def kdgrid_command(*args: str) -> list[str]:
    """`kdgrid ARGS` as an argv for a fresh interpreter."""
    return [sys.executable, "-m", "orchestrator.cli", *args]


def kdgrid_env(env: Mapping[str, str] | None = None, path: tuple[str | Path, ...] = ()) -> dict[str, str]:
    """`env` (default: this process's environment) with this checkout on PYTHONPATH after `path`, and 200
    columns for rich (output captured: no terminal, one line per event)."""
    out = dict(os.environ if env is None else env)
    out["PYTHONPATH"] = os.pathsep.join(str(p) for p in (*path, ROOT))
    out.setdefault("COLUMNS", "200")
    return out


def kdgrid(
    *args: str,
    cwd: Path,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
    path: tuple[str | Path, ...] = (),
    check: bool = False,
) -> subprocess.CompletedProcess:
    """`kdgrid ARGS` in a fresh interpreter, output captured as text. `env` replaces this process's
    environment, `path` goes first on PYTHONPATH; `check`: fail the test (with the output's tail) unless
    the command succeeds."""
    out = subprocess.run(
        kdgrid_command(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=kdgrid_env(env, path),
    )
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[[str, Any], Path]:
    """write_yaml("name.yaml", data) -> path: a mapping is dumped as YAML, a string is written as is."""

    def write(name: str, data: Any) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


# pytest-xdist (`-n 2`, scripts/test.sh) runs a module on one worker, so its module fixtures are built
# once, and the modules that start Ray or submit to Slurm on one worker together: two Ray clusters or two
# Slurm grids at once on 2 cores only wait for each other. That group is the longest, so it starts first.
CLUSTER_MODULES = (
    "test_launch_ray",
    "test_tune_search",
    "test_slurm",
    "test_failures",
    "test_telemetry",
    "test_launcher_plugin",
)


def _group(nodeid: str) -> str:
    module = Path(nodeid.split("::", 1)[0]).stem
    return "cluster" if module in CLUSTER_MODULES else module


# Modules of one long test (minutes): started beside the cluster group, not left for the end of the run.
EARLY_MODULES = ("test_chaos",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The order xdist hands the groups out in: the cluster group, the early modules, then the rest largest
    first (as xdist's own reordering would); a group's tests keep their order."""
    size = Counter(_group(item.nodeid) for item in items)
    first: dict[str, int] = {}
    for n, item in enumerate(items):
        first.setdefault(_group(item.nodeid), n)

    def key(item: pytest.Item):
        g = _group(item.nodeid)
        return (g != "cluster", g not in EARLY_MODULES, -size[g], first[g])

    items.sort(key=key)


@pytest.hookimpl(optionalhook=True)  # the tests also run without xdist (one process)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    # xdist's own `--dist loadgroup` cannot group under pytest 9 (it rewrites a node id pytest no longer
    # reads), so the grouping is a scheduler: xdist's per-scope one, with our groups as its scopes.
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # the order is pytest_collection_modifyitems's

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return ByGroup(config, log)


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder of this session shared by every xdist worker (each worker has its own basetemp below it)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    path = base / name
    path.mkdir(exist_ok=True)
    return path
