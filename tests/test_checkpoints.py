"""Checkpoints checked at resume: a truncated or corrupt checkpoint is passed over for the previous one, with a
warning, and the run still ends with the numbers of an uninterrupted one, each epoch logged once."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from tests import smoke_specs
from trainer import numerics, tracking, workdir
from trainer.engine.runlog import RESUME_WARNING
from trainer.run import train_specs
from trainer.spec import parse_experiment


def _state(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((256,), float(epoch))}}


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path) -> None:
    """Flip 16 bytes in the middle: the size stays, the zip and its tensors may still load."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    path.write_bytes(bytes(data))


def test_save_keeps_the_previous_checkpoint_and_records_size_and_hash(tmp_path):
    path = tmp_path / "checkpoint.pt"
    for epoch in (1, 2, 3):
        workdir.save_checkpoint(_state(epoch), path, epoch)
    assert workdir.load(path)["epoch"] == 3 and workdir.load(workdir.previous(path))["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt", "checkpoint.sums.json"]
    state, rejected = workdir.load_checkpoint(path)
    assert state["epoch"] == 3 and rejected == []


@pytest.mark.parametrize("damage, why", [(_truncate, "is truncated or torn"), (_flip, "is corrupt")])
def test_a_damaged_checkpoint_is_passed_over_for_the_previous_one(tmp_path, damage, why):
    path = tmp_path / "checkpoint.pt"
    for epoch in (1, 2):
        workdir.save_checkpoint(_state(epoch), path, epoch)
    damage(path)
    state, rejected = workdir.load_checkpoint(path)
    assert state["epoch"] == 1
    assert len(rejected) == 1 and rejected[0].startswith(f"{path} {why}")
    damage(workdir.previous(path))
    state, rejected = workdir.load_checkpoint(path)
    assert state is None and len(rejected) == 2  # nothing sound left: start afresh, never crash


def test_a_checkpoint_saved_before_sums_were_recorded_is_loaded_if_torch_can(tmp_path):
    path = tmp_path / "checkpoint.pt"
    workdir.save_atomic(_state(4), path)
    state, rejected = workdir.load_checkpoint(path)
    assert state["epoch"] == 4 and torch.equal(state["model"]["w"], _state(4)["model"]["w"]) and rejected == []
    _truncate(path)
    state, rejected = workdir.load_checkpoint(path)
    assert state is None and "torch.load failed" in rejected[0]


def test_a_kill_between_recording_and_renaming_resumes_from_the_last_checkpoint(tmp_path):
    """The sums are written before the new checkpoint is renamed into place: a kill in between leaves a
    record of a file that never arrived and a temporary file, which cost nothing."""
    path = tmp_path / "checkpoint.pt"
    for epoch in (1, 2, 3):
        workdir.save_checkpoint(_state(epoch), path, epoch)
    other = tmp_path / "other" / "checkpoint.pt"
    workdir.save_checkpoint(_state(4), other, 4)
    sums = json.loads(workdir.sums_file(path).read_text())
    sums["checkpoints"] = sums["checkpoints"][-2:] + json.loads(workdir.sums_file(other).read_text())["checkpoints"]
    workdir.sums_file(path).write_text(json.dumps(sums))
    (tmp_path / f".checkpoint.pt.{os.getpid()}.tmp").write_bytes(other.read_bytes())  # the write cut short
    state, rejected = workdir.load_checkpoint(path)
    assert state["epoch"] == 3 and rejected == []
    workdir.remove_temporary(tmp_path)
    assert list(tmp_path.glob(".*")) == []


# --- a real run, interrupted, its checkpoint damaged, resumed --------------------------------------------


class _StopAfter:
    """A callback that interrupts training (as Ctrl-C would) once `epoch` epochs are checkpointed and logged."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_start(self, *args) -> None: ...
    def on_progress(self, *args) -> None: ...
    def on_end(self, *args) -> None: ...

    def on_epoch(self, run_hash: str, epoch: int, metrics: dict) -> None:
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


def small_spec() -> dict:
    spec = smoke_specs.teacher(epochs=3, train=512)
    spec["data"]["val_subset"] = 256
    return spec


def numbers(history: list[dict]) -> list[dict]:
    """What was learned, not how long it took."""
    return [{k: v for k, v in e.items() if not (k.endswith("time_s") or k.startswith("cost."))} for e in history]


def train(spec: dict, work, uri: str, callbacks=()) -> dict[str, str]:
    threads = torch.get_num_threads()
    try:
        return train_specs([parse_experiment(spec)], work=work, tracking_uri=uri, threads=1, callbacks=callbacks)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The spec trained straight through: its history and final weights."""
    base = tmp_path_factory.mktemp("uninterrupted")
    spec = small_spec()
    h = parse_experiment(spec).content_hash()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(tracking.SYSTEM_METRICS_INTERVAL, "0")
        t0 = time.perf_counter()
        assert train(spec, base / "runs", f"sqlite:///{base / 'm.db'}") == {h: "finished"}
    print(f"uninterrupted: 3 epochs in {time.perf_counter() - t0:.1f} s")
    run = base / "runs" / h
    predictions = json.loads((run / "predictions.json").read_text())
    return workdir.load(run / "checkpoint.pt")["history"], workdir.load(run / "final.pt"), predictions


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("damage", ["truncate", "flip", "both"])
def test_a_damaged_checkpoint_resumes_from_the_epoch_before_with_the_same_numbers(
    tmp_path, monkeypatch, capfd, uninterrupted, damage
):
    monkeypatch.setenv(tracking.SYSTEM_METRICS_INTERVAL, "0")
    spec, work, uri = small_spec(), tmp_path / "runs", f"sqlite:///{tmp_path / 'm.db'}"
    h = parse_experiment(spec).content_hash()
    with pytest.raises(KeyboardInterrupt):
        train(spec, work, uri, callbacks=(_StopAfter(2),))
    ckpt = work / h / "checkpoint.pt"
    assert workdir.load(ckpt)["epoch"] == 2
    if damage == "truncate":
        _truncate(ckpt)
    else:
        _flip(ckpt)
    if damage == "both":
        _truncate(workdir.previous(ckpt))
    capfd.readouterr()

    t0 = time.perf_counter()
    assert train(spec, work, uri) == {h: "finished"}
    recovery = time.perf_counter() - t0
    resumed_from = 0 if damage == "both" else 1
    where = f"resuming from epoch {resumed_from}" if resumed_from else "starting afresh"
    err = capfd.readouterr().err
    assert f"warning: run {h[:8]}: {ckpt} is " in err and where in err, err
    print(f"{damage}: epochs trained again {2 - resumed_from}, rerun to the end {recovery:.1f} s")

    c = tracking.client(uri)
    run = tracking.runs_by_hash(c, "test", [h])[h]
    assert run.info.status == "FINISHED"
    assert where in run.data.tags[RESUME_WARNING]
    assert run.data.tags[numerics.TAG] == run.data.params["protocol.numerics_version"] == str(numerics.NUMERICS_VERSION)
    for key in run.data.metrics:  # MLflow holds every epoch's value once
        if key.startswith(("train.", "val.", "throughput.")):
            steps = [m.step for m in c.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == [1, 2, 3], (key, steps)

    history, final, _ = uninterrupted
    assert numbers(workdir.load(ckpt)["history"]) == numbers(history)
    weights = workdir.load(work / h / "final.pt")["model"]
    assert weights.keys() == final["model"].keys()
    assert all(torch.equal(weights[k], final["model"][k]) for k in weights)
    assert not workdir.previous(ckpt).exists()  # a finished run keeps one checkpoint


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_kill_after_the_last_checkpoint_still_logs_the_predictions(tmp_path, monkeypatch, uninterrupted):
    """Killed between the last epoch's checkpoint and the run's end, the rerun trains nothing and finishes the
    run with that epoch's per-image predictions (the agreement matrix and the noise split read them)."""
    monkeypatch.setenv(tracking.SYSTEM_METRICS_INTERVAL, "0")
    spec, work, uri = small_spec(), tmp_path / "runs", f"sqlite:///{tmp_path / 'm.db'}"
    h = parse_experiment(spec).content_hash()
    with pytest.raises(KeyboardInterrupt):
        train(spec, work, uri, callbacks=(_StopAfter(3),))
    assert workdir.load(work / h / "checkpoint.pt")["epoch"] == 3
    assert train(spec, work, uri) == {h: "finished"}

    c = tracking.client(uri)
    run = tracking.runs_by_hash(c, "test", [h])[h]
    assert run.info.status == "FINISHED"
    logged = c.download_artifacts(run.info.run_id, "predictions/predictions.json", str(tmp_path))
    predictions = json.loads(open(logged).read())
    assert len(predictions["label"]) == 256 and predictions == uninterrupted[2]
