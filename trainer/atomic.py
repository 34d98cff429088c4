"""Files written whole or not at all: to a temporary file beside the target, fsynced, then renamed over it
(a rename within a directory is atomic), so a kill mid-write leaves the previous version or none, never half
a file for a rerun to read. The temporary file is named `.<name>.<random>.tmp` (workdir.remove_temporary
clears those a kill left in a run's directory)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from the group that shares the workdir
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes(path, text.encode(encoding))
