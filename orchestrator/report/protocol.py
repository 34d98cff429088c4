"""The paper's protocol, and every way the runs of a report deviate from it (the report's banner).

Computed from what the runs logged (`protocol.*` params, trainer/protocol.py), not from the scale's name: a
`--scale paper` run with one epoch and 16 images is an analog, and says so. Pure: no MLflow here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    key: str  # the `protocol.<key>` param
    label: str
    paper: str  # the paper's value, as the param would read
    source: str
    blocking: bool = True  # False: recorded beside the banner, but the numbers still compare


# The paper's protocol for the student runs (Section 4.2: "We use 8 Tesla-V100 GPUs and train models for 300
# epochs. The batch size is 128 and the learning rate is 5e-4. ... the resolution of input images is fixed as
# 224x224"; Section 4.1: ImageNet-1k; DeiT's main.py for what the paper inherits).
PAPER: tuple[Setting, ...] = (
    Setting("dataset", "dataset", "imagenet", "paper §4.1 (ImageNet-1k)"),
    Setting("epochs", "epochs", "300", "paper §4.2, Tables 2-7 captions"),
    Setting("global_batch", "global batch", "1024", "paper §4.2: batch 128 on each of 8 V100s"),
    Setting("batch_per_device", "per-device batch", "128", "paper §4.2 and §3.2 (n = 128 in the relation maps)"),
    Setting("img_size", "image size", "224", "paper §4.2: 224×224"),
    Setting("train_images", "train images", "1281167", "ILSVRC-2012 train (paper §4.1: over 1.2 million)"),
    Setting("val_images", "val images", "50000", "ILSVRC-2012 val (paper §4.1: 50,000)"),
    Setting("precision", "precision", "fp16 AMP", "DeiT main.py (torch.cuda.amp; V100s have no bf16)", blocking=False),
)


def _fmt(key: str, value: str) -> str:
    try:
        return f"{int(float(value)):,}" if key in ("train_images", "val_images") else value
    except ValueError:
        return value


def deviations(
    protocols: Iterable[Mapping[str, str]], paper: tuple[Setting, ...] = PAPER
) -> tuple[list[str], list[str], int]:
    """(blocking deviations, notes, runs read) over the runs' logged protocols.

    Each deviation reads "epochs 1 vs 300"; a setting that differs between runs lists their values
    ("epochs 1, 2 vs 300"). A setting no run logged is a deviation too ("... not logged").
    """
    protocols = [p for p in protocols if p]
    blocking: list[str] = []
    notes: list[str] = []
    if not protocols:
        return ["no finished run logged its protocol (trained before kdgrid logged `protocol.*`)"], [], 0
    for s in paper:
        seen = list(dict.fromkeys(p.get(s.key) for p in protocols))
        if seen == [s.paper]:
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
    """(comparable, the sentence after the banner's label)."""
    blocking, notes, n = deviations(protocols)
    tail = f" Noted: {'; '.join(notes)}." if notes else ""
    if not blocking:
        return True, f"The {n} finished run(s) followed the paper's protocol.{tail}"
    return False, (f"Deviations from the paper's protocol in the {n} finished run(s): {'; '.join(blocking)}.{tail}")
