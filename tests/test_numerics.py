"""NUMERICS_VERSION guards the store: a fixed tiny distillation run (CPU, one thread) must produce the numbers
fingerprinted in tests/data/numerics_fingerprint.json for the version they belong to. When they change and
the version did not, this fails and says to bump it. Regenerate after a bump with

    PYTHONPATH=. python -m tests.test_numerics --write

The sha256 of the exact numbers is compared where the platform (torch, timm, CPU kernels) is the one that
wrote the file; elsewhere floating-point kernels differ in the last bits, so the numbers are compared to a
relative 1e-3, far below what a change of data order, augmentation keys or a loss's arithmetic moves them."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from trainer import models, numerics, progress
from trainer.spec import parse_experiment

DATA = Path(__file__).parent / "data" / "numerics_fingerprint.json"
RTOL = 1e-3
MODEL = {"embed_dim": 16, "num_heads": 2, "patch_size": 7}


def spec(teacher: Path) -> dict:
    """The fixed run: a distilled student (hard KD, the manifold's three terms, drop-path) with mixup,
    cutmix and label smoothing, two epochs of eight steps, every step logged. Never edit it: the fingerprint
    is its numbers."""
    return {
        "name": "numerics fingerprint",
        "scale": "test",
        "seed": 3,
        "student": {"name": "analog_deit_tiny_distilled", "kwargs": MODEL, "drop_path": 0.1},
        "teacher": {"name": "analog_cait_s24", "kwargs": MODEL, "source": "checkpoint", "path": str(teacher)},
        "data": {
            "dataset": "fashion_mnist",
            "train_subset": 256,
            "val_subset": 128,
            "augment": {"crop_padding": 2, "mixup": 0.8, "cutmix": 1.0, "smoothing": 0.1},
        },
        "recipe": {
            "epochs": 2,
            "batch_size": 32,
            "lr": 2e-3,
            "lr_scale_batch": None,
            "warmup_epochs": 1,
            "log_every": 1,
        },
        "distillation": {"kd": "hard", "manifold": {"k": 64, "reduction": "mean"}},
    }


class _Losses:
    """Every step's loss terms (their means so far in the epoch), as the engine reports them."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []

    def on_start(self, *args) -> None: ...
    def on_epoch(self, *args) -> None: ...
    def on_end(self, *args) -> None: ...

    def on_progress(self, run_hash: str, epoch: int, step: int, values: dict) -> None:
        self.steps.append({k: v for k, v in values.items() if k not in ("step_time_s", "images_per_s")})  # timings


def fingerprint(tmp: Path) -> dict:
    """The numbers of the fixed run: every step's loss terms and lr, each epoch's validation loss and top-1,
    and the final weights' sum, sum of squares and sha256 of their bytes."""
    from trainer.run import train_specs

    teacher = tmp / "teacher.pt"
    parsed = parse_experiment(spec(teacher))
    rng = torch.get_rng_state()
    torch.manual_seed(0)
    torch.save(models.create(parsed.teacher.name, **parsed.teacher_kwargs()).state_dict(), teacher)
    torch.set_rng_state(rng)
    losses, threads = _Losses(), torch.get_num_threads()
    cadence = os.environ.get(progress.PROGRESS_ENV)
    os.environ[progress.PROGRESS_ENV] = "0"  # reports every recipe.log_every steps only, however slow the machine
    try:
        results = train_specs(
            [parsed], work=tmp / "runs", tracking_uri=f"sqlite:///{tmp / 'm.db'}", threads=1, device="cpu",
            callbacks=(losses,),
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        if cadence is None:
            del os.environ[progress.PROGRESS_ENV]
        else:
            os.environ[progress.PROGRESS_ENV] = cadence
    h = parsed.content_hash()
    assert results == {h: "finished"}, results
    history = torch.load(tmp / "runs" / h / "checkpoint.pt", weights_only=True)["history"]
    weights = torch.load(tmp / "runs" / h / "final.pt", weights_only=True)["model"]
    raw = hashlib.sha256()
    for k in sorted(weights):
        raw.update(k.encode() + weights[k].contiguous().numpy().tobytes())
    flat = torch.cat([w.double().flatten() for w in weights.values()])
    return {
        "steps": losses.steps,
        "val": [{k: e[k] for k in ("val.loss", "val.top1")} for e in history],
        "weights": {"sum": flat.sum().item(), "sum_sq": flat.square().sum().item(), "sha256": raw.hexdigest()},
    }


def digest(numbers: dict) -> str:
    return hashlib.sha256(json.dumps(numbers, sort_keys=True).encode()).hexdigest()


def here() -> dict[str, str]:
    """What decides the last bits of the numbers besides kdgrid's code."""
    return {
        "torch": torch.__version__,
        "timm": version("timm"),
        "cpu": f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}",
    }


def far_apart(a: dict, b: dict) -> list[str]:
    """Where two fingerprints differ beyond RTOL (accuracies and the weights' bytes are not compared: a
    last-bit difference can flip one prediction or any byte)."""
    pairs = [(f"step {i}: {k}", x[k], y.get(k)) for i, (x, y) in enumerate(zip(a["steps"], b["steps"])) for k in x]
    pairs += [
        (f"epoch {i + 1}: val.loss", x["val.loss"], y["val.loss"]) for i, (x, y) in enumerate(zip(a["val"], b["val"]))
    ]
    pairs += [(f"weights' {k}", a["weights"][k], b["weights"][k]) for k in ("sum", "sum_sq")]
    out = [f"{what}: {x!r} vs {y!r}" for what, x, y in pairs if not _close(x, y)]
    if len(a["steps"]) != len(b["steps"]) or len(a["val"]) != len(b["val"]):
        out.append("a different number of steps or epochs")
    return out


def _close(x, y) -> bool:
    return y is not None and math.isclose(x, y, rel_tol=RTOL, abs_tol=1e-9)


REGENERATE = "PYTHONPATH=. python -m tests.test_numerics --write"
BUMP = (
    "the numbers of the fixed run changed for an unchanged spec: bump trainer.numerics.NUMERICS_VERSION (and say "
    "what changed in its docstring), then regenerate the fingerprint: " + REGENERATE
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_numbers_are_those_of_the_numerics_version(tmp_path, monkeypatch):
    monkeypatch.setenv("KDGRID_SYSTEM_METRICS_INTERVAL", "0")
    stored = json.loads(DATA.read_text())
    numbers = fresh_fingerprint(tmp_path)
    if stored["numerics_version"] != numerics.NUMERICS_VERSION:
        pytest.fail(
            f"NUMERICS_VERSION is {numerics.NUMERICS_VERSION} but {DATA.name} holds version "
            f"{stored['numerics_version']}'s numbers: regenerate it ({REGENERATE})"
        )
    if stored["platform"] == here():
        assert digest(numbers) == stored["sha256"], BUMP
    else:  # other kernels: the last bits may differ, a changed computation moves far more
        assert not far_apart(numbers, stored["numbers"]), BUMP + "\n" + "\n".join(far_apart(numbers, stored["numbers"]))
    assert stored["sha256"] == digest(stored["numbers"]), f"{DATA.name} was edited by hand: regenerate it"


def test_the_cross_platform_comparison_tells_a_changed_computation_from_last_bits():
    stored = json.loads(DATA.read_text())["numbers"]
    assert far_apart(stored, stored) == []

    def scaled(factor: float) -> dict:
        steps = [{k: v * factor for k, v in step.items()} for step in stored["steps"]]
        return {**stored, "steps": steps}

    assert far_apart(scaled(1 + 1e-6), stored) == []  # another CPU's last bits
    assert len(far_apart(scaled(1 + 1e-2), stored)) == sum(len(step) for step in stored["steps"])


def test_a_run_records_its_numerics_version_and_untagged_runs_count_as_version_1():
    assert numerics.version_of({numerics.TAG: str(numerics.NUMERICS_VERSION)}) == numerics.NUMERICS_VERSION
    assert numerics.matches({numerics.TAG: str(numerics.NUMERICS_VERSION)})
    assert numerics.version_of({}) == 1 and numerics.matches({}) == (numerics.NUMERICS_VERSION == 1)
    assert not numerics.matches({numerics.TAG: str(numerics.NUMERICS_VERSION + 1)})
    assert numerics.checkpoint_version({"epoch": 3}) == 1
    assert numerics.checkpoint_version({"numerics": 7}) == 7


def write() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        numbers = fingerprint(Path(tmp))
    record = {"numerics_version": numerics.NUMERICS_VERSION, "platform": here(), "sha256": digest(numbers)}
    DATA.write_text(json.dumps(record | {"numbers": numbers}, indent=1) + "\n")
    print(f"wrote {DATA}: numerics version {numerics.NUMERICS_VERSION}, sha256 {record['sha256'][:12]}")


def fresh_fingerprint(tmp: Path) -> dict:
    """The fingerprint computed in a fresh interpreter, as `--write` computes it: what other tests did to this
    process (its thread pool, caches) must not move the last bits."""
    import subprocess

    from tests.conftest import kdgrid_env

    out = tmp / "fingerprint.json"
    cmd = [sys.executable, "-m", "tests.test_numerics", "--json", str(out)]
    # as `--write` runs: the thread pool torch starts with moves the last bits even at 1 thread (train_specs
    # sets OMP_NUM_THREADS for the processes it starts, and tests that called it leave it in os.environ)
    env = {k: v for k, v in kdgrid_env().items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(out.read_text())


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    elif len(sys.argv) == 3 and sys.argv[1] == "--json":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            Path(sys.argv[2]).write_text(json.dumps(fingerprint(Path(tmp))))
    else:
        sys.exit("usage: python -m tests.test_numerics --write | --json PATH")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_checkpoint_of_another_numerics_version_is_trained_afresh_in_a_new_run(tmp_path, monkeypatch, capfd):
    """A run half-trained by code of another numerics version is not resumed into this code's numbers: its
    checkpoint is passed over and a new MLflow run trains it from the start; the old one is closed."""
    from tests.test_checkpoints import _StopAfter, small_spec, train
    from trainer import tracking
    from trainer.engine.runlog import RESUME_WARNING

    monkeypatch.setenv("KDGRID_SYSTEM_METRICS_INTERVAL", "0")
    spec, work, uri = small_spec(), tmp_path / "runs", f"sqlite:///{tmp_path / 'm.db'}"
    h = parse_experiment(spec).content_hash()
    with pytest.raises(KeyboardInterrupt):
        train(spec, work, uri, callbacks=(_StopAfter(1),))
    c = tracking.client(uri)
    old = tracking.runs_by_hash(c, "test", [h])[h]
    c.update_run(old.info.run_id, "RUNNING")  # as a SIGKILLed process leaves it
    version = numerics.NUMERICS_VERSION
    monkeypatch.setattr(numerics, "NUMERICS_VERSION", version + 1)  # the code now computes other numbers
    capfd.readouterr()
    assert train(spec, work, uri) == {h: "finished"}
    assert f"holds numerics version {version}: starting afresh" in capfd.readouterr().err

    new = tracking.runs_by_hash(c, "test", [h])[h]
    assert new.info.run_id != old.info.run_id and new.info.status == "FINISHED"
    assert new.data.tags[numerics.TAG] == str(version + 1) and "starting afresh" in new.data.tags[RESUME_WARNING]
    assert [m.step for m in c.get_metric_history(new.info.run_id, "val.top1")] == [1, 2, 3]
    old = c.get_run(old.info.run_id)
    assert old.info.status == "KILLED" and old.data.tags[numerics.TAG] == str(version)
