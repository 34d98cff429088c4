"""A run's directory: its checkpoint (for exact resume), final weights, and a lock held while it trains.

Layout: WORKDIR/<content hash>/{spec.yaml, checkpoint.pt, final.pt, lock}. The lock makes two launches of
the same grid (or two `kdgrid train` of one spec) never train the same run at once: it is created
atomically (O_EXCL), refreshed by a heartbeat thread, and taken over only when its owner is gone (a dead
pid on this host, or no heartbeat for `STALE_AFTER` seconds from another host).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import torch

STALE_AFTER = 180.0
HEARTBEAT = 20.0


def run_dir(workdir: str | Path, run_hash: str) -> Path:
    return Path(workdir).expanduser().resolve() / run_hash


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file then rename: a kill mid-write never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict:
    """Checkpoints hold tensors and plain containers only, so they load with weights_only=True."""
    return torch.load(path, map_location="cpu", weights_only=True)


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
