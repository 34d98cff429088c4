"""What a run costs, in CPU-seconds: a FLOP count of its steps, priced by what earlier runs logged.

Work is counted per model as forward FLOPs (for transformers from their shape, trainer.models.model_info,
already known from validating the plan; for CNNs torch's FlopCounterMode on a meta-device model, nothing
allocated): a training step is 3 forwards (forward and backward), evaluation and the teacher's pass 1,
plus the work each distillation method prices for its loss (`Method.flops`). A cohort pays its teacher's
pass once per part (`shared`), its students each their own steps (`own`), every process a set-up.

The price of a FLOP differs between models (small widths are overhead-bound on a CPU), so `calibrate`
fits one rate per model (CPU-seconds per FLOP; a teacher's inference passes apart from its training) and
one per process set-up to the `cost.*` metrics that
earlier runs in the store logged. A cohort logs each epoch's training time split evenly among the runs
that shared it (`cost.train_share_cpu_s`), and each run's `cost.cpu_s` adds its own evaluation, so runs of
one cohort key that logged the very same share at the same epoch shared a process: the sum of their
`cost.cpu_s` is that process's time, and it is compared with the work of exactly those runs.
The fit is least squares in relative error, pulled towards one common rate so models seen rarely (or
never) take the store's average price; an empty store leaves the default rates (this project's 2-core
machine, one thread), which only the absolute ETA depends on.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

TRAIN = 3.0  # a training step in forward passes (forward + backward)
SETUP = "setup"  # the rate key of a process's set-up (seconds per process)
DEFAULT_RATE = 5e-11  # CPU-s per forward FLOP: benchmarks/bench_step's steps on the 2-core machine, 1 thread
DEFAULT_SETUP = 5.0  # CPU-s to build the models and data of a process
GUESS = (100000, 10000)  # (train, val) images of a dataset that does not say its sizes
RIDGE = 0.01  # weight of the pull towards the common rate, per model, against one observation's relative error


@functools.cache
def _forward_flops(name: str, kwargs_json: str, in_chans: int, img_size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.models import build_on_meta

    model = build_on_meta(name, **json.loads(kwargs_json)).eval()
    with torch.device("meta"):
        x = torch.empty(2, in_chans, img_size, img_size)
        with FlopCounterMode(display=False) as counter:
            model(x)
    return counter.get_total_flops() / 2


def transformer_flops(
    depth: int,
    width: int,
    patches: int,
    extra_tokens: int,
    in_chans: int,
    img_size: int,
    mlp_ratio: float = 4.0,
    class_blocks: int = 0,
) -> float:
    """Forward FLOPs of one image through a ViT/CaiT: patch embedding, then per block the q/k/v and output
    projections (4 d^2 a token), the MLP (2 r d^2 a token) and attention (2 T^2 d); CaiT's class-attention
    blocks project all tokens to keys and values for one query."""
    tokens = patches + extra_tokens
    embed = 2 * patches * (img_size**2 / max(1, patches)) * in_chans * width
    block = 2 * tokens * (4 + 2 * mlp_ratio) * width**2 + 4 * tokens**2 * width
    cls = 2 * (patches + 1) * 2 * width**2 + 2 * (2 + 2 * mlp_ratio) * width**2
    return embed + depth * block + class_blocks * cls


def forward_flops(name: str, kwargs: Mapping[str, Any], in_chans: int, img_size: int) -> float:
    """Forward FLOPs of one image."""
    from trainer.models import model_info

    info = model_info(name, **kwargs)
    if info.kind in ("vit", "cait") and info.depth and info.width and info.num_patches:
        cait = info.kind == "cait"
        extra = 0 if cait else 1 + int(info.distilled)
        return transformer_flops(
            info.depth,
            info.width,
            info.num_patches,
            extra,
            in_chans,
            info.img_size or img_size,
            float(kwargs.get("mlp_ratio", 4.0)),
            class_blocks=int(kwargs.get("depth_token_only", 2)) if cait else 0,
        )
    return _forward_flops(name, json.dumps(dict(kwargs), sort_keys=True), in_chans, img_size)


def model_key(name: str, kwargs: Mapping[str, Any]) -> str:
    """What a rate is kept for: a model at its size."""
    extra = {k: v for k, v in kwargs.items() if k not in ("num_classes", "in_chans")}
    return name + (json.dumps(extra, sort_keys=True, separators=(",", ":")) if extra else "")


def teacher_key(spec) -> str:
    """A teacher's passes are priced apart from its training: inference mode, no backward, batch-wide."""
    return model_key(spec.teacher.name, spec.teacher_kwargs()) + " as teacher"


def images(spec) -> tuple[int, int]:
    """(training, validation) images an epoch of this run sees: the subsets, or the sizes its dataset says."""
    from trainer import datasets

    train, val = datasets.get(spec.data.dataset).sizes or GUESS
    return spec.data.train_subset or train, spec.data.val_subset or val


def loss_flops(spec) -> float:
    """Forward FLOPs per training image of the run's distillation losses, each method pricing its own work
    (trainer.methods: the manifold loss's relation maps, ViTKD's generation, the projections, ...)."""
    from trainer import methods
    from trainer.models import model_info

    if not methods.active(spec.distillation):
        return 0.0

    s = model_info(spec.student.name, **spec.model_kwargs())
    t = model_info(spec.teacher.name, **spec.teacher_kwargs()) if spec.teacher is not None else None
    return methods.loss_flops(spec, s, t)


def epoch_work(spec) -> tuple[dict[str, float], dict[str, float]]:
    """(own, shared) forward-FLOP work of one epoch of this run, by rate key: its own training step and
    evaluation, and the teacher's forward that its cohort shares."""
    n_train, n_val = images(spec)
    s_key = model_key(spec.student.name, spec.model_kwargs())
    f_s = forward_flops(spec.student.name, spec.model_kwargs(), spec.data.in_chans, spec.data.img_size)
    own = {s_key: n_train * (TRAIN * f_s + TRAIN * loss_flops(spec)) + n_val * f_s}
    shared = {}
    if spec.teacher is not None:
        shared[teacher_key(spec)] = n_train * forward_flops(
            spec.teacher.name, spec.teacher_kwargs(), spec.data.in_chans, spec.data.img_size
        )
    return own, shared


def setup_work(spec) -> dict[str, float]:
    """A process's set-up: a constant, and the teacher's evaluation when a run starts from scratch."""
    out = {SETUP: 1.0}
    if spec.teacher is not None:
        _, n_val = images(spec)
        out[teacher_key(spec)] = n_val * forward_flops(
            spec.teacher.name, spec.teacher_kwargs(), spec.data.in_chans, spec.data.img_size
        )
    return out


def price(work: Mapping[str, float], rates: Mapping[str, float]) -> float:
    common = rates.get("*", DEFAULT_RATE)
    return sum(v * rates.get(k, DEFAULT_SETUP if k == SETUP else common) for k, v in work.items())


def _add(a: dict[str, float], b: Mapping[str, float], times: float = 1.0) -> dict[str, float]:
    for k, v in b.items():
        a[k] = a.get(k, 0.0) + times * v
    return a


def member_cost(spec, rates: Mapping[str, float], epochs: int | None = None) -> float:
    """A run's own CPU-seconds in a cohort (its student steps and evaluations), `epochs` left."""
    own, _ = epoch_work(spec)
    return price(own, rates) * (spec.recipe.epochs if epochs is None else epochs)


def shared_cost(specs: Sequence, rates: Mapping[str, float]) -> float:
    """CPU-seconds a part of a cohort pays once: its set-up and the teacher's pass for its longest run."""
    first = specs[0]
    _, shared = epoch_work(first)
    epochs = max(s.recipe.epochs for s in specs)
    return price(setup_work(first), rates) + price(shared, rates) * epochs


# ---------------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------------
def fit_rates(
    observations: Iterable[tuple[float, Mapping[str, float]]], prior: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Rates (CPU-s per unit of work, by key) from (measured CPU-s, {key: work}) pairs.

    Epoch observations (no set-up in their work) fit the FLOP rates: first one common scale for the prior
    rates (total measured over total priced), then each key's rate by least squares in relative error,
    with a ridge pulling it to that common rate; keys without observations keep it. Set-up observations
    then give the set-up rate: their median once the teacher passes they include are priced (a process's
    first item pays one-time costs, so the median, not the mean). The result has a "*" entry, the common
    FLOP rate, for models never seen."""
    import statistics

    import numpy as np

    prior = dict(prior or {})
    common = prior.get("*", DEFAULT_RATE)
    obs = [(float(m), dict(w)) for m, w in observations if m > 0 and any(v > 0 for v in w.values())]
    epochs = [(m, w) for m, w in obs if SETUP not in w]
    setups = [(m, w) for m, w in obs if SETUP in w]
    out = {"*": common, **prior}
    if epochs:
        base = {k: prior.get(k, common) for _, w in epochs for k in w}
        scale = sum(m for m, _ in epochs) / sum(price(w, base) for _, w in epochs)
        keys = sorted(base)
        rows, rhs = [], []
        for m, w in epochs:  # sum_k x_k * base_k * scale * w_k / m = 1, x_k ~ 1
            rows.append([base[k] * scale * w.get(k, 0.0) / m for k in keys])
            rhs.append(1.0)
        for i, _ in enumerate(keys):
            rows.append([math.sqrt(RIDGE) * (j == i) for j in range(len(keys))])
            rhs.append(math.sqrt(RIDGE))
        x, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
        out.update({k: base[k] * scale * float(np.clip(x[i], 0.1, 10.0)) for i, k in enumerate(keys)})
        out["*"] = common * scale
    if setups:
        rest = [m - price({k: v for k, v in w.items() if k != SETUP}, out) for m, w in setups]
        out[SETUP] = max(0.0, statistics.median(rest))
    return out


def spec_from_params(params: Mapping[str, str]):
    """The spec an MLflow run logged as flattened params (trainer.tracking), or None if it does not parse."""
    import yaml

    from trainer.spec import parse_experiment

    nested: dict[str, Any] = {}
    for key, text in params.items():
        if key.startswith(("effective.", "protocol.")):
            continue
        try:
            value = None if text == "None" else yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if isinstance(value, str):  # YAML 1.1 reads Python's 1e-05 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        node = nested
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                return None
        node[last] = value
    try:
        return parse_experiment(nested)
    except Exception:
        return None


def observations(uri: str, scale: str) -> list[tuple[float, dict[str, float]]]:
    """(CPU-s, work) of every process-epoch and process set-up that the store's runs logged as `cost.*`."""
    from trainer import tracking
    from trainer.engine import cohort_key

    c = tracking.client(uri)
    groups: dict[tuple, list[tuple[Any, float]]] = {}
    for h, run in tracking.runs_by_hash(c, scale).items():
        if not any(k.startswith("cost.") for k in run.data.metrics):
            continue
        spec = spec_from_params(run.data.params)
        if spec is None or spec.content_hash() != h:
            continue  # logged by another kdgrid: its params no longer describe a spec
        key = cohort_key(spec)
        share = {m.step: m.value for m in tracking.retry(c.get_metric_history, run.info.run_id, tracking.TRAIN_SHARE)}
        for metric in ("cost.cpu_s", "cost.setup_cpu_s"):
            for m in tracking.retry(c.get_metric_history, run.info.run_id, metric):
                # an epoch's CPU is the equal training share plus the run's own evaluation: the share
                # names the process (stores from before it was logged: the value, equal when no evaluation)
                ident = share.get(m.step, m.value) if metric == "cost.cpu_s" else m.value
                groups.setdefault((key, metric, m.step, ident), []).append((spec, m.value))
    out = []
    for (_, metric, step, _), members in groups.items():
        specs = [s for s, _ in members]
        work: dict[str, float] = {}
        if metric == "cost.cpu_s":
            for s in specs:
                _add(work, epoch_work(s)[0])
            _add(work, epoch_work(specs[0])[1])
        else:
            work = setup_work(specs[0]) if step == 0 else {SETUP: 1.0}
        out.append((sum(v for _, v in members), work))
    return out


def calibrate(uri: str | None, scale: str) -> tuple[dict[str, float], int]:
    """(rates, how many process-epochs and set-ups they were fitted to) from the store's `cost.*` metrics."""
    obs = []
    if uri:
        try:
            obs = observations(uri, scale)
        except Exception:  # no store yet, or one that cannot be read: the default rates still order the grid
            obs = []
    return fit_rates(obs), len(obs)
