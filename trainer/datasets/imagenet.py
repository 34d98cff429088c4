"""ImageNet-1k, the paper's dataset: a folder with train/ and val/ subfolders of class folders, read with
torchvision's ImageFolder through DeiT's transforms from timm, one sample at a time behind a DataLoader
(trainer.data.FolderData). Another dataset in that layout is a subclass with its own name and sizes."""

from __future__ import annotations

from pathlib import Path

from trainer import data
from trainer.datasets import Dataset, register


@register
class ImageNet(Dataset):
    name = "imagenet"
    display_name = "ImageNet-1k"
    sizes = (1281167, 50000)

    def problem(self, root):
        path = Path(root or "").expanduser()
        if not root or not (path / "train").is_dir() or not (path / "val").is_dir():
            return (
                f"{self.display_name} not found at {root!r}: set data.root to a folder with train/ and val/ "
                "subfolders of class folders (the layout torchvision's ImageFolder reads)"
            )
        return None

    def build(self, spec, batching):
        from torchvision.datasets import ImageFolder

        root = Path(spec.root).expanduser()
        train_tf, val_tf = data.image_transforms(spec)
        train_ds, val_ds = ImageFolder(root / "train", train_tf), ImageFolder(root / "val", val_tf)
        for ds, train in ((train_ds, True), (val_ds, False)):
            idx = data.subset(spec, len(ds), train)
            if idx is not None:
                ds.samples = [ds.samples[i] for i in idx.tolist()]
                ds.targets = [s[1] for s in ds.samples]
        return data.from_files(spec, train_ds, val_ds, batching)

    def teacher_val_data(self, teacher, spec, val_data):
        """The validation images through the teacher's own eval transform, from timm's pretrained_cfg
        (crop_pct, interpolation, mean/std)."""
        from timm.data import create_transform, resolve_data_config

        cfg = resolve_data_config({}, model=teacher)
        cfg["input_size"] = (spec.data.in_chans, spec.data.img_size, spec.data.img_size)
        tf = create_transform(**cfg, is_training=False)
        how = (
            f"crop_pct={cfg.get('crop_pct')} {cfg.get('interpolation')} "
            f"mean={tuple(round(v, 4) for v in cfg['mean'])} std={tuple(round(v, 4) for v in cfg['std'])}"
        )
        return data.with_transform(val_data, tf), how
