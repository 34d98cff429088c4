"""What would fail when a run starts, checked when the grid is launched: before a worker, trial or Slurm job
exists, not after days in a queue. Each problem names the field and the fix.

- the devices each run gets (the launcher's: Slurm's tasks per job) times the accumulation must make up the
  global batch;
- a teacher checkpoint file (`teachers.NAME.path`) exists and reads as a PyTorch checkpoint;
- the dataset is there and its training set holds at least one global batch (else an epoch has no step).
"""

from __future__ import annotations

import gzip
import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from orchestrator.grid import GridError
from orchestrator.plan.model import PlannedRun
from trainer.dataset_files import dataset_problem
from trainer.datasets.fashion_mnist import root_of as fashion_mnist_root
from trainer.problems import Entry
from trainer.spec import accumulation_steps


class Refused(GridError):
    """The grid cannot start as planned: nothing was launched."""

    heading = "the grid cannot start (nothing was launched)"


WorldSize = Callable[[PlannedRun], int]


def planned_world_size(run: PlannedRun) -> int:
    """The devices the plan gave the run (`launch.resources`): what the local and Ray launchers use."""
    return run.spec.recipe.world_size or 1


def check(
    runs: Iterable[PlannedRun], world_size: WorldSize = planned_world_size, where: str = "", scale: str | None = None
) -> None:
    """Raise Refused with every problem of these runs (the ones about to be launched)."""
    found = problems(list(runs), world_size, where, scale)
    if found:
        raise Refused(found)


def problems(
    runs: list[PlannedRun], world_size: WorldSize = planned_world_size, where: str = "", scale: str | None = None
) -> list[Entry]:
    """Every problem of `runs`, each once however many runs share it. `where` names what set the world size
    (a Slurm config file), for its problems; `scale` (a name or file) names its teachers' keys in the fix."""
    return (
        batch_problems(runs, world_size, where)
        + teacher_problems(runs, teacher_keys(scale))
        + data_problems(runs, world_size)
    )


def _named(runs: list[PlannedRun]) -> str:
    names = [r.spec.name or r.hash[:8] for r in runs]
    return f"{len(runs)} run(s): {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def batch_problems(runs: list[PlannedRun], world_size: WorldSize, where: str = "") -> list[Entry]:
    """World size x batch size that cannot make up a run's global batch (the trainer's accumulation)."""
    bad: dict[tuple, list[PlannedRun]] = {}
    for r in runs:
        w, recipe = world_size(r), r.spec.recipe
        try:
            accumulation_steps(recipe, w)
        except ValueError:
            bad.setdefault((r.role, w, recipe.batch_size, recipe.global_batch), []).append(r)
    out = []
    for (role, w, batch, total), rs in bad.items():
        field = f"{role}: nodes x tasks_per_node" if where else f"{role} recipe world_size"
        out.append(
            (
                where or None,
                field,
                f"{w} device(s) x batch_size {batch} = {w * batch} images per micro-step cannot make up the global "
                f"batch of {total} ({_named(rs)}): give {role} jobs a world size that divides {total // batch} "
                f"({_divisors(total // batch)}), or another {role} batch_size",
            )
        )
    return out


def _checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be a teacher's PyTorch checkpoint (None: it can)."""
    if not path.is_file():
        return f"no checkpoint file at {path}"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"{path} cannot be read ({err.strerror or err})"
    if head.startswith(b"PK"):  # torch.save's zip archive: its central directory is at the end, so truncation shows
        return None if zipfile.is_zipfile(path) else f"{path} is a truncated or damaged zip archive"
    if head[:1] == b"\x80":  # torch's legacy (pickle) format
        return None
    return f"{path} is not a PyTorch checkpoint (torch.save writes a zip archive)"


def teacher_keys(scale: str | None) -> dict[str, str]:
    """{teacher model name: its key under the scale's `teachers:`}, where the scale can be read."""
    if scale is None:
        return {}
    from orchestrator.grid import load_scale

    try:
        sc = load_scale(scale)[0]
    except Exception:  # a scale given by a path since moved: the fix says NAME
        return {}
    return {sc.models[k].name: k for k in sc.teachers if k in sc.models}


def teacher_problems(runs: list[PlannedRun], keys: dict[str, str] | None = None) -> list[Entry]:
    """Teacher checkpoint files (`source: checkpoint`) that are missing or unreadable."""
    users: dict[tuple[str, str], list[PlannedRun]] = {}
    for r in runs:
        t = r.spec.teacher
        if t is not None and t.source == "checkpoint":
            users.setdefault((t.name, str(Path(t.path).expanduser())), []).append(r)
    out = []
    for (name, path), rs in users.items():
        why = _checkpoint_problem(Path(path))
        if why:
            field = f"teachers.{(keys or {}).get(name, 'NAME')}.path"
            out.append(
                (
                    None,
                    field,
                    f"teacher {name} of {_named(rs)}: {why}: put its weights there, or point the scale at "
                    f"them (--set {field}=FILE)",
                )
            )
    return out


def _fashion_mnist_images(root: str | None) -> int | None:
    """The training labels' count from their IDX header (None: not on disk, e.g. to be downloaded)."""
    base = fashion_mnist_root(root) / "train-labels-idx1-ubyte"
    for path, opener in ((base, open), (base.with_name(base.name + ".gz"), gzip.open)):
        if path.exists():
            with opener(path, "rb") as f:
                head = f.read(8)
            return int.from_bytes(head[4:8], "big") if len(head) == 8 else 0
    return None


def _folder_images(train: Path, enough: int) -> int:
    """Images under train/<class>/ (ImageFolder's extensions), counted up to `enough`: a million-image set
    is not listed whole to learn that it holds one batch."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    n = 0
    for cls in sorted(os.scandir(train), key=lambda e: e.name):
        if not cls.is_dir():
            continue
        for _, _, files in os.walk(cls.path):
            n += sum(f.lower().endswith(IMG_EXTENSIONS) for f in files)
            if n >= enough:
                return n
    return n


def data_problems(runs: list[PlannedRun], world_size: WorldSize) -> list[Entry]:
    """A dataset that is not there, or whose training set (its subset) is smaller than one global batch."""
    need: dict[tuple, list[PlannedRun]] = {}
    for r in runs:
        d = r.spec.data
        need.setdefault((d.dataset, d.root, d.train_subset, r.spec.recipe.global_batch_at(world_size(r))), []).append(r)
    out: list[Entry] = []
    counted: dict[tuple, int | None] = {}
    for (dataset, root, subset, batch), rs in sorted(need.items(), key=lambda kv: -kv[0][3]):
        why = dataset_problem(dataset, root)
        if why:
            if not any(e[2].endswith(why) for e in out):
                out.append((None, "data.root", f"{_named(rs)}: {why}"))
            continue
        key = (dataset, root)
        if key not in counted:  # the largest batch first: counting up to it answers the smaller ones
            counted[key] = (
                _fashion_mnist_images(root)
                if dataset == "fashion_mnist"
                else _folder_images(Path(root).expanduser() / "train", batch)
            )
        images = counted[key]
        if images is None:
            continue
        images = min(images, subset) if subset else images
        if images < batch:
            out.append(
                (
                    None,
                    "data.train_subset" if subset and subset < batch else "data.root",
                    f"{_named(rs)}: the training set holds {images} image(s), fewer than one global batch of "
                    f"{batch}, so an epoch would have no step: use a larger training set (data.root, "
                    "data.train_subset) or a smaller global batch (recipe.global_batch, recipe.batch_size)",
                )
            )
    return out
