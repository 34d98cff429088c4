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
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

# A loss weight: a finite, non-negative number (strings such as "0.2" are rejected, not coerced).
Weight = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
Block = Annotated[int, Strict(), Field(ge=1)]

NOT_HASHED = {"hash": False}  # json_schema_extra marker: execution detail, not part of the run's identity


class SpecError(ValueError):
    """A spec that cannot run, with where (file, field path) and why."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        lines = [f"{where}{path or '<root>'}: {reason}" for path, reason in problems]
        super().__init__("invalid spec\n  " + "\n  ".join(lines))


class StrictModel(BaseModel):
    # Frozen: a validated spec is normalised once (in its after-validators) and then never changes.
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    def _source_fields(self) -> "TeacherSpec":
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
    dataset: Literal["fashion_mnist", "imagenet"]
    root: str | None = None  # fashion_mnist: Debian's /usr/share/datasets/fashion-mnist; imagenet: train/ val/
    img_size: int = Field(28, ge=8)
    in_chans: int = Field(1, ge=1)
    num_classes: int = Field(10, ge=2)
    train_subset: int | None = Field(None, ge=1)  # deterministic subset (by subset_seed) of the training set
    val_subset: int | None = Field(None, ge=1)
    subset_seed: int = 0
    augment: AugmentSpec = AugmentSpec()
    num_workers: int = Field(0, ge=0, json_schema_extra=NOT_HASHED)


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
    ema: bool = False
    ema_decay: Annotated[float, Field(gt=0, lt=1)] = 0.99996
    amp: bool = True  # bf16 autocast on GPU (losses in float32); ignored on CPU
    compile: bool = Field(False, json_schema_extra=NOT_HASHED)
    log_every: int = Field(50, ge=1, json_schema_extra=NOT_HASHED)

    @model_validator(mode="after")
    def _protocol(self) -> "RecipeSpec":
        if self.global_batch is not None and self.global_batch % self.batch_size:
            raise ValueError(f"global_batch: {self.global_batch} is not a multiple of batch_size {self.batch_size} "
                             "(the per-device micro-batch)")
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
                f"{recipe.batch_size} = {per_step} images per micro-step: choose a device count (launch.resources.gpus) "
                f"that divides {recipe.global_batch // recipe.batch_size}, or another batch_size")
        acc = recipe.global_batch // per_step
    if stated is not None and stated != acc:
        raise ValueError(f"accumulation: {stated} but global_batch {recipe.global_batch_at(world_size)} over "
                         f"world_size {world_size} x batch_size {recipe.batch_size} needs {acc}")
    return acc


Term = Literal["ci", "cp", "rs"]


class TermScale(StrictModel):
    """Per-term scale under the released code: w_sample (ci), w_patch (cp), and rs's factor on beta."""

    ci: Weight = 1.0
    cp: Weight = 1.0
    rs: Weight = 1.0


class ManifoldSpec(StrictModel):
    """Fine-grained manifold loss (Eq. 9): L_ci + alpha L_cp + beta L_rs over block pairs.

    Effective weights are (term_scale.ci, term_scale.cp * alpha, term_scale.rs * beta), times `weight`:
    the paper's recipe has term_scale 1 (Eq. 9); the released code's recipe has term_scale
    (0.1, 4, 1), which gives its w_sample=0.1, w_patch=4, w_rand=0.2 at the paper's alpha=1, beta=0.2,
    and keeps Table 4's rows meaningful as relative changes of alpha and beta.
    """

    terms: tuple[Term, ...] = ("ci", "cp", "rs")
    alpha: Weight = 1.0
    beta: Weight = 0.2
    k: int = Field(192, ge=0)
    student_blocks: tuple[Block, ...] = (1, 2, 3, 4, 9, 10, 11, 12)
    teacher_blocks: tuple[Block, ...] = (1, 2, 3, 4, 21, 22, 23, 24)
    reduction: Literal["paper", "released"] = "paper"
    # How Eq. 13 combines the block pairs: "sum" (the paper's text) or "mean" (the released code). Unset
    # follows the reduction (paper -> sum, released -> mean), which keeps earlier runs' content hashes.
    layers: Literal["sum", "mean"] | None = None
    term_scale: TermScale = TermScale()
    weight: Weight = 1.0
    exact: bool = False  # add the exact patch-level loss (Eq. 8) computed through Gram matrices
    exact_weight: Weight = 1.0

    @property
    def layer_reduce(self) -> str:
        """How the block pairs' losses combine (Eq. 13): the explicit `layers`, else the reduction's."""
        return self.layers or ("sum" if self.reduction == "paper" else "mean")

    @field_validator("terms")
    @classmethod
    def _unique_terms(cls, terms: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(terms)) != len(terms):
            raise ValueError(f"repeated term in {list(terms)}")
        return tuple(t for t in ("ci", "cp", "rs") if t in terms)  # canonical order

    @model_validator(mode="after")
    def _canonical(self) -> "ManifoldSpec":
        if len(self.student_blocks) != len(self.teacher_blocks):
            raise ValueError(
                f"student_blocks has {len(self.student_blocks)} blocks but teacher_blocks has "
                f"{len(self.teacher_blocks)}: blocks are paired in order"
            )
        if not self.terms and not self.exact:
            raise ValueError("no manifold term selected: list terms (ci, cp, rs) or set exact: true")
        # Settings that cannot change the loss are normalised away, so equal losses hash equally:
        # k=0 means no random-sampled term (Table 6's k=0 row is Table 3's L_ci + L_cp row).
        terms = self.terms
        if self.k == 0 or self.beta == 0:
            terms = tuple(t for t in terms if t != "rs")
        fix: dict[str, Any] = {"terms": terms}
        if "rs" not in terms:
            fix.update(k=0, beta=0.0)
        if "cp" not in terms:
            fix["alpha"] = 0.0
        if not self.exact:
            fix["exact_weight"] = 0.0
        self.__dict__.update(fix)
        return self


class EmbeddingSpec(StrictModel):
    """Direct embedding transfer (Table 7's baseline): MSE between paired block outputs."""

    student_blocks: tuple[Block, ...] = (1, 2, 3, 4, 9, 10, 11, 12)
    teacher_blocks: tuple[Block, ...] = (1, 2, 3, 4, 21, 22, 23, 24)
    weight: Weight = 1.0

    @model_validator(mode="after")
    def _paired(self) -> "EmbeddingSpec":
        if len(self.student_blocks) != len(self.teacher_blocks):
            raise ValueError("student_blocks and teacher_blocks must have the same length (paired in order)")
        return self


class DistillationSpec(StrictModel):
    """Logit distillation (DeiT: none / soft / hard, Eq. 5-6) plus optional feature losses."""

    kd: Literal["none", "soft", "hard"] = "none"
    tau: Positive = 1.0
    kd_weight: Annotated[float, Strict(), Field(ge=0, le=1)] = 0.5  # DeiT's alpha: (1-a) CE + a KD
    manifold: ManifoldSpec | None = None
    embedding: EmbeddingSpec | None = None

    @property
    def uses_teacher(self) -> bool:
        return self.kd != "none" or self.manifold is not None or self.embedding is not None

    @model_validator(mode="after")
    def _canonical(self) -> "DistillationSpec":
        fix: dict[str, Any] = {}
        if self.kd == "none":
            fix.update(tau=1.0, kd_weight=0.0)
        if self.kd != "soft":
            fix["tau"] = 1.0
        self.__dict__.update(fix)
        return self


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
    def _consistent(self) -> "ExperimentSpec":
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
    if s.kind == "cnn" and spec.teacher is not None and spec.distillation.manifold is not None:
        problems.append(("student.name", f"{s.name} is a CNN: it has no patch tokens for a feature loss"))
    if s.img_size is not None and s.img_size != spec.data.img_size:
        problems.append(("data.img_size", f"{spec.data.img_size} but {s.name} is built for {s.img_size}px input"))
    if spec.teacher is None:
        return problems
    t = model_info(spec.teacher.name, **spec.teacher_kwargs())
    if t.img_size is not None and t.img_size != spec.data.img_size:
        problems.append(("teacher.name", f"{t.name} is built for {t.img_size}px input, data has {spec.data.img_size}"))
    d = spec.distillation
    for key, loss in (("manifold", d.manifold), ("embedding", d.embedding)):
        if loss is None:
            continue
        here = f"distillation.{key}"
        if t.kind == "cnn":
            problems.append((f"teacher.name", f"{t.name} is a CNN: it has no patch tokens for the {key} loss "
                                              f"(use kd: hard/soft only, or a transformer teacher)"))
            continue
        if s.kind == "cnn":
            continue
        for side, info, blocks in (("student", s, loss.student_blocks), ("teacher", t, loss.teacher_blocks)):
            for i, b in enumerate(blocks):
                if b > info.depth:
                    problems.append((f"{here}.{side}_blocks[{i}]",
                                     f"block {b} is beyond {info.name}'s depth {info.depth} (indices are 1-based)"))
        if s.num_patches != t.num_patches:
            problems.append((here, f"student {s.name} has {s.num_patches} patches but teacher {t.name} has "
                                   f"{t.num_patches}: the {key} loss pairs patches one to one"))
        if key == "manifold" and s.num_patches and loss.k > spec.recipe.batch_size * s.num_patches:
            problems.append((f"{here}.k", f"k={loss.k} is larger than the batch's {spec.recipe.batch_size} x "
                                          f"{s.num_patches} = {spec.recipe.batch_size * s.num_patches} patches"))
    return problems


# ---- loading ------------------------------------------------------------------------------------
def format_validation_error(err: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        path = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
            # cross-field errors carry their own path: "distillation.manifold.k: ..."
            head, sep, rest = msg.partition(": ")
            if sep and " " not in head and not path:
                path, msg = head, rest
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        full = ".".join(p for p in (prefix, path) if p)
        problems.append((full, msg))
    return problems


def parse_experiment(data: Any, source: str | None = None, prefix: str = "") -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, prefix), source) from None


def load_experiment(path: str | Path) -> ExperimentSpec:
    """Read a spec file (YAML, safe_load), validate it, and check that what it names exists."""
    path = Path(path)
    if not path.exists():
        raise SpecError([("", f"no such file {path}")], str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError([("", f"not valid YAML: {err}")], str(path)) from None
    spec = parse_experiment(data, str(path))
    problems = resource_problems(spec)
    if problems:
        raise SpecError(problems, str(path))
    return spec


def resource_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """What the run needs from disk: the dataset and any teacher checkpoint file."""
    from trainer.data import dataset_problem

    problems = []
    msg = dataset_problem(spec.data)
    if msg:
        problems.append(("data.root", msg))
    if spec.teacher is not None and spec.teacher.source == "checkpoint":
        if not Path(spec.teacher.path).expanduser().is_file():
            problems.append(("teacher.path", f"no checkpoint file at {spec.teacher.path}"))
    return problems
