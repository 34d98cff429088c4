"""DeiT's training input pipeline at 224 px on this CPU: images/s per loader core, and the cores per GPU.

    python -m benchmarks.bench_input                              # 512 generated JPEGs, 1 and 2 workers
    python -m benchmarks.bench_input --gpu-json bench_gpu.json    # + cores per GPU at bench_gpu's step rate
    python -m benchmarks.bench_input --quick                      # a smoke run on 16 images (seconds)

The images: an ImageFolder of ImageNet-like JPEGs (500x375, the quality chosen for ~110 KB, ImageNet's mean
train file size; 1/f-noise texture under random shapes), generated once into --dir. Each loader path reads
one epoch per round from a fresh loader (worker start-up included; torch threads 1 in every worker, as
PyTorch sets), interleaved over --rounds:

- kdgrid: trainer.data.build's FolderData for experiments/paper.yaml's data spec, the loader kdgrid trains
  with (DeiT's transform from timm: random-resized crop, flip, RandAugment, normalisation, random erasing);
- timm: create_loader with its prefetcher (normalisation and random erasing on the device, here the CPU),
  and without it;
- torchvision: decode_image + v2 transforms on uint8 tensors (torchvision's RandAugment, not timm's).

Each prints its wall images/s and the CPU time per image in its workers and in the trainer process; the
per-core rate (1000 / kdgrid's worker CPU ms per image) drives the cores table, since on a shared machine
other processes stretch the wall time but not the CPU time. Where the time goes: kdgrid's transform stage
by stage in this process, and JPEG decode alone (PIL, PIL's draft() reduced-size decode, torchvision).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

WIDTH, HEIGHT, TARGET_KB = 500, 375, 110.0  # ImageNet's typical train image and its mean JPEG size
PAPER_BATCH = 128  # per GPU (experiments/paper.yaml)
CORES = (1, 2, 4, 8, 16, 32)
# Published step parts, timm's results CSVs (huggingface/pytorch-image-models, results/), RTX 3090, AMP:
# cait_s24_224 inference (benchmark-infer-amp-nchw-pt112-cu113-rtx3090.csv) and
# deit_tiny_distilled_patch16_224 training (benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv), images/s.
PUBLISHED_3090 = {"teacher_infer": 865.33, "student_train": 2253.36}


def row(section: str, metric: str, value: str) -> None:
    print(f"{section:<9} {metric:<64}  {value}", flush=True)  # two spaces at least: parseable


# --- the generated folder -------------------------------------------------------------------------------
def _pink(rng: np.random.Generator, alpha: float) -> np.ndarray:
    """Noise with a 1/f^alpha amplitude spectrum (natural images: alpha ~ 1), unit variance."""
    fy, fx = np.fft.fftfreq(HEIGHT)[:, None], np.fft.rfftfreq(WIDTH)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f**alpha
    spec[0, 0] = 0
    x = np.fft.irfft2(spec, s=(HEIGHT, WIDTH))
    return x / x.std()


def synthetic_image(seed: int):
    """A 500x375 RGB image with natural-image statistics: textured 1/f background, filled shapes, texture
    over them, so that its JPEG size and decode cost are like a photograph's."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    lum, c1, c2 = _pink(rng, 1.0), _pink(rng, 1.3), _pink(rng, 1.3)
    rgb = np.stack([lum + 0.4 * c1, lum - 0.3 * c1 + 0.3 * c2, lum - 0.4 * c2], -1)
    img = Image.fromarray(np.clip(rng.uniform(60, 190, 3) + 40 * rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        box = [x0, y0, x0 + rng.uniform(10, WIDTH / 2), y0 + rng.uniform(10, HEIGHT / 2)]
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    texture = 20 * _pink(rng, 0.6)[..., None] + rng.normal(0, 6, (HEIGHT, WIDTH, 1))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + texture, 0, 255).astype(np.uint8))


def _jpeg_kb(img, quality: int) -> float:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.tell() / 1000


def choose_quality(target_kb: float = TARGET_KB, sample: int = 6) -> int:
    """The JPEG quality whose mean file size over a sample of generated images is nearest target_kb."""
    imgs = [synthetic_image(10_000_000 + i) for i in range(sample)]
    lo, hi = 50, 98
    while hi - lo > 1:  # size grows with quality
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if statistics.mean(_jpeg_kb(i, mid) for i in imgs) < target_kb else (lo, mid)
    return min((lo, hi), key=lambda q: abs(statistics.mean(_jpeg_kb(i, q) for i in imgs) - target_kb))


def make_folder(root: Path, images: int, classes: int) -> dict:
    """train/ (`images` JPEGs over `classes` class folders) and val/ (one per class), generated once:
    folder.json, written last, marks a complete folder and records its quality and mean size."""
    marker = root / "folder.json"
    if marker.exists():
        return json.loads(marker.read_text())
    quality = choose_quality()
    sizes = []
    for split, n in (("train", images), ("val", classes)):
        for i in range(n):
            d = root / split / f"n{i % classes:08d}"
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"{split}_{i:06d}.JPEG"
            synthetic_image(i if split == "train" else 1_000_000 + i).save(path, "JPEG", quality=quality)
            sizes.append(path.stat().st_size / 1000)
    info = {"images": images, "classes": classes, "quality": quality, "mean_kb": statistics.mean(sizes)}
    tmp = root / f".folder.json.{os.getpid()}"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, marker)
    return info


def default_dir(images: int, classes: int) -> Path:
    return Path(tempfile.gettempdir()) / "kdgrid-bench-input" / f"{images}x{classes}-{WIDTH}x{HEIGHT}-v1"


# --- what kdgrid runs -----------------------------------------------------------------------------------
def paper_data_spec(root: Path):
    """The paper scale's data spec (experiments/paper.yaml, as the planner reads it), on the folder `root`."""
    from orchestrator.grid import load_scale

    scale, _ = load_scale("paper", [f"data.root={root}"])
    return scale.data


def kdgrid_train_data(spec, batch: int, workers: int):
    """kdgrid's training batch source (FolderData) for `spec` with `workers` loader workers."""
    from trainer import data

    train, _ = data.build(spec.model_copy(update={"num_workers": workers}), batch)
    return train


# --- the loader paths -----------------------------------------------------------------------------------
def kdgrid_epoch(spec, batch: int, workers: int):
    return kdgrid_train_data(spec, batch, workers).epoch(seed=0, epoch=0)


def timm_epoch(spec, batch: int, workers: int, prefetcher: bool = True):
    """timm's create_loader with kdgrid's augmentation settings; with the prefetcher, the workers hand over
    uint8 crops and normalisation and random erasing run on the device (the CPU here)."""
    from timm.data import create_loader
    from torchvision.datasets import ImageFolder

    from trainer.data import _posterize_zero_bits

    a = spec.augment
    dataset = ImageFolder(Path(spec.root) / "train")
    loader = create_loader(
        dataset,
        input_size=(spec.in_chans, spec.img_size, spec.img_size),
        batch_size=batch,
        is_training=True,
        re_prob=a.reprob,
        re_mode="pixel",
        re_count=1,
        scale=tuple(a.crop_scale or (0.08, 1.0)),
        hflip=a.hflip,
        color_jitter=a.color_jitter or None,
        auto_augment=a.rand_augment,
        interpolation="bicubic",
        num_workers=workers,
        device=torch.device("cpu"),
        use_prefetcher=prefetcher,
        persistent_workers=False,
    )
    _posterize_zero_bits(dataset.transform)  # as kdgrid does: Pillow 13 rejects RandAugment's 0-bit posterize
    return loader


def torchvision_epoch(spec, batch: int, workers: int):
    """torchvision's tensor path: decode_image (libjpeg-turbo) and v2 transforms on uint8 tensors, with
    torchvision's RandAugment(2 ops, magnitude 9) standing in for timm's rand-m9-mstd0.5-inc1."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision.datasets import ImageFolder
    from torchvision.io import decode_image
    from torchvision.transforms import InterpolationMode, v2

    a, size = spec.augment, spec.img_size
    tf = v2.Compose(
        [
            v2.RandomResizedCrop(
                size, scale=tuple(a.crop_scale or (0.08, 1.0)), interpolation=InterpolationMode.BICUBIC
            ),
            v2.RandomHorizontalFlip(a.hflip),
            v2.RandAugment(num_ops=2, magnitude=9),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
            v2.RandomErasing(a.reprob, value="random"),
        ]
    )
    dataset = ImageFolder(Path(spec.root) / "train", tf, loader=decode_image)
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)


PATHS = {
    "kdgrid FolderData (trainer.data.build, paper spec)": (kdgrid_epoch, "kdgrid"),
    "timm create_loader + prefetcher (norm + erasing on device)": (timm_epoch, "timm_prefetch"),
    "timm create_loader, no prefetcher": (lambda s, b, w: timm_epoch(s, b, w, prefetcher=False), "timm_plain"),
    "torchvision decode_image + v2 on tensors": (torchvision_epoch, "torchvision_v2"),
}


@dataclass
class Epoch:
    """One epoch of a loader: images, wall seconds, and CPU seconds in its workers and in this process."""

    images: int
    wall_s: float
    worker_cpu_s: float
    main_cpu_s: float


def _cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def epoch_cost(batches) -> Epoch:
    """One pass over `batches`, from the loader's creation to its last batch. A DataLoader joins its
    (non-persistent) workers before it stops, so their CPU time shows in RUSAGE_CHILDREN: a cost per image
    that other processes on a shared machine do not inflate, unlike the wall time."""
    kids, me, t0, n = _cpu_s(resource.RUSAGE_CHILDREN), _cpu_s(resource.RUSAGE_SELF), time.perf_counter(), 0
    for x, _ in batches:
        n += len(x)
    wall = time.perf_counter() - t0
    return Epoch(n, wall, _cpu_s(resource.RUSAGE_CHILDREN) - kids, _cpu_s(resource.RUSAGE_SELF) - me)


def loader_costs(paths, spec, args) -> dict[tuple[str, str, int], list[Epoch]]:
    """One epoch of each (path, workers) per round, interleaved round by round so that load drifts (other
    processes on the machine) hit all alike."""
    workers = [int(w) for w in args.workers.split(",")]
    out: dict[tuple[str, str, int], list[Epoch]] = {}
    for _ in range(args.rounds):
        for name, fn, key in paths:
            for w in workers:
                out.setdefault((name, key, w), []).append(epoch_cost(fn(spec, args.batch, w)))
    return out


# --- where the time goes --------------------------------------------------------------------------------
def stage_times(train_data, count: int) -> dict[str, float]:
    """CPU seconds per image of kdgrid's decode and each of its transform's stages, in this process."""
    ds = train_data.dataset
    paths = [p for p, _ in ds.samples[:count]]
    times: dict[str, float] = {"decode (PIL open + RGB)": 0.0}
    for path in paths:
        t0 = time.thread_time()
        x = ds.loader(path)
        times["decode (PIL open + RGB)"] += time.thread_time() - t0
        for t in ds.transform.transforms:
            t0 = time.thread_time()
            x = t(x)
            name = type(t).__name__
            times[name] = times.get(name, 0.0) + time.thread_time() - t0
    return {k: v / len(paths) for k, v in times.items()}


def _pil_decode(path: str, draft: tuple[int, int] | None = None):
    from PIL import Image

    with Image.open(path) as im:
        if draft:
            im.draft("RGB", draft)
        return im.convert("RGB")


def decode_times(paths: list[str], size: int) -> dict[str, tuple[float, str]]:
    """CPU seconds per image and the decoded size, for each library-backed way to decode a JPEG."""
    from torchvision.io import decode_jpeg, read_file

    ways = {
        "PIL (full size)": lambda p: _pil_decode(p),
        f"PIL draft('RGB', ({size}, {size})): DCT-scaled decode": lambda p: _pil_decode(p, (size, size)),
        "PIL draft to half size (not the paper's augmentation)": lambda p: _pil_decode(p, (WIDTH // 2, HEIGHT // 2)),
        "torchvision.io.decode_jpeg (libjpeg-turbo)": lambda p: decode_jpeg(read_file(p)),
    }
    out = {}
    for name, fn in ways.items():
        t0 = time.thread_time()
        for p in paths:
            img = fn(p)
        shape = tuple(img.shape[-1:-3:-1]) if isinstance(img, torch.Tensor) else img.size
        out[name] = ((time.thread_time() - t0) / len(paths), f"{shape[0]}x{shape[1]}")
    return out


# --- the printout ---------------------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def header(info: dict, root: Path) -> None:
    import PIL
    import timm
    import torchvision
    from PIL import features

    print(
        f"bench_input | {cpu_name()}, {os.cpu_count()} core(s) visible, load {os.getloadavg()[0]:.1f} | "
        f"torch {torch.__version__} | torchvision {torchvision.__version__} | timm {timm.__version__} | "
        f"Pillow {PIL.__version__} (libjpeg-turbo {features.version('jpg')})"
    )
    row(
        "folder",
        f"{info['images']} train JPEGs, {info['classes']} classes, {WIDTH}x{HEIGHT}, quality {info['quality']}",
        f"{info['mean_kb']:.1f} KB mean | {root}",
    )


def print_transform(train_data, spec) -> dict:
    tf = train_data.dataset.transform
    names = [type(t).__name__ for t in tf.transforms]
    row("transform", "kdgrid's paper-scale train transform (trainer.data.build)", " > ".join(names))
    jitter = any("ColorJitter" in n for n in names)
    row(
        "transform",
        f"color jitter {spec.augment.color_jitter} (paper.yaml) applied",
        "yes" if jitter else "no: timm leaves it out beside RandAugment (as in DeiT)",
    )
    return {"transform": repr(tf), "stages": names}


def print_stages(train_data, count: int) -> dict[str, float]:
    stages = stage_times(train_data, min(count, len(train_data.dataset)))
    for name, sec in stages.items():
        row("stage", f"{name}: CPU ms/image (this process)", f"{sec * 1e3:.2f}")
    total = sum(stages.values())
    row("stage", "total: CPU ms/image | images/s per core", f"{total * 1e3:.2f} | {1 / total:.1f}")
    return {k: v * 1e3 for k, v in stages.items()}


def print_decode(train_data, count: int, size: int) -> None:
    paths = [p for p, _ in train_data.dataset.samples[:count]]
    for name, (sec, decoded) in decode_times(paths, size).items():
        row("decode", f"{name}: CPU ms/image, decoded size", f"{sec * 1e3:.2f} | {decoded}")


def print_loaders(costs: dict[tuple[str, str, int], list[Epoch]]) -> dict[str, dict[str, float]]:
    """Per (path, workers): wall images/s (median and range over the rounds) and CPU ms per image."""
    out = {}
    for (name, key, w), epochs in costs.items():
        rates = [e.images / e.wall_s for e in epochs]
        rate = statistics.median(rates)
        worker_ms = statistics.median(1e3 * e.worker_cpu_s / e.images for e in epochs)
        main_ms = statistics.median(1e3 * e.main_cpu_s / e.images for e in epochs)
        row(
            "loader",
            f"{name}, {w} worker(s): wall images/s (range) | per worker",
            f"{rate:6.1f} ({min(rates):.1f}-{max(rates):.1f}) | {rate / w:6.1f}",
        )
        row(
            "loader",
            f"{name}, {w} worker(s): CPU ms/image in workers | trainer process",
            f"{worker_ms:6.2f} | {main_ms:5.2f}",
        )
        out[f"{key}/{w}"] = {"images_per_s": rate, "worker_cpu_ms": worker_ms, "main_cpu_ms": main_ms}
    if "kdgrid/2" in out:
        scaling = out["kdgrid/2"]["images_per_s"] / (2 * out["kdgrid/1"]["images_per_s"])
        row("loader", "kdgrid: 2-worker wall scaling (images/s at 2 / twice that at 1)", f"{scaling:.2f}")
    return out


def print_cores(per_core: float, batch: int) -> None:
    for n in CORES:
        rate = n * per_core
        row(
            "cores",
            f"{n:>2} loader core(s): images/s | steps/s at batch {batch} per GPU",
            f"{rate:7.0f} | {rate / batch:6.2f}",
        )


def print_gpu(per_core: float, gpu_json: str | None) -> dict:
    """Cores per GPU at a measured step rate (bench_gpu's JSON), and at the published RTX 3090 bound."""
    out = {}
    if gpu_json:
        g = json.loads(Path(gpu_json).read_text())
        solo = g["images_per_s"]
        row("gpu", f"step rate measured by bench_gpu on {g.get('device', '?')}: solo", f"{solo:.0f} images/s")
        out["gpu_images_per_s"] = solo
        rates = [("solo step", solo)]
        if "cohort8_per_student" in g:
            rates.append(("cohort of 8 (one batch feeds 8 students)", solo / (8 * g["cohort8_per_student"])))
        for what, rate in rates:
            row("gpu", f"loader workers per GPU, {what}", f"{math.ceil(rate / per_core)} (+1 core: the trainer)")
    else:
        row("gpu", "GPU step rate (bench_gpu has not run on a GPU)", "unknown: pass --gpu-json bench_gpu.json")
    p = PUBLISHED_3090
    bound = 1 / (1 / p["teacher_infer"] + 1 / p["student_train"])
    row(
        "gpu",
        "published RTX 3090 bound: CaiT-S24 infer + DeiT-Ti dist. train",
        f"{bound:.0f} images/s -> {math.ceil(bound / per_core)} loader workers (+1 core: the trainer)",
    )
    out["published_bound_images_per_s"] = bound
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", help="where the JPEG folder is generated once (default: a temp folder)")
    ap.add_argument("--images", type=int, default=512, help="train images")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--batch", type=int, default=PAPER_BATCH)
    ap.add_argument("--workers", default="1,2", help="loader worker counts to measure")
    ap.add_argument("--paths", default=",".join(v[1] for v in PATHS.values()), help="loader paths to measure")
    ap.add_argument("--rounds", type=int, default=2, help="epochs of each loader, interleaved; median")
    ap.add_argument("--stage-images", type=int, default=96, help="images timed stage by stage")
    ap.add_argument("--gpu-json", help="bench_gpu's --json output: cores per GPU at its measured step rate")
    ap.add_argument("--quick", action="store_true", help="16 images, batch 8, 1 worker (a smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.classes, args.batch, args.workers, args.stage_images, args.rounds = 16, 2, 8, "1", 4, 1
    chosen = set(args.paths.split(","))
    known = {key for _, key in PATHS.values()}
    workers = args.workers.split(",")
    if (
        "kdgrid" not in chosen
        or "1" not in workers
        or not chosen <= known
        or not all(w.isdigit() and int(w) > 0 for w in workers)
    ):
        ap.error(f"--paths: some of {sorted(known)}, kdgrid among them; --workers must include 1 (the per-core rate)")
    torch.set_num_threads(1)
    root = Path(args.dir) if args.dir else default_dir(args.images, args.classes)
    info = make_folder(root, args.images, args.classes)
    header(info, root)

    spec = paper_data_spec(root)
    train = kdgrid_train_data(spec, args.batch, 0)
    data: dict = {"folder": info, **print_transform(train, spec)}

    data["stage_ms"] = print_stages(train, args.stage_images)
    print_decode(train, args.stage_images, spec.img_size)
    costs = loader_costs([(name, fn, key) for name, (fn, key) in PATHS.items() if key in chosen], spec, args)
    data["loader"] = print_loaders(costs)
    per_core = data["per_core"] = 1e3 / data["loader"]["kdgrid/1"]["worker_cpu_ms"]
    row("loader", "kdgrid: images/s per core (1000 / worker CPU ms/image, 1 worker)", f"{per_core:.1f}")
    print_cores(per_core, PAPER_BATCH)
    data.update(print_gpu(per_core, args.gpu_json))
    return data


if __name__ == "__main__":
    main()
