"""The training and validation sets of a run as MLflow dataset inputs (the UI's Dataset column).

Name, source (where the images were read from), a digest of what selects the images (dataset, source,
subset sizes and seed, image size) and the image counts, as the profile. The digest does not read the
images: at ImageNet scale that would take minutes; two runs with the same digest read the same files.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from trainer import datasets as registry
from trainer.spec import DataSpec


def source_of(spec: DataSpec) -> str:
    return registry.get(spec.dataset).source(spec)


def count(data: Any) -> int:
    """Images in a batch source (TensorData or FolderData), all ranks together."""
    return len(data.labels) if hasattr(data, "labels") else len(data.dataset)


def digest(spec: DataSpec, split: str, n: int) -> str:
    key = {
        "dataset": spec.dataset,
        "source": source_of(spec),
        "split": split,
        "images": n,
        "subset": spec.train_subset if split == "train" else spec.val_subset,
        "subset_seed": spec.subset_seed,
        "img_size": spec.img_size,
        "in_chans": spec.in_chans,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def datasets(spec: DataSpec, train_data: Any, val_data: Any) -> list[tuple[Any, str]]:
    """[(mlflow Dataset, "training"), (mlflow Dataset, "validation")]."""
    from mlflow.entities import Dataset

    name = registry.get(spec.dataset).display_name
    n_train, n_val = count(train_data), count(val_data)
    profile = json.dumps(
        {
            "num_train_images": n_train,
            "num_val_images": n_val,
            "img_size": spec.img_size,
            "num_classes": spec.num_classes,
        }
    )
    out = []
    for split, ctx, n in (("train", "training", n_train), ("val", "validation", n_val)):
        out.append(
            (
                Dataset(
                    name=f"{name} {split}",
                    digest=digest(spec, split, n),
                    source_type="local",
                    source=json.dumps({"uri": source_of(spec), "split": split, "images": n}),
                    profile=profile,
                ),
                ctx,
            )
        )
    return out
