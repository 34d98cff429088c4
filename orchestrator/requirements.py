"""The versions kdgrid works with, checked at start-up so that a wrong torch/timm/mlflow/... stops a command
with the range it needs instead of failing deep inside a training run.

`RANGES` mirrors `project.dependencies` of pyproject.toml (tests/test_requirements.py keeps them equal).
The check reads versions from the installed distributions' `*.dist-info` folder names, the data
`importlib.metadata` reads, without importing any package: one `listdir` per `sys.path` entry costs about a
millisecond where `importlib.metadata.version` costs a few hundred (it imports email, zipfile, ... and
scans every path per name). `importlib.metadata` is the fallback for a package found no other way
(an egg-info install).
"""

from __future__ import annotations

import os
import re
import sys


class Range:
    """name: the distribution, as pyproject.toml spells it; floor: the oldest release that works (inclusive);
    ceiling: the first release assumed to break (exclusive), the next major; why: what sets the floor.
    A plain class: `dataclasses` imports `inspect`, which would cost this check more than its work."""

    __slots__ = ("name", "floor", "ceiling", "why")

    def __init__(self, name: str, floor: str, ceiling: str, why: str):
        self.name, self.floor, self.ceiling, self.why = name, floor, ceiling, why

    def __str__(self) -> str:
        return f"{self.name}>={self.floor},<{self.ceiling}"


RANGES = (
    Range("torch", "2.3", "3", "torch.amp.GradScaler('cuda')"),
    Range("torchvision", "0.18", "1", "the torchvision of torch 2.3"),
    Range("timm", "1.0.30", "2", "forward_intermediates; RegNet buildable on the meta device (1.0.30)"),
    Range("ray", "2.41", "3", "ray.tune.RunConfig, FailureConfig and tune.report(dict) (2.41)"),
    Range("mlflow", "3.1.3", "4", "MlflowClient.download_artifacts honours the client's tracking URI (3.1.3)"),
    Range(
        "submitit",
        "1.5.4",
        "2",
        "AutoExecutor(slurm_python=...); before 1.5.4 it imports pkg_resources, which setuptools 82+ no longer has",
    ),
    Range("pydantic", "2.0.3", "3", "pydantic 2 validators (spec hashes checked equal on 2.0.3 and 2.14)"),
    Range("rich", "13", "16", "Live, Progress and MofNCompleteColumn"),
    Range("matplotlib", "3.6", "4", "the first with Python 3.11 wheels"),
    Range("PyYAML", "6.0", "7", "the first with Python 3.11 wheels"),
    Range("numpy", "1.24", "3", "numpy.random.seed for timm's Mixup"),
    Range("pillow", "9.1", "14", "ImageOps.posterize"),
    Range("Jinja2", "3.1", "4", "the HTML report's template"),
    Range("psutil", "5.9", "8", "MLflow's system metrics"),
)

# Checked before every command; the rest are checked by `kdgrid check`.
STARTUP = ("torch", "torchvision", "timm", "mlflow", "pydantic", "ray", "submitit")
SKIP_ENV = "KDGRID_SKIP_VERSION_CHECK"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> tuple[int, ...]:
    """The release numbers of a PEP 440 version: '2.13.0+cpu' -> (2, 13, 0), '2.3.0a0+git1' -> (2, 3, 0).

    A pre-release counts as its release on purpose: NVIDIA's containers ship torch as '2.3.0a0+...', which
    has 2.3's API; and '3.0.0rc1' is still refused by a ceiling of 3.
    """
    m = re.match(r"\s*v?(?:\d+!)?(\d+(?:\.\d+)*)", version)
    if not m:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(p) for p in m.group(1).split("."))


def problem(r: Range, installed: str | None) -> str | None:
    """None when `installed` is within `r`, else the sentence that says what is wrong and what is needed."""
    if installed is None:
        return f"{r.name} is not installed; kdgrid needs {r}"
    try:
        got = release(installed)
    except ValueError:
        return f"{r.name} {installed} is not a version kdgrid can read; kdgrid needs {r}"
    if got < release(r.floor):
        return f"{r.name} {installed} is too old; kdgrid needs {r} ({r.why})"
    if not got < release(r.ceiling):
        return f"{r.name} {installed} is newer than kdgrid supports; kdgrid needs {r}"
    return None


def installed_versions(names) -> dict[str, str | None]:
    """{name: version or None}, for the distribution Python would import first (sys.path order)."""
    wanted = {_norm(n): n for n in names}
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            items = os.listdir(entry or ".")
        except OSError:
            continue
        for item in items:
            if item.endswith(".dist-info"):
                name, _, version = item[: -len(".dist-info")].partition("-")
                key = _norm(name)
                if key in wanted and key not in found and version:
                    found[key] = version
    out: dict[str, str | None] = {}
    for key, name in wanted.items():
        if key not in found:
            from importlib.metadata import PackageNotFoundError, version

            try:
                found[key] = version(name)
            except PackageNotFoundError:
                pass
        out[name] = found.get(key)
    return out


def problems(names=STARTUP) -> list[str]:
    ranges = [r for r in RANGES if r.name in names]
    versions = installed_versions(r.name for r in ranges)
    return [p for r in ranges if (p := problem(r, versions[r.name])) is not None]


def check_startup() -> str | None:
    """The error message for unsupported versions of the main packages, or None (also when skipped)."""
    if os.environ.get(SKIP_ENV) == "1":
        return None
    found = problems(STARTUP)
    if not found:
        return None
    return (
        "unsupported package versions:\n  "
        + "\n  ".join(found)
        + "\nInstall a supported version (`pip install -e .` resolves kdgrid's ranges; "
        "`pip install -c requirements/lock.txt -e .` the tested set), "
        f"or set {SKIP_ENV}=1 to try anyway."
    )
