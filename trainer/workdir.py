"""A run's directory: its checkpoints (for exact resume), final weights, and a lock held while it trains.

Layout: WORKDIR/<content hash>/{spec.yaml, checkpoint.pt, checkpoint.prev.pt, checkpoint.sums.json, final.pt,
lock}. A checkpoint is written to a temporary file, fsynced, its size and sha256 recorded in the sums file, and
only then renamed over the last one, which stays as checkpoint.prev.pt: a kill, a torn write or a full disk
never costs more than the epoch in flight, and resume takes the newest checkpoint whose size and sha256 check
out. The lock makes two launches of the same grid (or two `kdgrid train` of one spec) never train the same run
at once: it is created atomically (O_EXCL), refreshed by a heartbeat thread, and taken over only when its owner
is gone (a dead pid on this host, or no heartbeat for `STALE_AFTER` seconds from another host).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

STALE_AFTER = 180.0
HEARTBEAT = 20.0


def run_dir(workdir: str | Path, run_hash: str) -> Path:
    return Path(workdir).expanduser().resolve() / run_hash


class DiskFull(OSError):
    """No space left while saving: the file being written is removed and the one it would replace is kept."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


def save_atomic(obj: Any, path: Path, what: str | None = None) -> None:
    """torch.save to a temporary file then rename: a kill mid-write never leaves a torn file. Raises DiskFull
    ("disk full while saving `what` to `path`") when the disk fills up, leaving `path` as it was."""
    tmp = _write_tmp(path, lambda f: torch.save(obj, f), f"disk full while saving {what or path.name} to {path}")
    os.replace(tmp, path)


def previous(path: Path) -> Path:
    """Where the checkpoint before `path`'s is kept (checkpoint.pt -> checkpoint.prev.pt)."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def sums_file(path: Path) -> Path:
    """The size and sha256 of the checkpoints last saved at `path` (checkpoint.pt -> checkpoint.sums.json)."""
    return path.with_name(f"{path.stem}.sums.json")


def save_checkpoint(state: dict, path: Path, epoch: int) -> None:
    """Save `state` at `path` so that a resume can trust it: written and fsynced to a temporary file, its size
    and sha256 recorded, the last checkpoint kept as previous(path), then renamed into place. Raises DiskFull
    ("disk full while saving the checkpoint of epoch E to PATH") with both earlier checkpoints intact."""
    full = f"disk full while saving the checkpoint of epoch {epoch} to {path}"
    tmp = _write_tmp(path, lambda f: torch.save(state, f), full)
    try:
        entry = {"epoch": epoch, "size": tmp.stat().st_size, "sha256": _sha256(tmp)}
        kept = [e for e in _read_sums(path) or [] if e["sha256"] != entry["sha256"]][-KEEP_SUMS + 1 :]
        sums = json.dumps({"checkpoints": [*kept, entry]}, indent=1).encode()
        os.replace(_write_tmp(sums_file(path), lambda f: f.write(sums), full), sums_file(path))
        if path.exists():
            _keep_previous(path, full)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Resume(NamedTuple):
    """The checkpoint a run resumes from (None: start afresh) and why each newer one was passed over."""

    state: dict | None
    rejected: list[str]


def load_checkpoint(path: Path) -> Resume:
    """The newest of `path` and previous(path) that checks out: its size and sha256 are among those recorded
    when it was saved (checkpoints saved before kdgrid recorded them are only loaded) and torch.load reads
    it. A truncated or corrupt checkpoint is passed over with the reason, never raised."""
    recorded = _read_sums(path)
    rejected = []
    for candidate in (path, previous(path)):
        if not candidate.exists():
            continue
        why = _mismatch(candidate, recorded)
        if why is None:
            try:
                return Resume(load(candidate), rejected)
            except Exception as err:  # a torn zip, a pickle that is not ours: a bad file, not a bug
                why = f"torch.load failed ({type(err).__name__}: {str(err)[:200]})"
        rejected.append(f"{candidate} {why}")
    return Resume(None, rejected)


def remove_temporary(directory: Path) -> None:
    """The temporary files of writes a kill cut short (called with the run's lock held)."""
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def load(path: Path) -> dict:
    """Checkpoints hold tensors and plain containers only, so they load with weights_only=True."""
    return torch.load(path, map_location="cpu", weights_only=True)


KEEP_SUMS = 3  # checkpoint.pt, checkpoint.prev.pt and the one being saved


def _write_tmp(path: Path, write: Callable[[Any], Any], full: str) -> Path:
    """A temporary file beside `path`, written by `write(f)` and fsynced; removed again when writing fails
    (DiskFull(`full`) when no space was left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if _no_space(err):
            raise DiskFull(full) from err
        raise
    return tmp


def _no_space(err: BaseException | None) -> bool:
    """ENOSPC (or a quota) anywhere in the chain: torch.save reports a failed write as a RuntimeError, and the
    file's own OSError comes with it (as cause or context)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def _keep_previous(path: Path, full: str) -> None:
    """previous(path) becomes the file now at `path`: a hard link (no copy, no space), else a copy."""
    prev = previous(path)
    tmp = prev.with_name(f".{prev.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # a filesystem without hard links
        with open(path, "rb") as src:
            tmp = _write_tmp(prev, lambda f: shutil.copyfileobj(src, f), full)
    os.replace(tmp, prev)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_sums(path: Path) -> list[dict] | None:
    """The recorded checkpoints at `path`, None where none were recorded (or the record is unreadable)."""
    try:
        return list(json.loads(sums_file(path).read_text())["checkpoints"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


def _mismatch(path: Path, recorded: list[dict] | None) -> str | None:
    """Why `path` is not a checkpoint that was saved whole (None: it was, or nothing was recorded)."""
    if recorded is None:
        return None
    size = path.stat().st_size
    if not any(e["size"] == size for e in recorded):
        return f"is truncated or torn: {size} bytes, a size no checkpoint saved there had"
    digest = _sha256(path)
    if not any(e["sha256"] == digest for e in recorded):
        return "is corrupt: its sha256 matches no checkpoint saved there"
    return None


class LockHeld(RuntimeError):
    pass


class RunLock:
    def __init__(self, directory: Path):
        self.path = directory / "lock"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner(self) -> dict | None:
        """Who holds the lock (host, pid, since), None when nobody or the file is unreadable."""
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def held(self) -> bool:
        """A live owner holds this lock (its process runs, or its heartbeat is recent)."""
        return self.path.exists() and not self._stale(self.owner())

    def _stale(self, owner: dict | None) -> bool:
        if owner is None:
            return True
        if owner.get("host") == socket.gethostname():
            try:
                os.kill(int(owner["pid"]), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > STALE_AFTER

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if not self._stale(owner):
                    raise LockHeld(
                        f"{self.path.parent.name} is being trained by {owner.get('host')}:"
                        f"{owner.get('pid')} (lock {self.path})"
                    ) from None
                self.path.unlink(missing_ok=True)  # its owner died: take it over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
            return
        raise LockHeld(f"could not take {self.path}")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        owner = self.owner()
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
