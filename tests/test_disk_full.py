"""Disk full while saving a checkpoint, on a small filesystem of our own (a size-limited tmpfs): the run fails
with that reason, the previous checkpoint stays sound, no temporary file is left, and a rerun once there is
space resumes from it."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import torch

from tests.test_checkpoints import numbers, small_spec, train, uninterrupted  # noqa: F401 (a fixture)
from trainer import tracking, workdir
from trainer.spec import parse_experiment


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs mounted at tmp_path/disk (root only; CI runs as root and must not skip this)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    why = None
    if os.geteuid() != 0:
        why = "mounting a tmpfs needs root"
    else:
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True, text=True
        )
        if out.returncode != 0:
            why = f"mount -t tmpfs failed: {out.stderr.strip()}"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must test a full disk, but {why}")
        pytest.skip(why)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk, leave: int) -> os.PathLike:
    """Fill `disk` up to `leave` free bytes with one file; returns it."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))
    return filler


def test_a_full_disk_fails_the_save_and_keeps_the_previous_checkpoint(small_disk):
    path = small_disk / "run" / "checkpoint.pt"

    def state(epoch: int) -> dict:  # 4 MiB
        return {"epoch": epoch, "model": {"w": torch.full((1 << 20,), float(epoch))}}

    workdir.save_checkpoint(state(1), path, 1)
    kept = path.read_bytes(), workdir.sums_file(path).read_bytes()
    fill(small_disk, leave=path.stat().st_size // 2)
    with pytest.raises(workdir.DiskFull) as err:
        workdir.save_checkpoint(state(2), path, 2)
    assert str(err.value) == f"disk full while saving the checkpoint of epoch 2 to {path}"
    assert (path.read_bytes(), workdir.sums_file(path).read_bytes()) == kept
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt", "checkpoint.sums.json"]
    assert workdir.load_checkpoint(path).state["epoch"] == 1


class _FillAfter:
    """Fills the disk once `epochs` epochs are saved, leaving half a checkpoint free: the next save fails."""

    def __init__(self, disk, epochs: int):
        self.disk, self.epochs, self.filler = disk, epochs, None

    def on_start(self, *args) -> None: ...
    def on_progress(self, *args) -> None: ...
    def on_end(self, *args) -> None: ...

    def on_epoch(self, run_hash: str, epoch: int, metrics: dict) -> None:
        if epoch + 1 == self.epochs:
            size = (self.disk / run_hash / "checkpoint.pt").stat().st_size
            self.filler = fill(self.disk, leave=size // 2)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_whose_disk_fills_fails_with_the_reason_and_resumes_once_there_is_space(
    small_disk,
    tmp_path,
    monkeypatch,
    uninterrupted,  # noqa: F811
):
    monkeypatch.setenv(tracking.SYSTEM_METRICS_INTERVAL, "0")
    spec, uri = small_spec(), f"sqlite:///{tmp_path / 'm.db'}"  # MLflow on another disk
    h = parse_experiment(spec).content_hash()
    ckpt = small_disk / h / "checkpoint.pt"
    full = _FillAfter(small_disk, 1)
    reason = f"DiskFull: disk full while saving the checkpoint of epoch 2 to {ckpt}"
    assert train(spec, small_disk, uri, callbacks=(full,)) == {h: f"failed: {reason}"}

    c = tracking.client(uri)
    run = tracking.runs_by_hash(c, "test", [h])[h]
    assert run.info.status == "FAILED" and run.data.tags[tracking.FAILURE] == reason
    state, rejected = workdir.load_checkpoint(ckpt)
    assert state["epoch"] == 1 and rejected == []
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["checkpoint.pt", "checkpoint.sums.json", "spec.yaml"]

    full.filler.unlink()  # space again: the rerun resumes from epoch 1
    t0 = time.perf_counter()
    assert train(spec, small_disk, uri) == {h: "finished"}
    print(f"disk full: epochs trained again 1, rerun to the end {time.perf_counter() - t0:.1f} s")
    run = tracking.runs_by_hash(c, "test", [h])[h]
    assert run.info.status == "FINISHED" and tracking.FAILURE not in run.data.tags
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val.top1")] == [1, 2, 3]
    history = uninterrupted[0]
    assert numbers(workdir.load(ckpt)["history"]) == numbers(history)
