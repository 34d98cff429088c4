"""A member's MLflow run: what it logs when it starts (spec, protocol, numerics version, environment,
datasets), the epochs a kill kept from MLflow, what a resume passed over, its end (final weights, metrics,
predictions) or its failure with the reason (tag `kdgrid.failure`) and traceback (failure/traceback.txt)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from trainer import atomic, numerics, tracking, workdir
from trainer.distributed import DistEnv
from trainer.engine.member import Member

TRACEBACK = "failure/traceback.txt"  # the artifact a failed run's traceback is logged as
RESUME_WARNING = "kdgrid.resume_warning"  # why a resume passed over a checkpoint (corrupt, truncated, ...)
PACKAGES = ("torch", "torchvision", "timm", "mlflow", "pydantic", "ray", "submitit", "kdgrid")


def environment(env: DistEnv) -> dict[str, str]:
    """Where the run trains: python, host, device, threads, package versions and the git commit."""
    out = {
        "python": platform.python_version(),
        "host": platform.node(),
        "device": env.device,
        "threads": str(torch.get_num_threads()),
        "world_size": str(env.world_size),
    }
    if env.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(torch.device(env.device))
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out | _git()


def _git() -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown"}
    return {"git_commit": commit, "git_dirty": str(bool(dirty))}


def log_start(m: Member, env: DistEnv, proto: dict[str, Any], precision: str) -> None:
    """The spec as params, the protocol that runs it (`protocol.*`: the report's banner, with the numerics
    version), what the engine made of it (`effective.*`: lr, world size, precision ...), the environment and
    the numerics version as tags, the spec file."""
    params = m.spec.model_dump(mode="json", exclude={"tags", "name"})
    # what ran (world size, accumulation, images, versions): the report's banner
    params["protocol"] = {**proto, "numerics_version": numerics.NUMERICS_VERSION}
    params["effective"] = {
        "lr": m.lr,
        "world_size": env.world_size,
        "global_batch_size": proto["global_batch"],
        "steps_per_epoch": m.steps,
        "precision": precision,
        "content_hash": m.hash,
    }
    m.run.log_params(params)
    tags = {f"env.{k}": v for k, v in environment(env).items()} | {tracking.LOG: str(m.dir)}
    m.run.set_tags(tags | {numerics.TAG: numerics.NUMERICS_VERSION})
    m.run.log_artifact(m.dir / "spec.yaml")


def log_datasets(m: Member, train_data, val_data) -> None:
    from trainer.dataset_inputs import datasets

    m.run.log_datasets(datasets(m.spec.data, train_data, val_data))


def backfill(m: Member) -> None:
    """Which epochs MLflow holds (`m.logged`: an epoch trained again after a resume from an older checkpoint
    is not logged twice), and the checkpointed epochs it has not seen, logged now (a kill between checkpoint
    and logging)."""
    m.logged = m.run.logged_steps("val.top1")
    for entry in m.history:
        if entry["epoch"] not in m.logged:
            m.run.log_metrics({k: v for k, v in entry.items() if k != "epoch"}, step=entry["epoch"])
            m.logged.add(entry["epoch"])


def warn_resume(m: Member, rejected: list[str]) -> None:
    """Why checkpoints were passed over (corrupt, truncated, another numerics version), and from which epoch
    the run goes on: printed, and kept on its MLflow run as the tag `kdgrid.resume_warning`."""
    where = f"resuming from epoch {m.start_epoch}" if m.start_epoch else "starting afresh"
    text = f"{'; '.join(rejected)}: {where}"
    print(f"warning: run {m.hash[:8]}: {text}", file=sys.stderr, flush=True)
    if m.run is not None:
        m.run.set_tags({RESUME_WARNING: text})


PREDICTIONS = "predictions.json"  # the last epoch's, written beside its checkpoint


def save_predictions(m: Member, name: str, predictions: dict) -> Path:
    """Per-image validation top-1 ({"label": [...], "top1": [...], "cls": [...], ...}) written whole to the run
    directory: what the report's agreement matrix and the noise split compare."""
    path = m.dir / name
    atomic.write_text(path, json.dumps(predictions, separators=(",", ":")))
    return path


def log_predictions(m: Member, name: str, predictions: dict) -> None:
    """The predictions saved, and logged as the artifact predictions/<name>."""
    m.run.log_artifact(save_predictions(m, name, predictions), "predictions")


def fail(m: Member, reason: str, tb: str | None) -> None:
    """The member leaves its cohort; its run ends FAILED with `reason` and the traceback, if any."""
    m.failed = reason
    if m.run is not None:
        if tb:
            _keep_traceback(m, tb)
        m.run.finish("FAILED", reason)


def interrupted(members: list[Member], done: set[str], err: BaseException) -> None:
    """Close the runs an exception cut short: KILLED for an interrupt or exit, FAILED otherwise (with the
    traceback)."""
    reason = f"{type(err).__name__}: {err}"
    killed = isinstance(err, (KeyboardInterrupt, SystemExit))
    for m in members:
        if m.hash in done or m.run is None or m.failed:
            continue
        if killed:
            m.run.finish("KILLED", reason)
        else:
            fail(m, reason, "".join(traceback.format_exception(err)))


def _keep_traceback(m: Member, tb: str) -> None:
    """The traceback as the run's artifact failure/traceback.txt and in its directory's error.txt; a failure
    to keep it (the full disk that failed the run) does not hide the failure itself."""
    try:
        atomic.write_text(m.dir / "error.txt", tb)
    except OSError:
        pass
    try:
        m.run.log_text(tb, TRACEBACK)
    except Exception as err:
        print(f"warning: run {m.hash[:8]}: its traceback could not be logged ({err})", file=sys.stderr)


def finish(m: Member) -> None:
    """Final weights, the run's final metrics (best and last top-1, per head), its predictions, FINISHED."""
    final = {"model": m.core.model.state_dict()}
    if m.ema is not None:
        final["ema"] = m.ema.module.state_dict()
    workdir.save_atomic(final, m.dir / "final.pt")
    if m.epochs not in m.run.logged_steps("last_top1"):  # a kill after them, before FINISHED: not logged twice
        m.run.log_metrics(_finals(m), step=m.epochs)
    saved = m.dir / PREDICTIONS  # saved before the last checkpoint (loop.end_epoch): there after a kill too
    if saved.exists():
        m.run.log_artifact(saved, "predictions")
    m.run.log_artifact(m.dir / "final.pt", "checkpoints")
    m.run.log_artifact(m.dir / "checkpoint.pt", "checkpoints")
    atomic.write_text(m.dir / "history.json", json.dumps(m.history, indent=1))
    m.run.finish("FINISHED")
    workdir.previous(m.dir / "checkpoint.pt").unlink(missing_ok=True)  # a finished run is never resumed


def _finals(m: Member) -> dict[str, float]:
    last = m.history[-1]["val.top1"] if m.history else float("nan")
    finals = {"best_top1": m.best_top1, "last_top1": last}
    for head in ("cls", "dist"):  # a distilled DeiT's heads alone (DeiT's Table 5)
        values = [e[f"val.{head}_top1"] for e in m.history if f"val.{head}_top1" in e]
        if values:
            finals.update({f"last_{head}_top1": values[-1], f"best_{head}_top1": max(values)})
    return finals
