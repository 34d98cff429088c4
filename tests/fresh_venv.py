"""kdgrid as a user installs it: the sdist and wheel `python -m build` makes, and a fresh virtual environment
with the wheel installed, for the packaging and plug-in tests.

The fresh venv does not install the locked dependencies again (torch alone is minutes and GBs): after the
wheel is in, a `.pth` file appends the site-packages of the interpreter running the tests (the locked set)
to the venv's path. It still tests the wheel: the venv's own site-packages, holding the wheel's
`orchestrator` and `trainer`, comes first on the path, and the running venv's own kdgrid (an editable
install) cannot be imported: its finder is installed by a `.pth` file of that site-packages, and Python
runs the `.pth` files of its own site directories only, not those of a directory a `.pth` line adds.
(`venv --system-site-packages` would not do: from a venv's interpreter it shows the base Python's
site-packages, not the venv's.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_DISTS: dict[str, tuple[Path, Path]] = {}


def build_dists(out: Path) -> tuple[Path, Path]:
    """(wheel, sdist) as `python -m build` makes them (the wheel built from the unpacked sdist), with the
    build backend already installed here rather than an isolated one (no index needed)."""
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    (wheel,), (sdist,) = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    return wheel, sdist


def dists(tmp_path_factory) -> tuple[Path, Path]:
    """(wheel, sdist), built once per test session."""
    if "kdgrid" not in _DISTS:
        _DISTS["kdgrid"] = build_dists(tmp_path_factory.mktemp("dist"))
    return _DISTS["kdgrid"]


@dataclass
class Venv:
    path: Path

    @property
    def env(self) -> dict[str, str]:
        """The venv's programs first, nothing of the checkout on the path, pip offline (it finds kdgrid's
        dependencies installed; PIP_NO_BUILD_ISOLATION=0 turns build isolation *off*: pip reads the
        variable inverted), MLflow's default store (./kdgrid.db)."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "MLFLOW_TRACKING_URI")}
        return {
            **env,
            "PATH": f"{self.path / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "VIRTUAL_ENV": str(self.path),
            "PIP_NO_INDEX": "1",
            "PIP_NO_BUILD_ISOLATION": "0",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "COLUMNS": "200",
        }

    def run(self, line: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
        """A shell command line in the venv, as a user types it."""
        return subprocess.run(
            ["bash", "-c", line], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )


def fresh_venv(path: Path, wheel: Path) -> Venv:
    """A new venv with kdgrid from `wheel` (no dependencies), then the locked dependencies on its path."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True, timeout=600)
    venv = Venv(path)
    python = path / "bin" / "python"
    for pip_args in (["uninstall", "-y", "setuptools"], ["install", "-q", "--no-deps", str(wheel)]):
        # Python 3.11's venv adds an old setuptools, which would shadow the locked one that builds plug-ins.
        subprocess.run([python, "-m", "pip", *pip_args], check=True, capture_output=True, env=venv.env, timeout=600)
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    locked = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(site) / "kdgrid-locked-dependencies.pth").write_text("".join(f"{p}\n" for p in locked))
    return venv
