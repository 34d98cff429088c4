"""Dependency ranges, the start-up version check, and pip keeping a torch that is already installed."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import urllib.request
import venv
import zipfile
from importlib.metadata import version as metadata_version
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from orchestrator import requirements as req
from tests.conftest import ROOT, kdgrid


def _range(name: str) -> req.Range:
    return next(r for r in req.RANGES if r.name == name)


def test_ranges_are_pyprojects():
    """The check's table is pyproject.toml's dependency list, range for range (one can't drift from the other)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {Requirement(d).name: Requirement(d).specifier for d in deps}
    assert {r.name: SpecifierSet(str(r).removeprefix(r.name)) for r in req.RANGES} == declared
    assert set(req.STARTUP) <= set(declared)


def test_lock_pins_every_range_inside_it():
    """requirements/lock.txt pins each dependency at a version its range admits."""
    pins = dict(
        line.split("==")
        for line in (ROOT / "requirements/lock.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    pins = {req._norm(k): v for k, v in pins.items()}
    for r in req.RANGES:
        assert req.problem(r, pins[req._norm(r.name)]) is None, r.name


@pytest.mark.parametrize(
    "given, release",
    [
        ("2.13.0+cpu", (2, 13, 0)),
        ("2.3.0a0+6ddf5cf85e", (2, 3, 0)),
        ("1.0.30", (1, 0, 30)),
        ("1!2.0.post1", (2, 0)),
        ("v3.0rc1", (3, 0)),
    ],
)
def test_release(given, release):
    assert req.release(given) == release


def test_out_of_range_versions_are_named_with_their_range():
    torch = _range("torch")
    assert req.problem(torch, "2.2.2") == (
        "torch 2.2.2 is too old; kdgrid needs torch>=2.3,<3 (torch.amp.GradScaler('cuda'))"
    )
    assert req.problem(torch, "3.0.0rc1") == "torch 3.0.0rc1 is newer than kdgrid supports; kdgrid needs torch>=2.3,<3"
    assert req.problem(torch, None) == "torch is not installed; kdgrid needs torch>=2.3,<3"
    assert req.problem(torch, "nightly") == "torch nightly is not a version kdgrid can read; kdgrid needs torch>=2.3,<3"
    assert "timm 1.0.29 is too old; kdgrid needs timm>=1.0.30,<2" in req.problem(_range("timm"), "1.0.29")
    assert "mlflow 3.1.1 is too old; kdgrid needs mlflow>=3.1.3,<4" in req.problem(_range("mlflow"), "3.1.1")
    assert "pydantic 1.10.17 is too old; kdgrid needs pydantic>=2.0.3,<3" in req.problem(_range("pydantic"), "1.10.17")
    assert "ray 2.40.0 is too old; kdgrid needs ray>=2.41,<3" in req.problem(_range("ray"), "2.40.0")


@pytest.mark.parametrize(
    "name, given",
    [
        ("torch", "2.3.0"),
        ("torch", "2.3.0a0+git"),
        ("torch", "2.99.1+cu130"),
        ("timm", "1.0.30"),
        ("mlflow", "3.1.3"),
        ("ray", "2.41.0"),
        ("pydantic", "2.14.3"),
    ],
)
def test_in_range_versions_pass(name, given):
    assert req.problem(_range(name), given) is None


def test_installed_versions_agree_with_importlib_metadata():
    """The fast dist-info scan finds what importlib.metadata finds, for every dependency here."""
    names = [r.name for r in req.RANGES]
    assert req.installed_versions(names) == {n: metadata_version(n) for n in names}


def _shadow(tmp_path: Path, name: str, version: str) -> Path:
    """A folder holding only the metadata of `name` `version`: first on sys.path, it is what pip and the
    check see (the module itself still imports from the environment)."""
    d = tmp_path / "shadow"
    info = d / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return d


def test_installed_versions_follow_sys_path_order(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_shadow(tmp_path, "timm", "1.0.29")))
    assert req.installed_versions(["timm", "missing-package-xyz"]) == {"timm": "1.0.29", "missing-package-xyz": None}
    assert req.problems(("timm",)) == [req.problem(_range("timm"), "1.0.29")]


def test_commands_stop_on_an_unsupported_version(tmp_path):
    """A command with an out-of-range timm on the path stops before doing anything, naming timm and its range."""
    shadow = _shadow(tmp_path, "timm", "1.0.29")
    out = kdgrid(
        "plan", "--scale", "smoke", "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}", cwd=ROOT, path=(shadow,)
    )
    assert out.returncode == 2, out.stderr
    assert "timm 1.0.29 is too old; kdgrid needs timm>=1.0.30,<2" in out.stderr
    assert "KDGRID_SKIP_VERSION_CHECK=1" in out.stderr
    assert not (tmp_path / "x.db").exists()

    out = kdgrid("check", cwd=ROOT, path=(shadow,))
    assert out.returncode == 1
    assert "BAD  timm 1.0.29 is too old" in out.stdout
    assert "ok   torch" in out.stdout


def test_check_passes_in_this_environment():
    out = kdgrid("check", cwd=ROOT)
    assert out.returncode == 0, out.stdout
    assert out.stdout.strip().endswith("all dependencies within kdgrid's ranges")


# --- pip keeps an installed torch --------------------------------------------------------------------------


def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A real, installable wheel of distribution `name` `version` (an empty module): what pip sees of a torch
    built for some cluster, without downloading gigabytes."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: kdgrid-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    out = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return out


def _pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=15):
            return True
    except OSError:
        return False


def _resolve(tmp_path: Path, torch: str, torchvision: str, wanted: list[str]) -> dict[str, str]:
    """{name: version} that `pip install <wanted>` would install into a fresh venv that already holds torch `torch`
    and torchvision `torchvision` (which pins that torch, as the real one does). No lock: ranges only."""
    env_dir = tmp_path / f"venv-{torch}"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    wheels = tmp_path / f"wheels-{torch}"
    wheels.mkdir()
    built = [_wheel(wheels, "torch", torch), _wheel(wheels, "torchvision", torchvision, (f"torch=={torch}",))]
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", "--no-deps", "--no-index", *map(str, built)], check=True, timeout=300)
    have = subprocess.run(
        [python, "-c", "import torch, torchvision; print(torch.__version__, torchvision.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert have == [torch, torchvision]
    report = tmp_path / f"report-{torch}.json"
    subprocess.run(
        [*pip, "install", "--dry-run", "--quiet", "--report", str(report), *wanted], check=True, timeout=1200
    )
    return {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }


@pytest.mark.slow
def test_pip_keeps_an_installed_torch_within_the_range(tmp_path):
    """What this proves: pip's real resolver, asked for `pip install -e <this repo>` against PyPI (pyproject.toml's
    ranges, no lock), leaves an installed torch 2.13.0 / torchvision 0.28.0 in place — not the lock's 2.14.1 /
    0.29.1, not PyPI's newest — while it does install the rest (timm, mlflow, ray). The installed torch is a
    real distribution (a tiny wheel named torch, installed by pip), so the resolver sees what it would see of
    a cluster's own build. The control, first: the same kind of venv holding torch 2.2.0 / torchvision 0.17.0
    (below the ranges), asked for pyproject.toml's torch and torchvision requirements, gets both replaced, so
    an installed torch is visible to pip and it is the range that keeps 2.13.0."""
    if not _pypi_reachable():
        if os.environ.get("CI") == "true":
            pytest.fail("PyPI (https://pypi.org) is unreachable in CI: the resolver check needs it")
        pytest.skip("PyPI (https://pypi.org) is unreachable and this is not CI (CI=true): cannot resolve")
    lock = dict(
        line.split("==")
        for line in (ROOT / "requirements/lock.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert lock["torch"] != "2.13.0" and lock["torchvision"] != "0.28.0"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_reqs = [d for d in deps if Requirement(d).name in ("torch", "torchvision")]
    assert len(torch_reqs) == 2

    replaced = _resolve(tmp_path, "2.2.0", "0.17.0", torch_reqs)
    assert req.problem(_range("torch"), replaced["torch"]) is None
    assert req.problem(_range("torchvision"), replaced["torchvision"]) is None

    kept = _resolve(tmp_path, "2.13.0", "0.28.0", ["-e", str(ROOT)])
    assert "torch" not in kept and "torchvision" not in kept, {
        k: kept[k] for k in ("torch", "torchvision") if k in kept
    }
    assert {"kdgrid", "timm", "mlflow", "ray"} <= set(kept)
