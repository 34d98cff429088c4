"""A dataset is one file. This module is that file: it registers `stripes` (generated images of faint or bright
stripes under noise, two classes), and a teacher and a student distilled from it train on it
through `trainer.run.train_specs`: the runs finish and their metrics and dataset inputs reach MLflow. The
spec's validation, the "can it be read" check, MLflow's dataset inputs and the cost model ask the registry;
nothing else in kdgrid names it. An installed package adds a dataset through the `kdgrid.datasets`
entry-point group."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests import smoke_specs
from tests.conftest import ROOT
from trainer import data, datasets
from trainer.dataset_files import dataset_problem
from trainer.datasets import Dataset, register
from trainer.spec import DataSpec, parse_experiment


# --8<-- [start:dataset]
def stripes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n grey 28 x 28 images (uint8 N x 1 x H x W) of stripes under noise: label 0 faint, label 1 bright."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    bands = (torch.arange(28) // 2 % 2).to(torch.uint8)[:, None].expand(28, 28)
    contrast = torch.where(labels == 0, 40, 160).to(torch.uint8)
    noise = torch.randint(0, 90, (n, 28, 28), generator=g, dtype=torch.uint8)
    return (bands * contrast[:, None, None] + noise).unsqueeze(1), labels


@register
class Stripes(Dataset):
    name = "stripes"
    display_name = "Stripes"
    sizes = (512, 128)

    def problem(self, root):
        return None if root is None else f"stripes are generated: leave data.root unset, not {root!r}"

    def source(self, spec) -> str:
        return "generated"

    def build(self, spec, batching):
        return data.in_memory(spec, stripes(512, 0), stripes(128, 1), batching, mean=0.4, std=0.3)
        # --8<-- [end:dataset]


DATA = {"dataset": "stripes", "num_classes": 2, "train_subset": 256, "val_subset": 64}


def test_the_spec_and_every_stage_ask_the_registry():
    from orchestrator.launch.costs import images

    assert {"fashion_mnist", "imagenet", "stripes"} <= set(datasets.names())
    with pytest.raises(ValueError, match="unknown dataset 'cifar': one of fashion_mnist, imagenet, .*stripes"):
        DataSpec(dataset="cifar")
    assert dataset_problem("stripes", None) is None
    assert "leave data.root unset" in dataset_problem("stripes", "/data")
    assert "unknown dataset 'cifar'" in dataset_problem("cifar", None)
    spec = parse_experiment({**smoke_specs.teacher(), "data": {"dataset": "stripes"}})
    assert images(spec) == (512, 128)  # the cost model's epoch: its full sizes, or the spec's subsets
    assert images(spec.model_copy(update={"data": DataSpec(**DATA)})) == (256, 64)
    with pytest.raises(ValueError, match="takes the name 'stripes', already .*Stripes's"):
        register(type("Other", (Dataset,), {"name": "stripes"}))


def test_its_batches_keep_the_shared_order_and_augmentation():
    spec = DataSpec(**DATA, augment={"hflip": 0.5, "crop_padding": 2})
    train, val = data.build(spec, 32)
    again, _ = data.build(spec, 32)
    a, b = list(train.epoch(0, 1)), list(again.epoch(0, 1))
    assert len(a) == 256 // 32 and a[0][0].shape == (32, 1, 28, 28)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][1], next(iter(train.epoch(0, 2)))[1])  # another epoch, another order
    x, _ = next(iter(val.epoch(0, 0)))  # validation: unaugmented, normalised with the dataset's statistics
    assert torch.allclose(x, val.images[:32].float().div(255).sub(0.4).div(0.3))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_teacher_and_its_student_train_on_a_dataset_defined_in_one_file(tmp_path):
    from trainer import tracking
    from trainer.run import train_specs

    t = parse_experiment({**smoke_specs.teacher(epochs=2), "data": DATA})
    s = parse_experiment({**smoke_specs.student(t.content_hash(), epochs=1, kd="hard"), "data": DATA})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = train_specs([t, s], work=tmp_path / "runs", tracking_uri=uri, threads=1)
    assert results == {t.content_hash(): "finished", s.content_hash(): "finished"}
    c = tracking.client(uri)
    runs = tracking.runs_by_hash(c, "test")
    teacher, student = runs[t.content_hash()], runs[s.content_hash()]
    assert teacher.data.metrics["val.top1"] > 90  # stripes are learnt: the images and labels reach the model
    assert {"train.ce", "train.kd", "val.top1", "teacher.top1"} <= set(student.data.metrics)
    inputs = c.get_run(student.info.run_id).inputs.dataset_inputs
    assert sorted(i.dataset.name for i in inputs) == ["Stripes train", "Stripes val"]
    assert {i.dataset.source for i in inputs} >= {'{"uri": "generated", "split": "train", "images": 256}'}


PLUGIN = """
from trainer import data
from trainer.datasets import Dataset, register


@register
class Blank(Dataset):
    name = "blank"
    sizes = (64, 16)

    def build(self, spec, batching):
        import torch

        split = torch.zeros(64, 1, 28, 28, dtype=torch.uint8), torch.arange(64) % 2
        return data.in_memory(spec, split, split, batching, mean=0.0, std=1.0)
"""

PROBE = """
import json
from trainer import data, datasets
from trainer.spec import DataSpec
train, val = data.build(DataSpec(dataset="blank", img_size=14), 16)
print(json.dumps([datasets.names(), datasets.get("blank").display_name, len(train), list(val.images.shape)]))
"""


def test_an_installed_package_adds_a_dataset_through_its_entry_point(tmp_path):
    site = tmp_path / "site"
    info = site / "kdgrid_blank-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdgrid-blank\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kdgrid.datasets]\nblank = kdgrid_blank\n")
    (site / "kdgrid_blank.py").write_text(PLUGIN)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    names, display_name, train_batches, val_shape = json.loads(out.stdout)
    assert names == ["blank", "fashion_mnist", "imagenet"] and display_name == "blank"  # named by its key
    assert train_batches == 64 // 16 and val_shape == [64, 1, 14, 14]  # fitted to the spec's image size
