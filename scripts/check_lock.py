"""Fail when the current environment differs from requirements/lock.txt: every installed distribution
(but pip's own tools and kdgrid) must be pinned there at the version installed. CI runs this after
scripts/bootstrap.sh, so a lock that misses a package (pip would then take whatever is newest) or a
stale venv shows up as a named difference, not as a test that fails for another reason.

Usage: .venv/bin/python scripts/check_lock.py [requirements/lock.txt]
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import distributions
from pathlib import Path

IGNORED = {"pip", "kdgrid"}
VENV_TOOLS = {"setuptools", "wheel"}  # come with some venvs: checked only when the lock pins them


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                raise SystemExit(f"{path}: {line!r} is not a `name==version` pin")
            pins[norm(name)] = version.strip()
    return pins


def main(argv: list[str]) -> int:
    lock = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parents[1] / "requirements/lock.txt")
    pins = read_lock(lock)
    installed = {norm(d.metadata["Name"]): d.version for d in distributions()}
    diff = [
        f"{n} {v} is installed but not in {lock}"
        for n, v in sorted(installed.items())
        if n not in IGNORED | VENV_TOOLS and n not in pins
    ]
    diff += [
        f"{n} {v} is installed, {lock} pins {pins[n]}"
        for n, v in sorted(installed.items())
        if n in pins and pins[n] != v
    ]
    for line in diff:
        print(f"[check_lock] {line}", file=sys.stderr)
    if not diff:
        print(f"[check_lock] the environment matches {lock} ({len(installed)} distributions)")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
