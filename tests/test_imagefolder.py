"""The paper-scale data path on a tiny generated ImageFolder: DeiT's augmentations from timm (RandAugment,
Mixup/CutMix with label smoothing, random erasing), a teacher loaded from a checkpoint file, soft KD."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from trainer import models, tracking
from trainer.run import train_specs
from trainer.spec import load_experiment

pytestmark = pytest.mark.slow
TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2}


def make_folder(root, n_per_class: int = 12):
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls, colour in (("n0001", (200, 30, 30)), ("n0002", (30, 30, 200))):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n_per_class):
                noise = torch.randint(0, 60, (40, 40, 3), generator=g).to(torch.uint8)
                img = (torch.tensor(colour, dtype=torch.uint8) + noise).clamp(0, 255).numpy()
                Image.fromarray(img).save(d / f"{i}.JPEG")


def test_imagefolder_with_deit_augmentations_and_a_checkpoint_teacher(tmp_path):
    make_folder(tmp_path / "imagenet")
    teacher = models.create("deit_tiny_patch16_224", num_classes=2, **TINY_VIT)
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pth")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""
scale: test-folder
student: {{name: deit_tiny_distilled_patch16_224, kwargs: {TINY_VIT}, drop_path: 0.1}}
teacher: {{name: deit_tiny_patch16_224, kwargs: {TINY_VIT}, source: checkpoint, path: {tmp_path / "teacher.pth"}}}
data:
  dataset: imagenet
  root: {tmp_path / "imagenet"}
  img_size: 32
  in_chans: 3
  num_classes: 2
  augment: {{rand_augment: rand-m9-mstd0.5-inc1, color_jitter: 0.3, reprob: 0.25, mixup: 0.8, cutmix: 1.0,
             smoothing: 0.1, crop_scale: [0.5, 1.0]}}
recipe: {{epochs: 2, batch_size: 8, lr: 5.0e-4, warmup_epochs: 1, ema: true, ema_decay: 0.9, clip_grad: 5.0,
          log_every: 1}}
distillation: {{kd: soft, tau: 3.0, kd_weight: 0.5}}
""")
    s = load_experiment(spec)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert train_specs([s], work=tmp_path / "runs", tracking_uri=uri, threads=1) == {s.content_hash(): "finished"}
    c = tracking.client(uri)
    run = tracking.runs_by_hash(c, "test-folder")[s.content_hash()]
    m = run.data.metrics
    assert {"train.ce", "train.kd", "val.top1", "val_ema.top1", "teacher.top1"} <= set(m)
    assert 0 <= m["val.top1"] <= 100 and m["train.ce"] > 0
    # DeiT's linear scaling: 5e-4 x 8 x 1 / 512
    assert float(run.data.params["effective.lr"]) == pytest.approx(5e-4 * 8 / 512)


def test_deit_randaugment_posterize_at_full_magnitude_does_not_crash(tmp_path):
    """DeiT's 'rand-m9-mstd0.5-inc1' draws magnitudes up to 10, where timm's PosterizeIncreasing keeps 0 bits;
    Pillow 13 raises on 0 bits. The data path must give the old result (black) instead of killing the run."""
    from timm.data import create_transform

    from trainer.data import _posterize_zero_bits

    tf = create_transform(32, is_training=True, auto_augment="rand-m9-mstd0.5-inc1")
    _posterize_zero_bits(tf)
    ra = next(t for t in tf.transforms if hasattr(t, "ops"))
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    op.magnitude, op.magnitude_std, op.prob = 10, 0, 1.0
    img = Image.fromarray((torch.arange(32 * 32 * 3) % 256).to(torch.uint8).reshape(32, 32, 3).numpy())
    out = op(img)
    assert out.size == img.size and max(out.getextrema(), key=lambda e: e[1])[1] == 0  # 0 bits kept: black
    op.magnitude = 5  # 2 bits kept: only the top two bits of each value survive
    assert {v & 0x3F for v in op(img).tobytes()} == {0}
