"""A planned run in a line: teacher, student, method and the settings that make it what it is."""

from __future__ import annotations

from orchestrator.plan.model import PlannedRun
from trainer import methods
from trainer.spec import RecipeSpec


def _short(name: str | None) -> str:
    """cait_s24_224 / analog_cait_s24 / cait_s24_224.fb_dist_in1k -> cait_s24."""
    if name is None:
        return "-"
    from trainer.models import SHORT

    base = name.split(".")[0]
    if base in SHORT:
        return SHORT[base]
    base = base.removeprefix("analog_").removesuffix("_distilled")
    return SHORT.get(base, base)


def describe(run: PlannedRun) -> tuple[str, str, str, str]:
    """(teacher, student, method, key settings) for display."""
    s = run.spec
    if run.role == "teacher":
        d = s.data
        return (
            "-",
            _short(s.student.name),
            "train teacher",
            f"epochs={s.recipe.epochs} batch={s.recipe.batch_size} lr={s.recipe.lr:g} "
            f"train_subset={d.train_subset or 'all'} seed={s.seed}",
        )
    d = s.distillation
    teacher = "-"
    if s.teacher is not None:
        how = {"run": f"run {(s.teacher.run or '')[:8]}", "hub": "hub", "checkpoint": "checkpoint"}[s.teacher.source]
        # weights from timm's hub are named in full (the pretrained tag says which weights)
        teacher = f"{s.teacher.name if s.teacher.source == 'hub' else _short(s.teacher.name)} ({how})"
    parts = []
    used = methods.active(d)
    for m in used:
        parts += m.describe(m.settings(d))
    if d.kd != "none":  # which head the logit distillation trains
        head = "dist head" if "distilled" in s.student.name else "class head"
        parts = [p.replace(f"kd={d.kd}", f"kd={d.kd} on {head}", 1) if p.startswith("kd=") else p for p in parts]
    # the method: the feature (and other) methods by name, else the logit distillation's kind
    method = "+".join(m.key for m in used if m.key != "kd") or d.kd
    parts.append(f"drop_path={s.student.drop_path:g}")
    r = s.recipe
    parts.append(
        f"epochs={r.epochs} warmup={r.warmup_epochs:g} lr={r.lr:g}"
        + (f" per {r.lr_scale_batch} images" if r.lr_scale_batch else "")
        + (f" clip={r.clip_grad:g}" if r.clip_grad is not None else "")
    )
    parts.append(f"batch {r.batch_size}/device")
    return teacher, s.student.name, method, " ".join(parts)


def batch_line(r: RecipeSpec) -> str:
    """'per-device batch 128 x world size 1 x accumulation 8 = global batch 1024'."""
    w = r.world_size or 1
    acc = r.accumulation or 1
    return (
        f"per-device batch {r.batch_size} × world size {w} × accumulation {acc} = global batch {r.global_batch_at(w)}"
    )
