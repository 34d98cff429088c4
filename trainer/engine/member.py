"""One member of a cohort: a run's student, optimisation state and randomness, and its checkpoint.

Each member owns its RNG streams (`Streams`): swapped in around its own steps, so a run draws the same
numbers alone or beside others, and saved in its checkpoint, so a resumed run draws what it would have.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer import methods, models, numerics, tracking, workdir
from trainer.distributed import DistEnv
from trainer.engine import ema
from trainer.precision import Precision, effective
from trainer.spec import ExperimentSpec
from trainer.taps import Student


def rng_seed(seed: int, salt: int) -> int:
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
            self.generator.manual_seed(rng_seed(key, 2))
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
    scaler: torch.amp.GradScaler | None  # fp16's loss scale (trainer.precision), checkpointed with the rest
    ema: Any | None
    streams: Streams
    steps: int
    lr: float
    t_taps: tuple = ()  # the teacher features its methods read (trainer.methods taps)
    start_epoch: int = 0
    best_top1: float = -1.0
    history: list = field(default_factory=list)
    run: tracking.RunLog | None = None
    logged: set[int] = field(default_factory=set)  # the epochs MLflow holds: a re-run epoch is not logged again
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
            "numerics": numerics.NUMERICS_VERSION,
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


def precision_of(spec: ExperimentSpec, device: str) -> Precision:
    """The precision `spec` trains with on `device` (the spec's field, or its `amp` where unset)."""
    return Precision(effective(spec.recipe.precision, spec.recipe.amp, device), device)


def build_member(spec: ExperimentSpec, env: DistEnv, wd: Path, steps: int) -> Member:
    """A fresh member (no checkpoint read): its student on the device, AdamW over timm's weight-decay groups,
    the cosine schedule over `steps` optimizer steps an epoch, its loss scaler, EMA and RNG streams."""
    run_hash = spec.content_hash()
    core, rng = build_student(spec)
    device = torch.device(env.device)
    core.to(device)
    student: nn.Module = core
    if env.world_size > 1:
        student = nn.parallel.DistributedDataParallel(core, device_ids=[device] if device.type == "cuda" else None)
    if spec.recipe.compile:
        student = torch.compile(student)
    lr = effective_lr(spec, env.world_size)
    optimizer = _optimizer(spec, core, lr, fused=device.type == "cuda")
    d = spec.distillation
    return Member(
        spec=spec,
        hash=run_hash,
        dir=workdir.run_dir(wd, run_hash),
        student=student,
        core=core,
        optimizer=optimizer,
        scheduler=_scheduler(spec, optimizer, steps),
        scaler=precision_of(spec, env.device).scaler(),
        ema=ema.build(spec, core.model),
        streams=_streams(spec, device, rng),
        steps=steps,
        lr=lr,
        t_taps=tuple(dict.fromkeys(t for meth in methods.active(d) for t in meth.teacher_taps(meth.settings(d)))),
    )


def _optimizer(spec: ExperimentSpec, core: Student, lr: float, fused: bool) -> torch.optim.Optimizer:
    """DeiT's AdamW: no weight decay on biases, norms and the model's own no-decay parameters."""
    from timm.optim import param_groups_weight_decay

    model = core.model
    no_decay = {f"model.{n}" for n in getattr(model, "no_weight_decay", lambda: set())()} | core.no_weight_decay()
    groups = param_groups_weight_decay(core, spec.recipe.weight_decay, no_weight_decay_list=no_decay)
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def _scheduler(spec: ExperimentSpec, optimizer: torch.optim.Optimizer, steps: int):
    """timm's cosine schedule with linear warmup, stepped per optimizer step."""
    from timm.scheduler import CosineLRScheduler

    r = spec.recipe
    return CosineLRScheduler(
        optimizer,
        t_initial=r.epochs * steps,
        lr_min=r.min_lr,
        warmup_t=int(r.warmup_epochs * steps),
        warmup_lr_init=r.warmup_lr,
        t_in_epochs=False,
    )


def _streams(spec: ExperimentSpec, device: torch.device, rng: torch.Tensor) -> Streams:
    streams = Streams(
        rng=rng, cuda_rng=None, generator=torch.Generator(device=device).manual_seed(rng_seed(spec.seed, 2))
    )
    if device.type == "cuda":
        streams.cuda_rng = torch.Generator(device=device).manual_seed(rng_seed(spec.seed, 3)).get_state()
    return streams


def build_student(spec: ExperimentSpec) -> tuple[Student, torch.Tensor]:
    """The student model inside its Student wrapper (taps and the methods' trainable modules), initialised
    from this run's own RNG stream; returns it with that stream's state after init."""
    rng_owner = torch.Generator().manual_seed(rng_seed(spec.seed, 1))
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
