"""The experiment spec: everything one training run depends on, validated before anything starts.

A spec is the single source of truth for a run. Its content hash (over the fields that change what is
trained, not how it is executed) identifies the run in MLflow, in the work directory and across the grid,
so two ablation rows that resolve to the same spec are trained once.

Block indices are written as in the paper: 1-based, `{1,2,3,4,21,22,23,24}`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from trainer import datasets, methods, strict_yaml
from trainer.methods import embedding, manifold
from trainer.problems import SpecError, validation_problems
from trainer.spec_base import NOT_HASHED, Block, Positive, StrictModel, Weight  # noqa: F401 (re-exported)


class ModelSpec(StrictModel):
    """A model to build with timm: the student, or the network a teacher-training run trains."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)  # extra create_model arguments (analog widths, ...)
    drop_path: Weight = 0.1

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from trainer.models import check_known

        check_known(name)
        return name


class TeacherSpec(StrictModel):
    """A frozen teacher: timm's hub weights, a checkpoint file, or the result of a run of this grid."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    source: Literal["hub", "checkpoint", "run"] = "hub"
    path: str | None = None  # source=checkpoint
    run: str | None = None  # source=run: content hash of the teacher-training run

    _known = field_validator("name")(ModelSpec._known.__func__)

    @model_validator(mode="after")
    def _source_fields(self) -> TeacherSpec:
        if self.source == "checkpoint" and not self.path:
            raise ValueError("source 'checkpoint' needs `path` (a .pt/.pth file with the teacher's state_dict)")
        if self.source == "run" and not self.run:
            raise ValueError("source 'run' needs `run` (the content hash of the run that trained the teacher)")
        if self.source == "hub" and (self.path or self.run):
            raise ValueError("source 'hub' takes neither `path` nor `run`")
        return self


class AugmentSpec(StrictModel):
    """DeiT's augmentations (timm) for ImageNet; a light subset for 28x28 Fashion-MNIST."""

    hflip: Weight = 0.5
    crop_padding: int = Field(0, ge=0)  # Fashion-MNIST: random crop with this zero padding
    # Random-resized crop: the area fraction range of the crop (DeiT/timm: (0.08, 1)); None: no such crop.
    crop_scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] | None = None
    rand_augment: str | None = None  # e.g. DeiT's "rand-m9-mstd0.5-inc1"
    color_jitter: Weight = 0.0
    reprob: Weight = 0.0  # random erasing probability
    mixup: Weight = 0.0
    cutmix: Weight = 0.0
    mixup_prob: Weight = 1.0
    mixup_switch_prob: Weight = 0.5
    smoothing: Weight = 0.0  # label smoothing
    repeated_aug: bool = False  # DeiT's repeated augmentation sampler (distributed runs)

    @field_validator("crop_scale")
    @classmethod
    def _ordered(cls, v):
        if v is not None and v[0] > v[1]:
            raise ValueError(f"crop_scale {list(v)}: the smaller area fraction comes first")
        return v


class DataSpec(StrictModel):
    dataset: str  # a registered dataset (trainer.datasets): fashion_mnist, imagenet, or a plug-in's
    root: str | None = None  # where its files are (fashion_mnist: Debian's package's; imagenet: train/ val/)
    img_size: int = Field(28, ge=8)
    in_chans: int = Field(1, ge=1)
    num_classes: int = Field(10, ge=2)
    train_subset: int | None = Field(None, ge=1)  # deterministic subset (by subset_seed) of the training set
    val_subset: int | None = Field(None, ge=1)
    subset_seed: int = 0
    augment: AugmentSpec = AugmentSpec()
    num_workers: int = Field(0, ge=0, json_schema_extra=NOT_HASHED)

    @field_validator("dataset")
    @classmethod
    def _registered(cls, name: str) -> str:
        datasets.get(name)  # ValueError naming every registered dataset
        return name


class RecipeSpec(StrictModel):
    """Optimisation: DeiT's AdamW with warmup and cosine decay (timm's scheduler)."""

    epochs: int = Field(ge=1)
    # Per device (per GPU): one forward's micro-batch, the n of the manifold's n x n relation maps.
    batch_size: int = Field(ge=1)
    # The optimizer's batch, over every device and accumulation step (the paper: 128 x 8 GPUs = 1024).
    # None: batch_size x the world size, with no accumulation (how runs were planned before; same hash).
    global_batch: int | None = Field(None, ge=1)
    # How the launcher runs it (not the run's identity: a result must not depend on the GPU count): the
    # devices of one DDP job and the accumulation steps that make up the global batch. Set by the plan from
    # `launch.resources`; the trainer recomputes accumulation from the world size it actually gets.
    world_size: int | None = Field(None, ge=1, json_schema_extra=NOT_HASHED)
    accumulation: int | None = Field(None, ge=1, json_schema_extra=NOT_HASHED)
    lr: Positive = 5e-4
    lr_scale_batch: int | None = Field(512, ge=1)  # DeiT: lr * global batch / 512; None: no scaling
    min_lr: Weight = 1e-5
    warmup_lr: Weight = 1e-6
    warmup_epochs: Weight = 5
    weight_decay: Weight = 0.05
    clip_grad: Positive | None = None
    ema: bool = False  # keep an EMA of the weights, updated every optimizer step (trainer/engine/ema.py)
    ema_decay: Annotated[float, Field(gt=0, lt=1)] = 0.99996  # 1 - mmcv's EMAHook momentum (4e-5)
    # Which weights a run is evaluated on, `val.*` and its accuracy: the trained model (unset, as DeiT's
    # main.py) or its EMA (`ema`, as mmcls's EMAHook in ViTKD's DeiT-B configs). Unset is not hashed;
    # `model` is that same run (normalised to unset).
    eval_weights: Literal["model", "ema"] | None = None
    amp: bool = True  # mixed precision on CUDA where `precision` is unset; ignored on CPU
    # fp16 (autocast + GradScaler, as DeiT and the released ManifoldKD code) | bf16 (autocast) | fp32, on every
    # device, CPU included. Unset (None), `amp` decides as it did before this field: fp16 on CUDA, fp32 on CPU
    # or with `amp: false` (trainer.precision.effective; kdgrid's CUDA autocast was bf16 until then). Hashed
    # only when set, so runs planned before it keep their hashes; with `amp: false`, fp32 is that same run
    # (normalised to unset) and fp16/bf16 a contradiction. Losses are float32 under any of them.
    precision: Literal["fp16", "bf16", "fp32"] | None = None
    compile: bool = Field(False, json_schema_extra=NOT_HASHED)
    log_every: int = Field(50, ge=1, json_schema_extra=NOT_HASHED)

    @model_validator(mode="after")
    def _protocol(self) -> RecipeSpec:
        if self.global_batch is not None and self.global_batch % self.batch_size:
            raise ValueError(
                f"global_batch: {self.global_batch} is not a multiple of batch_size {self.batch_size} "
                "(the per-device micro-batch)"
            )
        if self.precision is not None and not self.amp:
            if self.precision != "fp32":
                raise ValueError(f"precision: {self.precision} with amp: false: mixed precision is on or off, not both")
            self.__dict__["precision"] = None  # amp: false already trains in fp32: the same run, the same hash
        if self.eval_weights == "ema" and not self.ema:
            raise ValueError("eval_weights: ema needs ema: true (an EMA of the weights to evaluate)")
        if self.eval_weights == "model":
            self.__dict__["eval_weights"] = None  # the trained model is what every run is evaluated on
        if self.world_size is not None:
            self.__dict__["accumulation"] = accumulation_steps(self, self.world_size, self.accumulation)
        return self

    def global_batch_at(self, world_size: int) -> int:
        """The optimizer's batch when the run trains on `world_size` devices."""
        return self.global_batch if self.global_batch is not None else self.batch_size * world_size


def accumulation_steps(recipe: RecipeSpec, world_size: int, stated: int | None = None) -> int:
    """Micro-batches per device per optimizer step: global_batch / (batch_size x world_size).

    Raises ValueError naming the fields when the protocol cannot be met on `world_size` devices.
    """
    if recipe.global_batch is None:
        acc = 1
    else:
        per_step = recipe.batch_size * world_size
        if recipe.global_batch % per_step:
            raise ValueError(
                f"global_batch: {recipe.global_batch} cannot be split over world_size {world_size} x batch_size "
                f"{recipe.batch_size} = {per_step} images per micro-step: choose a device count "
                f"(launch.resources.gpus) that divides {recipe.global_batch // recipe.batch_size}, "
                "or another batch_size"
            )
        acc = recipe.global_batch // per_step
    if stated is not None and stated != acc:
        raise ValueError(
            f"accumulation: {stated} but global_batch {recipe.global_batch_at(world_size)} over "
            f"world_size {world_size} x batch_size {recipe.batch_size} needs {acc}"
        )
    return acc


class _Distillation(StrictModel):
    """Logit distillation (DeiT: none / soft / hard, Eq. 5-6) plus any feature or logit losses.

    Its fields are those of the registered methods (trainer/methods/): DeiT's flat kd/tau/kd_weight, and
    one optional sub-spec per other method (manifold, embedding, ...). An unset method is None and is
    left out of the content hash, so adding a method keeps every earlier run's hash.
    """

    @property
    def uses_teacher(self) -> bool:
        return bool(methods.active(self))

    @property
    def methods(self) -> list:
        """The registered methods this spec uses, in the objective's order."""
        return methods.active(self)

    @model_validator(mode="after")
    def _canonical(self) -> _Distillation:
        fix: dict[str, Any] = {}
        for m in methods.REGISTRY.values():
            fix.update(m.canonical(self))
        self.__dict__.update(fix)
        return self


DistillationSpec = create_model(
    "DistillationSpec",
    __base__=_Distillation,
    __module__=__name__,
    __doc__=_Distillation.__doc__,
    **{
        name: field
        for m in sorted(methods.REGISTRY.values(), key=lambda m: m.order)
        for name, field in m.fields.items()
    },
)
ManifoldSpec, TermScale, EmbeddingSpec = manifold.ManifoldSpec, manifold.TermScale, embedding.EmbeddingSpec
Term = manifold.Term


class ExperimentSpec(StrictModel):
    """One training run: a student (or a teacher being trained), its data, recipe and distillation."""

    name: str | None = Field(None, json_schema_extra=NOT_HASHED)  # display name in MLflow
    scale: str = Field("custom", json_schema_extra=NOT_HASHED)
    recipe_name: str | None = Field(None, json_schema_extra=NOT_HASHED)
    tags: dict[str, str] = Field(default_factory=dict, json_schema_extra=NOT_HASHED)
    seed: int = 0
    student: ModelSpec
    teacher: TeacherSpec | None = None
    data: DataSpec
    recipe: RecipeSpec
    distillation: DistillationSpec = DistillationSpec()

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        d = self.distillation
        if not d.uses_teacher and self.teacher is not None:
            self.__dict__["teacher"] = None  # a no-distillation run has no teacher
        if d.uses_teacher and self.teacher is None:
            raise ValueError("distillation: needs a `teacher` (kd is not 'none' or a feature loss is set)")
        for path, reason in cross_field_problems(self):
            raise ValueError(f"{path}: {reason}")
        return self

    # ---- identity -------------------------------------------------------------------------------
    def content_hash(self) -> str:
        """Hash of what is trained (not how it is executed); 16 hex digits."""
        payload = json.dumps(_hashed(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def model_kwargs(self) -> dict[str, Any]:
        return dict(num_classes=self.data.num_classes, in_chans=self.data.in_chans, **self.student.kwargs)

    def teacher_kwargs(self) -> dict[str, Any]:
        assert self.teacher is not None
        return dict(num_classes=self.data.num_classes, in_chans=self.data.in_chans, **self.teacher.kwargs)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _hashed(model: BaseModel) -> Any:
    """The identity of a (sub)spec: execution details are left out, and so are options left unset
    (None by default), so that adding an option to the schema does not orphan every finished run."""
    out = {}
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("hash") is False:
            continue
        value = getattr(model, name)
        if value is None and field.default is None:
            continue
        if "hash_as" in extra:  # a renamed value hashes as before
            value = extra["hash_as"].get(value, value)
        out[name] = _hashed_value(value)
    return out


def _hashed_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _hashed(value)
    if isinstance(value, (list, tuple)):
        return [_hashed_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _hashed_value(v) for k, v in value.items()}
    return value


def cross_field_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """Checks that need the models' shapes: block indices, patch counts, k, CNN teachers."""
    from trainer.models import model_info

    problems: list[tuple[str, str]] = []
    s = model_info(spec.student.name, **spec.model_kwargs())
    if s.img_size is not None and s.img_size != spec.data.img_size:
        problems.append(("data.img_size", f"{spec.data.img_size} but {s.name} is built for {s.img_size}px input"))
    if spec.teacher is None:
        return problems
    t = model_info(spec.teacher.name, **spec.teacher_kwargs())
    if t.img_size is not None and t.img_size != spec.data.img_size:
        problems.append(("teacher.name", f"{t.name} is built for {t.img_size}px input, data has {spec.data.img_size}"))
    d = spec.distillation
    for m in methods.active(d):
        problems += m.problems(m.settings(d), s, t, spec)
    return problems


# ---- loading ------------------------------------------------------------------------------------
format_validation_error = validation_problems  # the name callers have used: (field path, reason) per error


def parse_experiment(data: Any, source: str | None = None, prefix: str = "") -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(validation_problems(err, prefix, ExperimentSpec), source) from None


def load_experiment(path: str | Path) -> ExperimentSpec:
    """Read a spec file (YAML as safe_load reads it, duplicate keys refused), validate it, and check that
    what it names exists."""
    path = Path(path)
    spec = parse_experiment(strict_yaml.read(path), str(path))
    problems = resource_problems(spec)
    if problems:
        raise SpecError(problems, str(path))
    return spec


def resource_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """What the run needs from disk: the dataset and any teacher checkpoint file."""
    from trainer.dataset_files import dataset_problem

    problems = []
    msg = dataset_problem(spec.data.dataset, spec.data.root)
    if msg:
        problems.append(("data.root", msg))
    if spec.teacher is not None and spec.teacher.source == "checkpoint":
        if not Path(spec.teacher.path).expanduser().is_file():
            problems.append(("teacher.path", f"no checkpoint file at {spec.teacher.path}"))
    return problems
