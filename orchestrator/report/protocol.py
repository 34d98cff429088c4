"""The reference protocols, and every way the finished runs of a report deviate from theirs (the banner).

Computed from what the runs logged (`protocol.*` params, trainer/protocol.py), not from the scale's name: a
`--scale paper` run with one epoch and 16 images is an analog, and says so. Each run is held to its own
reference: the paper's (DeiT's recipe) for Tables 2-7, Figure 4 and DeiT's table, the released code's for the
rows `--recipe released` trains, ViTKD's (cls_KD) for ViTKD's table (experiments/sources.yaml says which
table follows which). Pure: no MLflow here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    key: str  # the `protocol.<key>` param
    label: str
    paper: str  # the reference's value, as the param would read
    source: str
    blocking: bool = True  # False: recorded beside the banner, but the numbers still compare
    since: bool = False  # logged only since this check: runs from before, which lack it, are not held to it


IMAGES = (
    Setting("train_images", "train images", "1281167", "ILSVRC-2012 train (paper §4.1: over 1.2 million)"),
    Setting("val_images", "val images", "50000", "ILSVRC-2012 val (paper §4.1: 50,000)"),
)
LR_READING = (
    "paper §4.2 'The batch size is 128 and the learning rate is 5e-4', read as 5e-4 per 512 images as DeiT's "
    "main.py:304 scales it (lr × batch × world size / 512): 1e-3 at the global batch of 1024; the text does "
    "not say per what batch"
)

# The paper's protocol for the student runs (Section 4.2: "We use 8 Tesla-V100 GPUs and train models for 300
# epochs. The batch size is 128 and the learning rate is 5e-4. ... the resolution of input images is fixed as
# 224x224"; Section 4.1: ImageNet-1k; DeiT's main.py for what the paper inherits).
PAPER: tuple[Setting, ...] = (
    Setting("dataset", "dataset", "imagenet", "paper §4.1 (ImageNet-1k)"),
    Setting("epochs", "epochs", "300", "paper §4.2, Tables 2-7 captions"),
    Setting("global_batch", "global batch", "1024", "paper §4.2: batch 128 on each of 8 V100s"),
    Setting("batch_per_device", "per-device batch", "128", "paper §4.2 and §3.2 (n = 128 in the relation maps)"),
    Setting("lr", "lr at the global batch", "0.001", LR_READING, since=True),
    Setting("img_size", "image size", "224", "paper §4.2: 224×224"),
    *IMAGES,
    Setting("precision", "precision", "fp16 AMP", "DeiT main.py (torch.cuda.amp; V100s have no bf16)", blocking=False),
)
# The released script (Distillation/ManifoldKD README.md:46): DeiT's main.py at its default 64 per GPU on 8.
RELEASED: tuple[Setting, ...] = (
    Setting("dataset", "dataset", "imagenet", "released README.md:46 (ImageNet-1k)"),
    Setting("epochs", "epochs", "300", "released main.py:36 --epochs 300"),
    Setting("global_batch", "global batch", "512", "released README.md:46 --nproc_per_node=8 × 64"),
    Setting("batch_per_device", "per-device batch", "64", "released main.py:35 --batch-size 64"),
    Setting("lr", "lr at the global batch", "0.0005", "released main.py:80, :318 (5e-4 × 512 / 512)", since=True),
    Setting("img_size", "image size", "224", "released main.py:51 --input-size 224"),
    *IMAGES,
    Setting("precision", "precision", "fp16 AMP", "released engine.py:40 (torch.cuda.amp)", blocking=False),
)
# ViTKD's released configs (yzd-v/cls_KD@8a16562, mmcls 0.23.2); the per-device batch enters none of its losses.
VITKD: tuple[Setting, ...] = (
    Setting("dataset", "dataset", "imagenet", "cls_KD imagenet_bs64_swin_224.py:4"),
    Setting("epochs", "epochs", "300", "cls_KD imagenet_bs1024_adamw_swin.py:30"),
    Setting("global_batch", "global batch", "1024", "cls_KD: 4 GPUs × 256 (DeiT-T/S), 16 × 64 (DeiT-B)"),
    Setting("lr", "lr at the global batch", "0.001", "cls_KD imagenet_bs1024_adamw_swin.py:13", since=True),
    Setting("img_size", "image size", "224", "cls_KD imagenet_bs64_swin_224.py:12"),
    *IMAGES,
    Setting("precision", "precision", "fp32", "cls_KD: no config sets fp16 (mmcls/apis/train.py:182)", blocking=False),
)
# experiments/sources.yaml's protocols -> the reference the banner holds their runs to, and how it names it.
REFERENCES: dict[str, tuple[str, tuple[Setting, ...]]] = {
    "deit": ("the paper's protocol", PAPER),
    "released": ("the released code's protocol", RELEASED),
    "vitkd": ("ViTKD's protocol (cls_KD)", VITKD),
}


def _fmt(key: str, value: str) -> str:
    try:
        return f"{int(float(value)):,}" if key in ("train_images", "val_images") else value
    except ValueError:
        return value


def _same(a: str | None, b: str) -> bool:
    """Logged and reference values agree: as text, or as numbers (a float logged as 0.0010000000000000002)."""
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return False


def deviations(
    protocols: Iterable[Mapping[str, str]], paper: tuple[Setting, ...] = PAPER
) -> tuple[list[str], list[str], int]:
    """(blocking deviations, notes, runs read) over the runs' logged protocols.

    Each deviation reads "epochs 1 vs 300"; a setting that differs between runs lists their values
    ("epochs 1, 2 vs 300"). A setting no run logged is a deviation too ("... not logged"), except one logged
    only since recently (`since`), which runs from before do not carry.
    """
    protocols = [p for p in protocols if p]
    blocking: list[str] = []
    notes: list[str] = []
    if not protocols:
        return ["no finished run logged its protocol (trained before kdgrid logged `protocol.*`)"], [], 0
    for s in paper:
        seen = list(dict.fromkeys(p.get(s.key) for p in protocols))
        if s.since:
            seen = [v for v in seen if v is not None]
        if all(_same(v, s.paper) for v in seen):
            continue
        shown = ", ".join(_fmt(s.key, v) if v is not None else "not logged" for v in seen)
        (blocking if s.blocking else notes).append(f"{s.label} {shown} vs {_fmt(s.key, s.paper)}")
    how = sorted({(p.get("world_size", "?"), p.get("accumulation", "?")) for p in protocols})
    notes.append(
        "trained as "
        + "; ".join(f"{w} device(s) × accumulation {a}" for w, a in how)
        + " (the global batch is what the optimiser sees; the split does not change the run)"
    )
    teachers = sorted(
        {
            (p.get("teacher_source"), p.get("teacher_weights"), p.get("teacher_sha256"))
            for p in protocols
            if p.get("teacher_source")
        }
    )
    for src, weights, sha in teachers:
        if src != "hub":
            notes.append(
                f"teacher weights from {src} {weights} (sha256 {str(sha)[:12]}), not timm's hub weights "
                "the paper quotes"
            )
    return blocking, notes, len(protocols)


def banner(protocols: Iterable[Mapping[str, str]]) -> tuple[bool, str]:
    """(comparable, the sentence after the banner's label), all runs held to the paper's protocol."""
    return banner_by_reference({"deit": list(protocols)})


def banner_by_reference(groups: Mapping[str, list[Mapping[str, str]]]) -> tuple[bool, str]:
    """(comparable, the sentence after the banner's label): each group of runs held to its reference
    (REFERENCES' keys: deit, released, vitkd); comparable when no group deviates where it matters."""
    groups = {k: v for k, v in groups.items() if v}
    judged = {k: deviations(v, REFERENCES[k][1]) for k, v in groups.items()}
    n = sum(j[2] for j in judged.values())
    if len(judged) == 1:  # one reference: named once
        ((key, (blocking, notes, n)),) = judged.items()
        name = REFERENCES[key][0]
        tail = f" Noted: {'; '.join(notes)}." if notes else ""
        if not blocking:
            return True, f"The {n} finished run(s) followed {name}.{tail}"
        return False, f"Deviations from {name} in the {n} finished run(s): {'; '.join(blocking)}.{tail}"
    blocking = [f"{REFERENCES[k][0]} ({j[2]} runs): {'; '.join(j[0])}" for k, j in judged.items() if j[0]]
    noted = [f"{REFERENCES[k][0]}: {'; '.join(j[1])}" for k, j in judged.items() if j[1]]
    tail = f" Noted — {' — '.join(noted)}." if noted else ""
    names = ", ".join(f"{REFERENCES[k][0]} ({j[2]})" for k, j in judged.items())
    if not blocking:
        return True, f"The {n} finished run(s) followed their reference protocols: {names}.{tail}"
    return False, f"Deviations in the {n} finished run(s) — {' — '.join(blocking)}.{tail}"


def sources_line(keys: Iterable[str]) -> str:
    """The reference protocols' values and where each comes from (the banner's sources), the lr reading
    among them."""
    parts = []
    for key in dict.fromkeys(keys):
        name, settings = REFERENCES[key]
        values = "; ".join(f"{s.label} {_fmt(s.key, s.paper)} ({s.source})" for s in settings)
        parts.append(f"{name[0].upper()}{name[1:]}: {values}.")
    return " ".join(parts)
