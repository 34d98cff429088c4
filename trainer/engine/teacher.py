"""The frozen teacher: loaded from timm's hub, a checkpoint file or a finished run of the grid; its own
validation transform; and its accuracy, measured once for the runs that start with it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trainer import datasets, models, tracking, workdir
from trainer.engine.cohort import Cohort
from trainer.engine.evaluation import evaluate
from trainer.engine.runlog import log_predictions
from trainer.protocol import sha256_file, teacher_protocol
from trainer.spec import ExperimentSpec
from trainer.taps import forward_taps


def load_teacher(spec: ExperimentSpec, wd: Path, tracking_uri: str | None, device: str) -> nn.Module:
    """The frozen teacher, with `kdgrid_weights`: where its weights came from (source, tag, file sha256)."""
    t = spec.teacher
    assert t is not None
    if t.source == "hub":
        import timm

        model = timm.create_model(t.name, pretrained=True, **spec.teacher_kwargs())
        weights = {"source": "hub", "weights": t.name, "sha256": _hub_file_sha256(model) or "unknown"}
    else:
        path = Path(t.path).expanduser() if t.source == "checkpoint" else _teacher_run_file(spec, wd, tracking_uri)
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


def _teacher_run_file(spec: ExperimentSpec, wd: Path, tracking_uri: str | None) -> Path:
    """The final weights of the grid's run that trained the teacher: in the work directory, or fetched from
    its MLflow run (another machine trained it)."""
    t = spec.teacher
    path = workdir.run_dir(wd, t.run) / "final.pt"
    if path.exists():
        return path
    c = tracking.client(tracking_uri)
    run = tracking.runs_by_hash(c, spec.scale, [t.run]).get(t.run)
    if run is None or run.info.status != "FINISHED":
        raise FileNotFoundError(
            f"teacher run {t.run} ({t.name}) has not finished: train it first "
            f"(`kdgrid reproduce` trains teachers before the students that need them)"
        )
    return tracking.fetch_artifact(c, run.info.run_id, "checkpoints/final.pt", path.parent)


def _hub_file_sha256(model: nn.Module) -> str | None:
    """sha256 of the weights file timm read from the Hugging Face cache, where it can be found."""
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
    """(validation source, what transform) for the teacher's own accuracy, as the dataset says: at an image
    folder, the teacher's eval transform from timm's pretrained_cfg; on the in-memory CPU datasets the
    student's (the analogs have no pretrained config)."""
    return datasets.get(spec.data.dataset).teacher_val_data(teacher, spec, val_data)


def evaluate_teacher(cohort: Cohort) -> None:
    """The frozen teacher's accuracy (with its own eval transform), and its per-image predictions, logged to
    the runs that start now (a resumed run logged them when it started; one that starts again from epoch 0,
    its checkpoints lost, keeps those it logged)."""
    starting = [m for m in cohort.members if m.start_epoch == 0]
    if not starting:
        return
    env = cohort.env
    predictions: dict | None = {} if env.world_size == 1 else None
    t_val, how = teacher_val_data(cohort.teacher, cohort.spec, cohort.val_data)
    t_eval = evaluate(cohort.teacher, t_val, env.device, cohort.precision.autocast, predictions)
    if not env.main:
        return
    for m in starting:
        if m.run.logged_steps("teacher.top1"):
            continue
        m.run.log_metrics({"teacher.top1": t_eval["top1"], "teacher.top5": t_eval["top5"]}, step=0)
        m.run.log_params({"protocol": teacher_protocol({**cohort.teacher.kdgrid_weights, "eval_transform": how})})
        if predictions:
            log_predictions(m, "teacher.json", predictions)


def teacher_forward(teacher: nn.Module, x, blocks: tuple, autocast) -> tuple:
    """The teacher's logits and tapped features for a batch, computed once for the whole cohort. Under
    inference mode, then cloned: inference tensors cannot be saved for the students' backward."""
    with torch.inference_mode(), autocast():
        out, feats = forward_taps(teacher, x, blocks)
    return out.clone(), {b: f.clone() for b, f in zip(blocks, feats)}
