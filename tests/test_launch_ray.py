"""The smoke grid through the Ray launcher, on a Ray started for the call on this machine (127.0.0.1):
every planned run is trained as part of a Tune trial (a cohort) and finishes in MLflow with its metrics."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, kdgrid
from tests.test_launch_local import LESS_DATA, TABLES, assert_all_finished, store


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_smoke_grid_through_ray(tmp_path):
    from orchestrator.plan import make_plan

    uri, work = store(tmp_path)
    out = kdgrid(
        "reproduce",
        "--scale",
        "smoke",
        *TABLES,
        "--launcher",
        "ray",
        "--tracking-uri",
        uri,
        "--workdir",
        str(work),
        "--out",
        str(tmp_path / "reports"),
        *LESS_DATA,
        cwd=tmp_path,
        timeout=1100,
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    plan = make_plan("smoke", TABLES[1], overrides=list(LESS_DATA[1::2]))
    assert_all_finished(uri, plan, out.stdout)
    assert list((work / "ray").glob("kdgrid-smoke-*-stage1"))  # the Tune experiments, one per stage
    assert (tmp_path / "reports" / "report.md").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_two_device_run_is_one_ray_train_ddp_job(tmp_path):
    """`launch.resources.gpus=2` on a machine without GPUs: the trial runs a TorchTrainer of two gloo workers;
    the run logs world size 2 and its epochs reach Tune through TuneReportCallback."""
    import torch
    import yaml

    from orchestrator.grid import load_scale
    from trainer import models, tracking

    uri, work = store(tmp_path)
    teacher = tmp_path / "teacher.pt"  # random weights, the smoke scale's CaiT-S24 analog
    m = load_scale("smoke")[0].models["cait_s24_224"]
    torch.save(models.create(m.name, num_classes=10, in_chans=1, **m.kwargs).state_dict(), teacher)
    table = tmp_path / "fig4.yaml"
    fig4 = yaml.safe_load((ROOT / "ablations" / "figure4.yaml").read_text())
    fig4["rows"] = [r for r in fig4["rows"] if r["curve"] == "manifold"]
    table.write_text(yaml.safe_dump(fig4))
    out = kdgrid(
        "reproduce",
        "--scale",
        "smoke",
        "--tables",
        str(table),
        "--launcher",
        "ray",
        "--tracking-uri",
        uri,
        "--workdir",
        str(work),
        "--out",
        str(tmp_path / "reports"),
        "--set",
        "data.train_subset=256",
        "--set",
        "data.val_subset=64",
        "--set",
        "student.recipe.batch_size=64",
        "--set",
        "student.recipe.global_batch=128",
        "--set",
        "student.recipe.epochs=1",
        "--set",
        f"teachers.cait_s24_224={{path: {teacher}}}",
        "--set",
        "launch.resources.gpus=2",
        cwd=tmp_path,
        timeout=850,
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    runs = tracking.runs_by_hash(tracking.client(uri), "smoke")
    assert len(runs) == 1
    run = next(iter(runs.values()))
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert (p["protocol.world_size"], p["protocol.accumulation"], p["protocol.global_batch"]) == ("2", "1", "128")
    assert list((work / "ray" / "train").glob("ddp-*"))  # Ray Train's run of the item
