"""The training engine: a cohort of runs trained in lockstep against one frozen teacher.

Runs that share teacher, data, data order and batch size (equal `cohort_key`) train in one process:
each batch is augmented once and goes through the teacher once (under inference mode), then every
student takes its own step with its own loss, optimizer, scheduler, EMA, RNG streams, checkpoint and
MLflow run. A run alone is a cohort of one, so a run's numbers do not depend on its company:

- data order and augmentation are functions of (seed, epoch) only (`data.epoch_generator`);
- each member swaps its own global RNG state in around its step (model init, drop-path) and owns the
  generator that samples L_rs's patches;
- members join at their own checkpointed epoch and leave after their own last epoch.

Nothing here syncs the host inside a step except at logging intervals (`recipe.log_every`), where loss
sums are read, checked for NaN/inf, and reported.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from trainer import data as data_mod
from trainer import dataset_inputs, methods, models, tracking, workdir
from trainer.distributed import DistEnv, all_sum, broadcast_flags, no_sync
from trainer.objective import objective
from trainer.protocol import run_protocol, teacher_protocol
from trainer.spec import ExperimentSpec, accumulation_steps
from trainer.taps import Student, forward_taps
from trainer.throughput import EpochMeter


class Callback(Protocol):
    """Progress hooks; launchers and the CLI plug their displays in here."""

    def on_start(self, run_hash: str, spec: ExperimentSpec, start_epoch: int, steps: int) -> None: ...
    def on_progress(self, run_hash: str, epoch: int, step: int, metrics: dict[str, float]) -> None: ...
    def on_epoch(self, run_hash: str, epoch: int, metrics: dict[str, float]) -> None: ...
    def on_end(self, run_hash: str, status: str, reason: str | None) -> None: ...


class NonFiniteLoss(RuntimeError):
    pass


def cohort_key(spec: ExperimentSpec) -> str:
    """Runs with equal keys see identical batches and can share one teacher forward per batch."""
    payload = {
        "teacher": spec.teacher.model_dump(mode="json") if spec.teacher else None,
        "data": spec.data.model_dump(mode="json", exclude={"num_workers"}),
        "seed": spec.seed,
        "batch_size": spec.recipe.batch_size,
        "global_batch": spec.recipe.global_batch,
        "amp": spec.recipe.amp,
    }
    import hashlib

    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def environment(env: DistEnv) -> dict[str, str]:
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    out = {
        "python": platform.python_version(),
        "host": platform.node(),
        "device": env.device,
        "threads": str(torch.get_num_threads()),
        "world_size": str(env.world_size),
    }
    if env.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(torch.device(env.device))
    for pkg in ("torch", "torchvision", "timm", "mlflow", "pydantic", "ray", "submitit", "kdgrid"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        root = Path(__file__).resolve().parents[1]
        out["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "unknown"
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        out["git_dirty"] = str(bool(dirty))
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = "unknown"
    return out


# ---------------------------------------------------------------------------------------------------
# One member of a cohort.
# ---------------------------------------------------------------------------------------------------
def _rng_seed(seed: int, salt: int) -> int:
    return (seed * 7919 + salt) % (2**63 - 1)


@dataclass
class Streams:
    """A run's own randomness: its global CPU (and CUDA) RNG states, swapped in around its steps (init,
    drop-path, dropout), and the generator its methods draw from (L_rs's patches, ViTKD's masks)."""

    rng: torch.Tensor
    cuda_rng: torch.Tensor | None
    generator: torch.Generator

    @contextmanager
    def scope(self, device: str, key: int | None = None):
        """Run with these global RNG streams; with `key` (a micro-batch's seed) they and the methods'
        generator start from it, so what a micro-batch draws is the same whichever rank or accumulation
        step trains it."""
        outer = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state(device) if device.startswith("cuda") else None
        torch.set_rng_state(self.rng)
        if outer_cuda is not None and self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, device)
        if key is not None:
            torch.default_generator.manual_seed(key)
            if outer_cuda is not None:
                torch.cuda.manual_seed(key)
            self.generator.manual_seed(_rng_seed(key, 2))
        try:
            yield
        finally:
            self.rng = torch.get_rng_state()
            if outer_cuda is not None:
                self.cuda_rng = torch.cuda.get_rng_state(device)
                torch.cuda.set_rng_state(outer_cuda, device)
            torch.set_rng_state(outer)

    def state(self) -> dict:
        return {"rng": self.rng, "cuda_rng": self.cuda_rng, "rs_gen": self.generator.get_state()}

    def restore(self, ckpt: dict) -> None:
        self.rng = ckpt["rng"]
        self.cuda_rng = ckpt.get("cuda_rng")
        self.generator.set_state(ckpt["rs_gen"])


@dataclass
class Member:
    """One run of a cohort: its spec and identity, its student and optimisation state, its randomness
    (`streams`), the teacher features its methods read, its results so far and its MLflow run."""

    spec: ExperimentSpec
    hash: str
    dir: Path
    student: nn.Module  # the Student wrapper (DDP-wrapped when distributed)
    core: Student  # the unwrapped wrapper, for state dicts
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    ema: Any | None
    streams: Streams
    steps: int
    lr: float
    t_taps: tuple = ()  # the teacher features its methods read (trainer.methods taps)
    start_epoch: int = 0
    best_top1: float = -1.0
    history: list = field(default_factory=list)
    run: tracking.RunLog | None = None
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    count: int = 0
    failed: str | None = None
    predictions: dict | None = None  # the last epoch's per-image validation predictions

    @property
    def epochs(self) -> int:
        return self.spec.recipe.epochs

    def scope(self, device: str, key: int | None = None):
        """Run with this member's own global RNG streams (drop-path, dropout, init)."""
        return self.streams.scope(device, key)

    def state(self, epoch_done: int) -> dict:
        return {
            "format": 1,
            "hash": self.hash,
            "epoch": epoch_done,
            "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            **self.streams.state(),
            "best_top1": self.best_top1,
            "history": self.history,
            "run_id": self.run.run_id if self.run else None,
        }

    def restore(self, ckpt: dict) -> None:
        self.core.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.module.load_state_dict(ckpt["ema"])
        self.streams.restore(ckpt)
        self.start_epoch = int(ckpt["epoch"])
        self.best_top1 = float(ckpt["best_top1"])
        self.history = list(ckpt["history"])


def effective_lr(spec: ExperimentSpec, world_size: int) -> float:
    """DeiT's linear scaling by the global batch: lr * global_batch / 512 (global: batch_size x world_size
    unless the recipe states it; the same on any split of it over devices and accumulation steps)."""
    r = spec.recipe
    if r.lr_scale_batch is None:
        return r.lr
    return r.lr * r.global_batch_at(world_size) / r.lr_scale_batch


def build_member(spec: ExperimentSpec, env: DistEnv, wd: Path, steps: int) -> Member:
    from timm.optim import param_groups_weight_decay
    from timm.scheduler import CosineLRScheduler

    run_hash = spec.content_hash()
    core, rng = build_student(spec)
    model = core.model
    device = torch.device(env.device)
    core.to(device)
    student: nn.Module = core
    if env.world_size > 1:
        student = nn.parallel.DistributedDataParallel(core, device_ids=[device] if device.type == "cuda" else None)
    if spec.recipe.compile:
        student = torch.compile(student)
    r = spec.recipe
    lr = effective_lr(spec, env.world_size)
    no_decay = {f"model.{n}" for n in getattr(model, "no_weight_decay", lambda: set())()} | core.no_weight_decay()
    groups = param_groups_weight_decay(core, r.weight_decay, no_weight_decay_list=no_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, fused=device.type == "cuda")
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=r.epochs * steps,
        lr_min=r.min_lr,
        warmup_t=int(r.warmup_epochs * steps),
        warmup_lr_init=r.warmup_lr,
        t_in_epochs=False,
    )
    scaler = (
        torch.amp.GradScaler("cuda") if (device.type == "cuda" and r.amp and amp_dtype(spec) == torch.float16) else None
    )
    ema = None
    if r.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=r.ema_decay)
    streams = Streams(
        rng=rng, cuda_rng=None, generator=torch.Generator(device=device).manual_seed(_rng_seed(spec.seed, 2))
    )
    if device.type == "cuda":
        streams.cuda_rng = torch.Generator(device=device).manual_seed(_rng_seed(spec.seed, 3)).get_state()
    d = spec.distillation
    t_taps = tuple(dict.fromkeys(t for meth in methods.active(d) for t in meth.teacher_taps(meth.settings(d))))
    return Member(
        spec=spec,
        hash=run_hash,
        dir=workdir.run_dir(wd, run_hash),
        student=student,
        core=core,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        ema=ema,
        streams=streams,
        steps=steps,
        lr=lr,
        t_taps=t_taps,
    )


def build_student(spec: ExperimentSpec) -> tuple[Student, torch.Tensor]:
    """The student model inside its Student wrapper (taps and the methods' trainable modules), initialised
    from this run's own RNG stream; returns it with that stream's state after init."""
    rng_owner = torch.Generator().manual_seed(_rng_seed(spec.seed, 1))
    outer = torch.get_rng_state()
    torch.set_rng_state(rng_owner.get_state())  # model init draws from this run's own stream
    try:
        model = models.create(spec.student.name, drop_path_rate=spec.student.drop_path, **spec.model_kwargs())
        d = spec.distillation
        if hasattr(model, "set_distilled_training"):
            model.set_distilled_training(any(m.uses_dist_head for m in methods.active(d)))
        info_s = models.model_info(spec.student.name, **spec.model_kwargs())
        info_t = models.model_info(spec.teacher.name, **spec.teacher_kwargs()) if spec.teacher else None
        core = Student(model, d, info_s, info_t)
        return core, torch.get_rng_state()
    finally:
        torch.set_rng_state(outer)


def amp_dtype(spec: ExperimentSpec) -> torch.dtype:
    return torch.bfloat16  # bf16 needs no loss scaling; losses run in float32 regardless


# ---------------------------------------------------------------------------------------------------
# Teacher
# ---------------------------------------------------------------------------------------------------
def load_teacher(spec: ExperimentSpec, wd: Path, tracking_uri: str | None, device: str) -> nn.Module:
    """The frozen teacher, with `kdgrid_weights`: where its weights came from (source, tag, file sha256)."""
    from trainer.protocol import sha256_file

    t = spec.teacher
    assert t is not None
    if t.source == "hub":
        import timm

        model = timm.create_model(t.name, pretrained=True, **spec.teacher_kwargs())
        weights = {"source": "hub", "weights": t.name, "sha256": _hub_file_sha256(model) or "unknown"}
    else:
        if t.source == "checkpoint":
            path = Path(t.path).expanduser()
        else:
            path = workdir.run_dir(wd, t.run) / "final.pt"
            if not path.exists():
                c = tracking.client(tracking_uri)
                run = tracking.runs_by_hash(c, spec.scale, [t.run]).get(t.run)
                if run is None or run.info.status != "FINISHED":
                    raise FileNotFoundError(
                        f"teacher run {t.run} ({t.name}) has not finished: train it first "
                        f"(`kdgrid reproduce` trains teachers before the students that need them)"
                    )
                path = tracking.fetch_artifact(c, run.info.run_id, "checkpoints/final.pt", path.parent)
        ckpt = workdir.load(path)
        state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
        model = models.create(t.name, **spec.teacher_kwargs())
        model.load_state_dict(state)
        weights = {
            "source": t.source,
            "weights": t.path if t.source == "checkpoint" else f"run {t.run}",
            "sha256": sha256_file(path),
        }
    model.to(device).eval().requires_grad_(False)
    model.kdgrid_weights = weights
    return model


def _hub_file_sha256(model: nn.Module) -> str | None:
    """sha256 of the weights file timm read from the Hugging Face cache, where it can be found."""
    from trainer.protocol import sha256_file

    cfg = getattr(model, "pretrained_cfg", None) or {}
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
            if name:
                path = try_to_load_from_cache(repo, name)
                if isinstance(path, str):
                    return sha256_file(path)
    except Exception:
        return None
    return None


def teacher_val_data(teacher: nn.Module, spec: ExperimentSpec, val_data):
    """(validation source, what transform) for the teacher's own accuracy: at an image folder, the teacher's
    eval transform from timm's pretrained_cfg (crop_pct, interpolation, mean/std); on the in-memory CPU
    datasets the student's (the analogs have no pretrained config)."""
    if spec.data.dataset != "imagenet":
        return val_data, "the student's"
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=teacher)
    cfg["input_size"] = (spec.data.in_chans, spec.data.img_size, spec.data.img_size)
    tf = create_transform(**cfg, is_training=False)
    how = (
        f"crop_pct={cfg.get('crop_pct')} {cfg.get('interpolation')} mean={tuple(round(v, 4) for v in cfg['mean'])} "
        f"std={tuple(round(v, 4) for v in cfg['std'])}"
    )
    return data_mod.with_transform(val_data, tf), how


def head_logits(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"top1": the model's output}, and for a distilled DeiT (eval mode: the average of its two heads, as
    DeiT infers) its class head ("cls") and distillation head ("dist") on their own."""
    if hasattr(model, "head_dist"):
        f = model.forward_features(x)
        cls, dist = model.head(f[:, 0]), model.head_dist(f[:, 1])
        return {"top1": (cls + dist) / 2, "cls": cls, "dist": dist}
    return {"top1": model(x)}


@torch.inference_mode()
def evaluate(model: nn.Module, val, device: str, autocast, predictions: dict | None = None) -> dict[str, float]:
    """top-1 / top-5 / loss over the validation set (summed across ranks); a distilled DeiT's heads also
    alone (`cls_top1`, `dist_top1`). `predictions`, when given, receives this rank's per-image top-1 of
    each head and the labels, in the validation set's order."""
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss_sum, n
    heads: dict[str, torch.Tensor] = {}
    preds: dict[str, list] = {}
    for x, y in val.epoch(0, 0):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            outs = head_logits(model, x)
        out = outs["top1"].float()
        top5 = out.topk(min(5, out.shape[1]), dim=1).indices
        stats[0] += (top5[:, 0] == y).sum()
        stats[1] += (top5 == y[:, None]).any(dim=1).sum()
        stats[2] += torch.nn.functional.cross_entropy(out, y, reduction="sum")
        stats[3] += y.numel()
        for name, o in outs.items():
            top1 = o.float().argmax(dim=1)
            if name != "top1":
                heads[name] = heads.get(name, torch.zeros((), dtype=torch.float64, device=device)) + (top1 == y).sum()
            if predictions is not None:
                preds.setdefault(name, []).append(top1.cpu())
        if predictions is not None:
            preds.setdefault("label", []).append(y.cpu())
    all_sum(stats)
    for v in heads.values():
        all_sum(v)
    c1, c5, loss, n = stats.tolist()
    if predictions is not None:
        predictions.update({k: torch.cat(v).tolist() for k, v in preds.items()})
    return {
        "top1": 100.0 * c1 / n,
        "top5": 100.0 * c5 / n,
        "loss": loss / n,
        **{f"{k}_top1": 100.0 * v.item() / n for k, v in heads.items()},
    }


# ---------------------------------------------------------------------------------------------------
# The cohort loop
# ---------------------------------------------------------------------------------------------------
def train(
    specs: list[ExperimentSpec],
    *,
    env: DistEnv | None = None,
    work: str | Path = "kdgrid_runs",
    tracking_uri: str | None = None,
    callbacks: tuple[Callback, ...] = (),
    force: bool = False,
) -> dict[str, str]:
    """Train `specs` (one cohort) to completion. Returns {hash: finished|skipped|locked|failed: reason}."""
    env = env or DistEnv(device="cuda" if torch.cuda.is_available() else "cpu")
    cpu0 = time.process_time()
    keys = {cohort_key(s) for s in specs}
    if len(keys) != 1:
        raise ValueError("a cohort's runs must share teacher, data, seed and batch size (cohort_key)")
    wd = Path(work).expanduser().resolve()
    first = specs[0]
    device = env.device
    use_amp = first.recipe.amp and device.startswith("cuda")
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype(first))) if use_amp else nullcontext
    client = tracking.client(tracking_uri) if env.main else None

    results: dict[str, str] = {}
    todo, locks = _claim(specs, env, client, wd, force, results)
    if not todo:
        return results

    accumulation = accumulation_steps(first.recipe, env.world_size)  # ValueError: the protocol cannot be met
    train_data, val_data = data_mod.build(first.data, first.recipe.batch_size, env.rank, env.world_size, accumulation)
    steps = len(train_data) // accumulation  # optimizer steps per epoch
    if steps == 0:
        raise ValueError(
            f"the training set has fewer images than one global batch of {first.recipe.global_batch_at(env.world_size)}"
        )
    proto = dict(
        world_size=env.world_size,
        accumulation=accumulation,
        precision="bf16 autocast" if use_amp else "fp32",
        train_images=dataset_inputs.count(train_data),
        val_images=dataset_inputs.count(val_data),
    )
    members = [_open_member(s, env, wd, steps, client, force, train_data, val_data, callbacks, proto) for s in todo]
    teacher = load_teacher(first, wd, tracking_uri, device) if first.teacher is not None else None
    t_blocks = tuple(
        sorted({b for m in members for b in m.t_taps}, key=lambda t: (isinstance(t, str), str(t).zfill(9)))
    )
    if teacher is not None:
        _evaluate_teacher(teacher, first, members, val_data, env, autocast)

    # Cost accounting: this process's CPU seconds, split evenly among the runs that shared them.
    setup_share = (time.process_time() - cpu0) / len(members)
    if env.main:
        for m in members:
            m.run.log_metrics({"cost.setup_cpu_s": setup_share}, step=m.start_epoch)
    try:
        _run_epochs(
            members,
            train_data,
            val_data,
            teacher,
            t_blocks,
            data_mod.mixup_fn(first.data),
            env,
            autocast,
            callbacks,
            accumulation,
        )
        for m in members:
            if m.failed:
                results[m.hash] = f"failed: {m.failed}"
                continue
            if env.main:
                _finish(m)
            results[m.hash] = "finished"
            for cb in callbacks:
                cb.on_end(m.hash, "finished", None)
    except BaseException as err:  # KeyboardInterrupt, SIGTERM from a scheduler, ...
        for m in members:
            if m.hash not in results and env.main and m.run is not None:
                reason = f"{type(err).__name__}: {err}"
                m.run.finish("KILLED" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "FAILED", reason)
        raise
    finally:
        for m in members:
            if m.run is not None:
                m.run.stop_system_metrics()
        for lock in locks.values():
            lock.release()
    for m in members:
        if m.failed:
            for cb in callbacks:
                cb.on_end(m.hash, "failed", m.failed)
    return results


def _claim(specs, env: DistEnv, client, wd: Path, force: bool, results: dict[str, str]):
    """Which runs to train: not finished in MLflow, not locked by another process (rank 0 decides).
    Returns (specs to train, the locks taken); the others' outcomes go into `results`."""
    todo, locks = [], {}
    for s in dict((s.content_hash(), s) for s in specs).values():
        h = s.content_hash()
        ok = True
        if env.main:
            run = tracking.runs_by_hash(client, s.scale, [h]).get(h)
            if run is not None and run.info.status == "FINISHED" and not force:
                results[h], ok = "skipped: finished in MLflow", False
            else:
                lock = workdir.RunLock(workdir.run_dir(wd, h))
                try:
                    lock.acquire()
                    locks[h] = lock
                except workdir.LockHeld as err:
                    results[h], ok = f"locked: {err}", False
        todo.append((s, ok))
    flags = broadcast_flags([ok for _, ok in todo], env.device)
    return [s for (s, _), ok in zip(todo, flags) if ok], locks


def _open_member(
    s: ExperimentSpec,
    env: DistEnv,
    wd: Path,
    steps: int,
    client,
    force: bool,
    train_data,
    val_data,
    callbacks,
    proto: dict[str, Any],
) -> Member:
    """A member built, resumed from its checkpoint when there is one, and its MLflow run opened."""
    m = build_member(s, env, wd, steps)
    ckpt_path = m.dir / "checkpoint.pt"
    run_id = None
    if ckpt_path.exists() and not force:
        ckpt = workdir.load(ckpt_path)
        m.restore(ckpt)
        run_id = ckpt.get("run_id")
    if env.main:
        m.dir.mkdir(parents=True, exist_ok=True)
        (m.dir / "spec.yaml").write_text(s.to_yaml())
        m.run = tracking.RunLog.open(client, s, m.hash, run_id, new=force)
        _log_start(m, env, run_protocol(s, **proto))
        _log_datasets(m, train_data, val_data)
        m.run.start_system_metrics(torch.device(env.device).index or 0 if env.device.startswith("cuda") else None)
        _backfill(m)
    for cb in callbacks:
        cb.on_start(m.hash, s, m.start_epoch, steps)
    return m


def _evaluate_teacher(
    teacher: nn.Module, spec: ExperimentSpec, members: list[Member], val_data, env: DistEnv, autocast
) -> None:
    """The frozen teacher's accuracy (with its own eval transform), and its per-image predictions, on the runs
    that start now."""
    starting = [m for m in members if m.start_epoch == 0]
    if not starting:
        return
    predictions: dict | None = {} if env.world_size == 1 else None
    t_val, how = teacher_val_data(teacher, spec, val_data)
    t_eval = evaluate(teacher, t_val, env.device, autocast, predictions)
    if not env.main:
        return
    for m in starting:
        m.run.log_metrics({"teacher.top1": t_eval["top1"], "teacher.top5": t_eval["top5"]}, step=0)
        m.run.log_params({"protocol": teacher_protocol({**teacher.kdgrid_weights, "eval_transform": how})})
        if predictions:
            log_predictions(m, "teacher.json", predictions)


def _run_epochs(
    members: list[Member],
    train_data,
    val_data,
    teacher,
    t_blocks,
    mixup,
    env: DistEnv,
    autocast,
    callbacks,
    accumulation: int = 1,
) -> None:
    """Every member from its own start epoch to its own last one; a failed member leaves the cohort."""
    for epoch in range(min(m.start_epoch for m in members), max(m.epochs for m in members)):
        active = [m for m in members if m.start_epoch <= epoch < m.epochs and not m.failed]
        if not active:
            continue
        cpu_epoch = time.process_time()
        meter = EpochMeter(env.device, env.world_size)
        _train_epoch(active, epoch, train_data, teacher, t_blocks, mixup, env, autocast, callbacks, meter, accumulation)
        meter.stop()
        share = (time.process_time() - cpu_epoch) / len(active)
        for m in active:
            if m.failed:
                continue
            metrics = _end_epoch(m, epoch, val_data, env, autocast, share)
            if env.main:  # measurements of this process, not results: logged, not checkpointed
                m.run.log_metrics(meter.metrics(m.hash, len(active)), step=epoch + 1)
            for cb in callbacks:
                cb.on_epoch(m.hash, epoch, metrics)


def _log_start(m: Member, env: DistEnv, proto: dict[str, Any]) -> None:
    s = m.spec
    params = s.model_dump(mode="json", exclude={"tags", "name"})
    params["protocol"] = proto  # what ran (world size, accumulation, images, versions): the report's banner
    params["effective"] = {
        "lr": m.lr,
        "world_size": env.world_size,
        "global_batch_size": proto["global_batch"],
        "steps_per_epoch": m.steps,
        "content_hash": m.hash,
    }
    m.run.log_params(params)
    m.run.set_tags({f"env.{k}": v for k, v in environment(env).items()} | {tracking.LOG: str(m.dir)})
    m.run.log_artifact(m.dir / "spec.yaml")


def _log_datasets(m: Member, train_data, val_data) -> None:
    from trainer.dataset_inputs import datasets

    m.run.log_datasets(datasets(m.spec.data, train_data, val_data))


def _backfill(m: Member) -> None:
    """Log the checkpointed epochs MLflow has not seen (a kill between checkpoint and logging)."""
    if not m.history:
        return
    logged = {x.step for x in tracking.retry(m.run.c.get_metric_history, m.run.run_id, "val.top1")}
    for entry in m.history:
        if entry["epoch"] not in logged:
            m.run.log_metrics({k: v for k, v in entry.items() if k != "epoch"}, step=entry["epoch"])


def _train_epoch(
    active: list[Member],
    epoch: int,
    train_data,
    teacher,
    t_blocks,
    mixup,
    env: DistEnv,
    autocast,
    callbacks,
    meter: EpochMeter | None = None,
    accumulation: int = 1,
) -> None:
    """One epoch in micro-batches: this rank's i-th is global micro-batch j = i x world + rank, accumulation
    step i mod A of optimizer step i // A; everything random in it is keyed to (seed, epoch, j)."""
    import numpy as np

    device = env.device
    seed = active[0].spec.seed
    for m in active:
        m.student.train()
        m.sums, m.count = {}, 0
    log_every = active[0].spec.recipe.log_every
    steps = len(train_data) // accumulation
    meter = meter or EpochMeter(device, env.world_size)
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(meter.batches(train_data.epoch(seed, epoch))):
        j = i * env.world_size + env.rank
        step, acc = divmod(i, accumulation)
        last = acc == accumulation - 1
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        target = y
        if mixup is not None:  # timm's Mixup draws from numpy's global RNG: make it a function of the micro-batch
            np.random.seed(data_mod.micro_seed(seed, epoch, j, "mixup") % 2**32)
            x, target = mixup(x, y)
        t_logits, t_feats = None, {}
        if teacher is not None:
            with meter.part("teacher"):
                with torch.inference_mode(), autocast():
                    t_out, feats = forward_taps(teacher, x, t_blocks)
                # inference tensors cannot be saved for backward: hand the students ordinary tensors
                t_logits = t_out.clone()
                t_feats = {b: f.clone() for b, f in zip(t_blocks, feats)}
        key = data_mod.micro_seed(seed, epoch, j, "member")
        for m in active:
            if m.failed:
                continue
            try:
                with meter.part(m.hash):
                    _micro_step(m, x, target, t_logits, t_feats, key, last, accumulation, autocast, device)
                    if last:
                        _optimizer_step(m, epoch * m.steps + step)
            except Exception as err:  # one student's failure does not stop its cohort
                _fail(m, f"{type(err).__name__}: {err}", traceback.format_exc())
        if last and ((step + 1) % log_every == 0 or step + 1 == steps):
            for m in active:
                if not m.failed:
                    _check_and_report(m, epoch, step, callbacks, time.perf_counter() - t0)


def train_step(m: Member, x, target, t_logits, t_feats, key: int, global_step: int, autocast, device: str) -> None:
    """One whole optimizer step on one batch (no accumulation): what benchmarks time."""
    _micro_step(m, x, target, t_logits, t_feats, key, True, 1, autocast, device)
    _optimizer_step(m, global_step)


def _micro_step(
    m: Member, x, target, t_logits, t_feats, key: int, sync: bool, accumulation: int, autocast, device: str
) -> None:
    """Forward, loss and backward of one micro-batch; gradients add up over the accumulation steps (DDP
    all-reduces them only on the last, `sync`), each micro-batch's loss weighted 1 / accumulation."""
    with m.scope(device, key), nullcontext() if sync else no_sync(m.student):
        terms = forward_loss(m, x, target, t_logits, t_feats, autocast)
        loss = terms["loss"] / accumulation
        (m.scaler.scale(loss) if m.scaler is not None else loss).backward()
    for k, v in terms.items():
        v = v.detach().float()
        m.sums[k] = m.sums[k] + v if k in m.sums else v.clone()
    m.count += 1


def forward_loss(m: Member, x, target, t_logits, t_feats, autocast) -> dict[str, torch.Tensor]:
    """One student's forward pass and its loss terms (the objective over its methods); "loss" is their sum."""
    with autocast():
        out, s_feats = m.student(x, m.streams.generator)
    return objective(m.spec, out, target, t_logits, s_feats, t_feats, m.streams.generator)


def _optimizer_step(m: Member, global_step: int) -> None:
    """The optimizer step that ends an accumulation: clip, step, schedule, EMA; gradients cleared."""
    r = m.spec.recipe
    if m.scaler is not None:
        m.scaler.unscale_(m.optimizer)
    if r.clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(m.core.parameters(), r.clip_grad)
    if m.scaler is not None:
        m.scaler.step(m.optimizer)
        m.scaler.update()
    else:
        m.optimizer.step()
    m.optimizer.zero_grad(set_to_none=True)
    m.scheduler.step_update(num_updates=global_step + 1)
    if m.ema is not None:
        m.ema.update(m.core.model, step=global_step)


def _mean_terms(m: Member) -> dict[str, torch.Tensor]:
    """Each loss term's mean over the epoch's micro-batches so far, over every rank (one all-reduce)."""
    keys = sorted(m.sums)
    if not keys:
        return {}
    t = torch.stack(
        [m.sums[k].double() for k in keys]
        + [torch.tensor(float(m.count), dtype=torch.float64, device=m.sums[keys[0]].device)]
    )
    all_sum(t)
    n = max(t[-1].item(), 1.0)
    return {k: t[i] / n for i, k in enumerate(keys)}


def _check_and_report(m: Member, epoch: int, step: int, callbacks, elapsed: float) -> None:
    values = {k: v.item() for k, v in _mean_terms(m).items()}  # the host sync of a logging interval
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        _fail(
            m,
            f"non-finite loss at epoch {epoch + 1} step {step + 1}: " + ", ".join(f"{k}={values[k]}" for k in bad),
            None,
        )
        return
    values["lr"] = m.optimizer.param_groups[0]["lr"]
    values["step_time_s"] = elapsed / (step + 1)
    for cb in callbacks:
        cb.on_progress(m.hash, epoch, step + 1, values)


def _fail(m: Member, reason: str, tb: str | None) -> None:
    m.failed = reason
    if m.run is not None:
        if tb:
            (m.dir / "error.txt").write_text(tb)
        m.run.finish("FAILED", reason)


def _end_epoch(m: Member, epoch: int, val_data, env: DistEnv, autocast, train_cpu_s: float) -> dict[str, float]:
    t_eval, cpu_eval = time.perf_counter(), time.process_time()
    metrics = {f"train.{k}": v.item() for k, v in _mean_terms(m).items()}
    last = epoch + 1 == m.epochs and env.world_size == 1  # a rank's predictions are a shard: single process only
    m.predictions = {} if last else None
    val = evaluate(m.core.model, val_data, env.device, autocast, m.predictions)
    metrics.update({f"val.{k}": v for k, v in val.items()})
    if m.ema is not None:
        metrics.update({f"val_ema.{k}": v for k, v in evaluate(m.ema.module, val_data, env.device, autocast).items()})
    metrics["lr"] = m.optimizer.param_groups[0]["lr"]
    metrics["eval_time_s"] = time.perf_counter() - t_eval
    metrics["cost.cpu_s"] = train_cpu_s + time.process_time() - cpu_eval  # this run's share of the epoch
    m.best_top1 = max(m.best_top1, metrics["val.top1"])
    metrics["val.best_top1"] = m.best_top1
    m.history.append({"epoch": epoch + 1, **metrics})
    m.start_epoch = epoch + 1
    if env.main:  # checkpoint first: a kill in between loses no epoch and logs none twice (see _backfill)
        workdir.save_atomic(m.state(epoch + 1), m.dir / "checkpoint.pt")
        m.run.log_metrics(metrics, step=epoch + 1)
    return metrics


def log_predictions(m: Member, name: str, predictions: dict) -> None:
    """Per-image validation top-1 ({"label": [...], "top1": [...], "cls": [...], ...}) as the artifact
    predictions/<name>: what the report's agreement matrix compares."""
    path = m.dir / name
    path.write_text(json.dumps(predictions, separators=(",", ":")))
    m.run.log_artifact(path, "predictions")


def _finish(m: Member) -> None:
    final = {"model": m.core.model.state_dict()}
    if m.ema is not None:
        final["ema"] = m.ema.module.state_dict()
    workdir.save_atomic(final, m.dir / "final.pt")
    last = m.history[-1]["val.top1"] if m.history else float("nan")
    finals = {"best_top1": m.best_top1, "last_top1": last}
    for head in ("cls", "dist"):  # a distilled DeiT's heads alone (DeiT's Table 5)
        values = [e[f"val.{head}_top1"] for e in m.history if f"val.{head}_top1" in e]
        if values:
            finals.update({f"last_{head}_top1": values[-1], f"best_{head}_top1": max(values)})
    m.run.log_metrics(finals, step=m.epochs)
    if m.predictions:
        log_predictions(m, "predictions.json", m.predictions)
    m.run.log_artifact(m.dir / "final.pt", "checkpoints")
    m.run.log_artifact(m.dir / "checkpoint.pt", "checkpoints")
    (m.dir / "history.json").write_text(json.dumps(m.history, indent=1))
    m.run.finish("FINISHED")
