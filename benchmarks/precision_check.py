"""The engine's mixed precision on a device: fp16 autocast with a GradScaler, and bf16 autocast without one.

    python -m benchmarks.precision_check [--device cuda] [--json PATH]

A few AdamW steps (grad clipping on) of a small timm ViT through trainer.precision, the code the engine
steps with: the forward must run in the precision's dtype, every loss must be finite, and the run must
resume: the model, optimizer and scaler states saved half-way and loaded into fresh ones continue as the
uninterrupted run does (bit-equal is reported; fused attention kernels need not be bit-deterministic on a
GPU, so the check allows 1e-3). Needs torch and timm only (the device machine has no pydantic or MLflow).
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys

import torch

from trainer.precision import DTYPES, Precision, backward, step

STEPS, RESUME_AT, CLIP = 8, 4, 1.0


def _size(device: str) -> tuple[int, int]:
    """(batch, image size): small on a CPU, where fp16/bf16 kernels are emulated (10x fp32's time)."""
    return (32, 64) if device.startswith("cuda") else (4, 32)


def _setup(device: str):
    import timm

    torch.manual_seed(0)
    img = _size(device)[1]
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=img).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.startswith("cuda"))
    return model.train(), opt


def _batches(device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    n, img = _size(device)
    return [
        (torch.randn(n, 3, img, img, generator=g).to(device), torch.randint(0, 10, (n,), generator=g).to(device))
        for _ in range(STEPS)
    ]


def _train(model, opt, scaler, prec: Precision, batches) -> tuple[list[float], set]:
    losses, dtypes = [], set()
    for x, y in batches:
        with prec.autocast():
            out = model(x)
        dtypes.add(str(out.dtype))
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        backward(loss, scaler)
        step(opt, scaler, model.parameters(), CLIP)
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, dtypes


def check(name: str, device: str) -> dict:
    prec = Precision(name, device)
    batches = _batches(device)
    model, opt = _setup(device)
    scaler = prec.scaler()
    head, dtypes = _train(model, opt, scaler, prec, batches[:RESUME_AT])
    saved = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "scaler": scaler.state_dict() if scaler else None}
    )
    tail, more = _train(model, opt, scaler, prec, batches[RESUME_AT:])
    model2, opt2 = _setup(device)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    scaler2 = prec.scaler()
    if scaler2 is not None:
        scaler2.load_state_dict(saved["scaler"])
    restored = scaler2.state_dict() == saved["scaler"] if scaler2 is not None else True
    tail2, _ = _train(model2, opt2, scaler2, prec, batches[RESUME_AT:])
    diff = max((a - b).abs().max().item() for a, b in zip(model.parameters(), model2.parameters()))
    out = {
        "precision": prec.label,
        "device": device,
        "forward_dtypes": sorted(dtypes | more),
        "losses": head + tail,
        "resumed_losses": tail2,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "scaler_restored": restored,
        "resume_bit_equal": diff == 0.0,
        "resume_max_param_diff": diff,
    }
    out["ok"] = (
        out["forward_dtypes"] == [str(DTYPES[name])]
        and all(math.isfinite(v) for v in out["losses"] + tail2)
        and (scaler is None) == (name != "fp16")
        and restored
        and diff <= 1e-3
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    results = [check(name, args.device) for name in ("fp16", "bf16")]
    for r in results:
        scale = f"scale {r['scaler']['scale']:g}" if r["scaler"] else "no scaler"
        resume = "bit-equal" if r["resume_bit_equal"] else f"max diff {r['resume_max_param_diff']:.2e}"
        print(
            f"{r['precision']:14s} on {r['device']}: forward {','.join(r['forward_dtypes'])}, loss "
            f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}, {scale}, resume "
            f"{resume}: "
            f"{'PASS' if r['ok'] else 'FAIL'}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
