"""`kdgrid tune` end to end on a real local Ray (127.0.0.1, no dashboard) at the smoke scale, cut small:
ASHA stops some trials early and they are recorded in MLflow as stopped by the scheduler (KILLED, with
the epoch), not failed; the driver is killed after some trials finished and the same command resumes the
search with Tune's restore without training the finished trials again; the report is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import kdgrid_command, kdgrid_env
from trainer import tracking

SEARCH = {
    "search": "test",
    "title": "alpha and beta",
    "base": "fig4.manifold",
    "space": {
        "distillation.manifold.alpha": "loguniform(0.1, 10)",
        "distillation.manifold.beta": "loguniform(0.02, 2)",
    },
    "paper": {"distillation.manifold.alpha": 1.0, "distillation.manifold.beta": 0.2},
    "grace_period": 1,
    "reduction_factor": 2,
}
EPOCHS, TRIALS = 4, 6
CUT = (
    "--set",
    f"student.recipe.epochs={EPOCHS}",
    "--set",
    "data.train_subset=512",
    "--set",
    "data.val_subset=256",
    "--set",
    "teachers.cait_s24_224.data.train_subset=512",
    "--set",
    "teachers.cait_s24_224.recipe.epochs=1",
)
KEY = "smoke/paper-mean/test"


def _argv(search: Path, uri: str, work: Path, out: Path) -> list[str]:
    return kdgrid_command(
        "tune",
        str(search),
        "--scale",
        "smoke",
        *CUT,
        "--trials",
        str(TRIALS),
        "--workers",
        "2",
        "--rerun-top",
        "1",
        "--seeds",
        "2",
        "--tracking-uri",
        uri,
        "--workdir",
        str(work),
        "--out",
        str(out),
    )


def _env() -> dict:
    quiet = {"OMP_NUM_THREADS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "KDGRID_SYSTEM_METRICS_INTERVAL": "0"}
    return kdgrid_env({**os.environ, **quiet})


def _runs(uri: str) -> list:
    from orchestrator.tune.search import search_runs

    try:
        return search_runs(tracking.client(uri), "smoke", KEY)
    except Exception:  # the store is being created
        return []


def _starts(work: Path, h: str) -> int:
    """How many times a worker started training this trial's run (one header line per start)."""
    log = work / "logs" / f"trial-{h[:12]}.log"
    return log.read_text().count(f"item trial-{h[:12]} on") if log.exists() else 0


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_search_stops_early_resumes_after_a_killed_driver_and_reports(tmp_path, write_yaml):
    search = write_yaml("search-test.yaml", SEARCH)
    uri, work, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "work", tmp_path / "report"
    argv = _argv(search, uri, work, out)

    # 1. Start the search; kill the driver (its whole process group, Ray and its trials included) once a
    #    trial has finished and another has ended, while others are still to come.
    log = open(tmp_path / "driver1.log", "w")
    driver = subprocess.Popen(
        argv, cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 900
    ended: list = []
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            trials = [r for r in _runs(uri) if r.data.tags.get("kdgrid.search.role") == "trial"]
            ended = [r for r in trials if r.info.status in ("FINISHED", "KILLED")]
            if any(r.info.status == "FINISHED" for r in ended) and 2 <= len(ended) < TRIALS:
                break
            time.sleep(0.5)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        log.close()
    first = (tmp_path / "driver1.log").read_text()
    assert driver.returncode == -signal.SIGKILL, "the search ended before it could be killed: " + first[-3000:]
    before = {r.data.tags[tracking.HASH]: r for r in ended}
    assert all(_starts(work, h) == 1 for h in before)
    experiment = list((work / "ray").glob("search-test-smoke-paper-mean-*"))
    assert len(experiment) == 1, first[-3000:]

    # 2. The same command again: Tune restores the search; finished trials are neither rerun nor restarted.
    again = subprocess.run(argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    text = again.stdout + again.stderr
    assert again.returncode == 0, first[-3000:] + text[-6000:]
    assert "resuming the search" in text
    runs = _runs(uri)
    trials = [r for r in runs if r.data.tags.get("kdgrid.search.role") == "trial"]
    by_hash = {r.data.tags[tracking.HASH]: r for r in runs}
    c = tracking.client(uri)
    for h, run in before.items():  # ended before the kill: not trained again (a restart only replays MLflow)
        steps = [m.step for m in c.get_metric_history(by_hash[h].info.run_id, "val.top1")]
        assert steps == sorted(set(steps)), f"trial {h} logged an epoch twice"
        if run.info.status == "FINISHED":
            assert by_hash[h].info.status == "FINISHED" and by_hash[h].info.end_time == run.info.end_time
            assert steps == list(range(1, EPOCHS + 1))
        else:
            k = int(run.data.tags["kdgrid.stopped_epoch"])
            assert by_hash[h].data.tags["kdgrid.stopped_epoch"] == str(k) and max(steps) == k
        assert _starts(work, h) <= 2
    # Tune's restore kept the number of samples: no trial sampled twice, none added
    configs = {r.data.tags["kdgrid.search.config"] for r in trials}
    assert len(trials) == len(configs) == TRIALS, [r.info.run_name for r in trials]

    # 3. ASHA stopped some trials before their last epoch: KILLED, with who and when, not FAILED
    stopped = [r for r in trials if r.data.tags.get("kdgrid.stopped_by") == "ASHA"]
    assert stopped, [(r.info.run_name, r.info.status) for r in trials]
    for r in stopped:
        k = int(r.data.tags["kdgrid.stopped_epoch"])
        assert 1 <= k < EPOCHS and r.info.status == "KILLED" and tracking.FAILURE not in r.data.tags
        logged = [m.step for m in tracking.client(uri).get_metric_history(r.info.run_id, "val.top1")]
        assert k in logged and max(logged) < EPOCHS  # trained k epochs, never its last
    assert not [r for r in trials if r.info.status == "FAILED"]
    assert all(r.info.status in ("FINISHED", "KILLED") for r in trials)
    assert {r.data.tags.get(tracking.PARENT) for r in runs} == {_parent(uri)}  # one search run holds them all

    # 4. The report: the top configuration and the paper's choice over 2 seeds, the stopped trials, the plot
    md = (out / "report.md").read_text()
    assert f"**{TRIALS} trial(s)**" in md and "stopped by ASHA at epoch" in md
    assert "| paper's choice | α=1 β=0.2 | 2 |" in md, md
    assert "ranks **" in md  # the paper's choice placed among the finished trials
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    paper = [r for r in runs if r.data.tags.get("kdgrid.search.role") == "paper"]
    assert sorted(int(r.data.tags[tracking.SEED]) for r in paper if r.info.status == "FINISHED") == [0, 1]
    cfg = json.loads(paper[0].data.tags["kdgrid.search.config"])
    assert cfg == SEARCH["paper"]


def _parent(uri: str) -> str:
    c = tracking.client(uri)
    exp = c.get_experiment_by_name("kdgrid-smoke")
    found = c.search_runs(
        [exp.experiment_id], filter_string=f"tags.`kdgrid.search` = '{KEY}' and tags.`kdgrid.role` = 'search'"
    )
    assert len(found) == 1
    return found[0].info.run_id
