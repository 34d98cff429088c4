"""Small, fast experiment specs (as dicts) for the trainer's tests: seconds per run on one CPU thread."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

TEACHER_MODEL = {"name": "analog_cait_s24", "kwargs": {"embed_dim": 32, "num_heads": 4, "patch_size": 7}}
STUDENT_MODEL = {"name": "analog_deit_tiny_distilled", "kwargs": {"embed_dim": 16, "num_heads": 2, "patch_size": 7}}


def teacher(epochs: int = 3, train: int = 4096) -> dict:
    return {
        "name": "test teacher",
        "scale": "test",
        "seed": 0,
        "student": {**TEACHER_MODEL, "drop_path": 0.0},
        "data": {"dataset": "fashion_mnist", "train_subset": train, "val_subset": 1024},
        "recipe": {
            "epochs": epochs,
            "batch_size": 64,
            "lr": 2e-3,
            "lr_scale_batch": None,
            "warmup_epochs": 0,
            "log_every": 8,
        },
    }


def student(teacher_hash: str, epochs: int = 3, train: int = 4096, **distillation) -> dict:
    spec = teacher(epochs, train)
    spec.update(
        name="test student",
        student={**STUDENT_MODEL, "drop_path": 0.1},
        teacher={**TEACHER_MODEL, "source": "run", "run": teacher_hash},
        distillation=distillation or {"kd": "hard", "manifold": {"k": 192}},
    )
    return spec


def write(spec: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(copy.deepcopy(spec), sort_keys=False))
    return path
