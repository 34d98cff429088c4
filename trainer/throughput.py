"""Where an epoch's training time goes: data, teacher, each student; images per second; peak memory.

One meter per cohort epoch. The cohort shares the data pipeline and the teacher's forward pass, so those
figures are the cohort's and every member logs the same value; each student's own step (forward,
backward, optimizer) is its own:

    throughput.images_per_s       images trained per second of the epoch's training loop (x world size)   shared
    throughput.step_s             wall time of one cohort step (data + teacher + every student)           shared
    throughput.data_wait_share    share of the loop spent waiting for the next batch                      shared
    throughput.teacher_share      share of the loop spent in the teacher's forward pass                   shared
    throughput.own_step_s         this student's forward + backward + optimizer step                      own
    throughput.own_share          its share of the loop                                                   own
    throughput.cohort_size        how many students shared the epoch (1: trained alone)
    memory.peak_rss_mb            the process's peak resident memory (CPU runs)                           shared
    memory.peak_gpu_allocated_mb  torch's peak allocated memory on the run's GPU in this epoch            shared

On the CPU every operation is synchronous and perf_counter times it exactly. On a GPU the teacher and
student parts are timed with CUDA events (no host sync in the step; read once at the epoch's end), and
the data wait is host time spent in the loader.
"""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager

import torch


def peak_rss_mb() -> float:
    """This process's peak resident set size since it started (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def shares(wall: float, parts: dict[str, float]) -> dict[str, float]:
    """Each part as a share of the wall time (0 when nothing was timed)."""
    return {k: (v / wall if wall > 0 else 0.0) for k, v in parts.items()}


class EpochMeter:
    def __init__(self, device: str, world_size: int = 1):
        self.cuda = device.startswith("cuda")
        self.device, self.world_size = device, world_size
        self.images = self.steps = 0
        self.data_wait = self.teacher_s = 0.0
        self.own: dict[str, float] = {}
        self._events: list[tuple[str, object, object]] = []  # (part, start, end) CUDA events
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.t0 = self._mark = time.perf_counter()
        self.wall: float | None = None

    def batches(self, iterable):
        """Yield the loader's batches, timing the wait for each."""
        it = iter(iterable)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.data_wait += time.perf_counter() - t
            self.images += len(batch[1])
            self.steps += 1
            yield batch

    @contextmanager
    def part(self, name: str):
        """Time a part of the step: "teacher", or a member's hash for its own step."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
            return
        t = time.perf_counter()
        yield
        self._add(name, time.perf_counter() - t)

    def _add(self, name: str, seconds: float) -> None:
        if name == "teacher":
            self.teacher_s += seconds
        else:
            self.own[name] = self.own.get(name, 0.0) + seconds

    def stop(self) -> None:
        """End of the training loop (before evaluation)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            for name, start, end in self._events:
                self._add(name, start.elapsed_time(end) / 1000)
            self._events.clear()
        self.wall = time.perf_counter() - self.t0

    def metrics(self, member: str, cohort_size: int) -> dict[str, float]:
        if self.wall is None:
            self.stop()
        wall, steps = self.wall, max(self.steps, 1)
        own = self.own.get(member, 0.0)
        s = shares(wall, {"data_wait_share": self.data_wait, "teacher_share": self.teacher_s, "own_share": own})
        out = {f"throughput.{k}": v for k, v in s.items()}
        out.update(
            {
                "throughput.images_per_s": self.images * self.world_size / wall if wall > 0 else 0.0,
                "throughput.step_s": wall / steps,
                "throughput.own_step_s": own / steps,
                "throughput.cohort_size": float(cohort_size),
            }
        )
        if self.cuda:
            out["memory.peak_gpu_allocated_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            out["memory.peak_rss_mb"] = peak_rss_mb()
        return out
