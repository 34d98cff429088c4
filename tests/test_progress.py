"""Logs that say how a run is doing (issue 30): the progress line's format and cadence, and `kdgrid train` with
its output to a file, which gains a progress line while the first epoch still trains."""

from __future__ import annotations

import math
import os
import re
import subprocess
import time

import pytest

from tests import smoke_specs
from tests.conftest import kdgrid_command, kdgrid_env
from trainer import progress

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [0-9a-f]{8} epoch 1/1 step (\d+)/(\d+) loss \d+\.\d{4} .*"
    r"images/s \d+ eta \d+:\d\d:\d\d run eta \d+:\d\d:\d\d$"
)


def test_the_time_cadence_defaults_to_30_s_and_0_leaves_steps_only():
    assert progress.interval_s({}) == 30.0
    assert progress.interval_s({progress.PROGRESS_ENV: "2.5"}) == 2.5
    assert progress.interval_s({progress.PROGRESS_ENV: "0"}) == math.inf


def test_a_progress_line_reads_as_deits_metric_logger():
    metrics = {"loss": 2.30119, "ce": 1.941, "manifold": 0.36019, "lr": 1e-3, "step_time_s": 0.1, "images_per_s": 512.4}
    line = progress.progress_line("3f9c1a2b", 0, 3, 40, 156, metrics, 45.2, 190.0)
    assert line == (
        "3f9c1a2b epoch 1/3 step 40/156 loss 2.3012 (ce 1.9410 manifold 0.3602) lr 1.00e-03 images/s 512 "
        "eta 0:00:45 run eta 0:03:10"
    )
    assert progress.progress_line("3f9c1a2b", 2, 3, 1, 156, {}, math.nan, math.inf).endswith("eta ? run eta ?")


@pytest.mark.slow  # ~35 s of CPU, 131 s on the loaded 2-core machine
@pytest.mark.timeout(300)
def test_kdgrid_train_to_a_file_shows_progress_before_the_first_epoch_ends(tmp_path):
    """Steps alone would report at the epoch's last step only (log_every above the epoch's steps): the line
    that comes earlier is the clock's (KDGRID_PROGRESS_S=1), read from the file while the run trains."""
    spec = smoke_specs.teacher(epochs=1, train=4096)
    spec["recipe"]["log_every"] = 10_000
    path = smoke_specs.write(spec, tmp_path / "teacher.yaml")
    log = tmp_path / "train.log"
    command = kdgrid_command(
        "train", str(path), "--threads", "1", "--workdir", str(tmp_path / "runs"), "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
    )  # fmt: skip
    env = kdgrid_env({**os.environ, progress.PROGRESS_ENV: "1", "KDGRID_SYSTEM_METRICS_INTERVAL": "0"})
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        early = None
        deadline = time.monotonic() + 240
        while early is None and proc.poll() is None and time.monotonic() < deadline:
            text = log.read_text()
            if "epoch 1/1 done" in text:
                break
            early = next((m for m in map(LINE.match, text.splitlines()) if m), None)
            time.sleep(0.2)
        assert early is not None, log.read_text()
        step, steps = map(int, early.groups())
        assert 0 < step < steps  # within the epoch, not its end
        assert proc.wait(timeout=240) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert re.search(r"epoch 1/1 done: val top1 \d+\.\d\d", text) and text.rstrip().endswith("finished"), text
