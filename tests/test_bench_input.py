"""benchmarks/bench_input.py on a tiny generated folder: ImageNet-like JPEGs, every section of its printout,
numbers that agree with each other, and the transform it measures is the one kdgrid builds at the paper scale."""

import contextlib
import json
import math
import re

import pytest
from PIL import Image

from benchmarks import bench_input
from orchestrator.grid import load_scale
from trainer import data as data_mod

ROW = re.compile(r"^(folder|transform|stage|decode|loader|cores|gpu)\s+(.+?)\s{2,}(\S.*)$")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One --quick run (16 images, 1 worker) with a bench_gpu JSON: (its return value, rows, folder)."""
    tmp = tmp_path_factory.mktemp("bench_input")
    gpu = tmp / "bench_gpu.json"
    gpu.write_text(json.dumps({"device": "a GPU", "images_per_s": 900.0, "cohort8_per_student": 0.5}))
    capture = tmp / "out.txt"
    with open(capture, "w") as f, contextlib.redirect_stdout(f):
        data = bench_input.main(["--quick", "--dir", str(tmp / "jpegs"), "--gpu-json", str(gpu)])
    rows = {}
    for line in capture.read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows[(m.group(1), m.group(2))] = m.group(3)
    return data, rows, tmp / "jpegs"


def test_folder_holds_imagenet_like_jpegs(quick):
    _, _, root = quick
    train = sorted((root / "train").rglob("*.JPEG"))
    assert len(train) == 16 and len({p.parent for p in train}) == 2
    assert (root / "val").is_dir()
    sizes = [p.stat().st_size / 1000 for p in train]
    assert 90 < sum(sizes) / len(sizes) < 130, sizes  # ~110 KB, ImageNet's mean
    with Image.open(train[0]) as im:
        assert (im.format, im.size, im.mode) == ("JPEG", (500, 375), "RGB")


def test_measures_kdgrids_paper_transform(quick):
    """The transform timed is what trainer.data.build makes of experiments/paper.yaml's data section."""
    data, rows, root = quick
    spec = load_scale("paper", [f"data.root={root}"])[0].data
    a = spec.augment
    assert (spec.img_size, a.rand_augment, a.reprob) == (224, "rand-m9-mstd0.5-inc1", 0.25)
    built = data_mod.build(spec, 8)[0].dataset.transform
    assert data["transform"] == repr(built)
    assert data["stages"] == [type(t).__name__ for t in built.transforms]
    assert data["stages"][0] == "RandomResizedCropAndInterpolation" and data["stages"][-1] == "RandomErasing"
    assert rows[("transform", "kdgrid's paper-scale train transform (trainer.data.build)")] == " > ".join(
        data["stages"]
    )
    # every stage timed, decode first
    stage_names = [m for s, m in rows if s == "stage"]
    assert stage_names[0].startswith("decode") and len(stage_names) == len(data["stages"]) + 2


def test_timm_prefetcher_path_augments_alike(quick):
    """timm's prefetcher path runs kdgrid's augmentation in the workers and moves normalisation and random
    erasing (kdgrid's probability, per-pixel mode) to the device."""
    _, _, root = quick
    spec = load_scale("paper", [f"data.root={root}"])[0].data
    kdgrid = data_mod.build(spec, 8)[0].dataset.transform.transforms
    loader = bench_input.timm_epoch(spec, 8, 0)
    worker = loader.loader.dataset.transform.transforms
    assert [repr(t) for t in worker[:3]] == [repr(t) for t in kdgrid[:3]]
    assert not any(type(t).__name__ in ("Normalize", "RandomErasing") for t in worker)
    assert loader.random_erasing.probability == spec.augment.reprob and loader.random_erasing.mode == "pixel"


def test_printout_numbers_agree(quick):
    data, rows, _ = quick
    assert {s for s, _ in rows} == {"folder", "transform", "stage", "decode", "loader", "cores", "gpu"}
    stages = [float(v) for (s, m), v in rows.items() if s == "stage" and not m.startswith("total")]
    total_ms, per_core = (float(x) for x in rows[("stage", "total: CPU ms/image | images/s per core")].split(" | "))
    assert total_ms == pytest.approx(sum(stages), abs=0.05) and per_core == pytest.approx(1000 / total_ms, rel=0.01)
    # each path timed (wall rate, CPU per image in the workers); the per-core rate is kdgrid's worker CPU cost
    assert set(data["loader"]) == {f"{key}/1" for _, key in bench_input.PATHS.values()}
    assert all(v["images_per_s"] > 0 and v["worker_cpu_ms"] > 0 for v in data["loader"].values())
    per_core = data["per_core"]
    assert per_core == pytest.approx(1000 / data["loader"]["kdgrid/1"]["worker_cpu_ms"])
    cores = {int(m.split()[0]): v for (s, m), v in rows.items() if s == "cores"}
    assert set(cores) == set(bench_input.CORES)
    for n, value in cores.items():
        images, steps = (float(x) for x in value.split(" | "))
        assert images == pytest.approx(n * per_core, abs=0.5) and steps == pytest.approx(images / 128, abs=0.01)
    gpu = {m: v for (s, m), v in rows.items() if s == "gpu"}
    solo = next(v for m, v in gpu.items() if m.endswith("solo step"))
    cohort = next(v for m, v in gpu.items() if "cohort of 8" in m)
    assert solo.startswith(f"{math.ceil(900 / per_core)} ") and cohort.startswith(f"{math.ceil(225 / per_core)} ")
