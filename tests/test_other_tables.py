"""The other papers' tables (ablations/deit.yaml, ablations/vitkd.yaml): how they plan, how their rows are
read (a distilled run read three ways), their claims, and DeiT's teacher-agreement matrix."""

from __future__ import annotations

import pytest

from orchestrator.plan import make_plan
from orchestrator.report import agreement, claims, decide
from orchestrator.report.collect import RunResult
from orchestrator.report.tables import build_table


def _by_key(plan):
    return {u.key: r for r in plan.runs for u in r.uses}


def test_deit_table_plans_one_distilled_run_read_three_ways():
    plan = make_plan("paper", "deit", 1)
    runs = _by_key(plan)
    assert runs["deit.r4"].hash == runs["deit.r5"].hash == runs["deit.r6"].hash  # class, distil., both
    soft = runs["deit.r2"].spec.distillation
    assert (soft.kd, soft.tau, soft.kd_weight, soft.kd_reduction) == ("soft", 3.0, 0.1, "elements")
    assert runs["deit.r2"].spec.student.name == "deit_tiny_patch16_224"  # the class token: no distillation token
    hard = runs["deit.r3"].spec.distillation
    assert (hard.kd, hard.kd_weight, hard.kd_reduction) == ("hard", 0.5, None)
    assert runs["deit.r4"].spec.student.name == "deit_tiny_distilled_patch16_224"
    assert runs["deit.r1"].spec.teacher is None
    assert runs["deit.r2"].spec.teacher.name == "regnety_160.deit_in1k"
    # DeiT's distilled Tiny with hard distillation from RegNetY-16GF is Table 2's first row: one run
    t2 = _by_key(make_plan("paper", "2,deit", 1))
    assert t2["deit.r6"].hash == t2["t2.r1"].hash


def _result(h, last, heads=None):
    return RunResult(hash=h, status="finished", run_id=h, last_top1=last, best_top1=last, heads=heads or {})


def test_a_row_reads_its_head_and_claims_pick_rows_by_their_cells():
    plan = make_plan("smoke", "deit", 3)
    table = plan.table("deit")
    values = {}
    for i, row in enumerate(table.rows):
        for p in plan.row_runs("deit", i):
            base = {"DeiT – no distillation": 50, "DeiT – usual distillation": 51, "DeiT – hard distillation": 55}.get(
                row.printed.get("method"), 56
            )
            values[p.hash] = _result(
                p.hash, base + p.seed * 0.1, {"last_cls_top1": 54 + p.seed * 0.1, "last_dist_top1": 57 + p.seed * 0.2}
            )
    model = build_table(table, lambda i: plan.row_runs("deit", i), lambda h: values[h])
    heads = {r.cells["method"]: r for r in model.rows if r.cells["student"] == "DeiT-Tiny"}
    assert heads["DeiT⚗ – class embedding"].last.mean == pytest.approx(54.1)
    assert heads["DeiT⚗ – distil. embedding"].last.mean == pytest.approx(57.2)
    assert heads["DeiT⚗ – class+distillation"].last.mean == pytest.approx(56.1)
    one_look = claims.sequential.Design(looks=(3,))  # the fixed-sample test at the 3 seeds
    result = {c.id: c for c in claims.check_all([model], design=one_look)}
    assert result["DeiT-hard"].verdict == claims.SUPPORTED  # 55 vs 51 at every size
    assert result["DeiT-token"].verdict == claims.SUPPORTED  # 57.x vs 54.x
    assert result["DeiT-fused"].verdict == claims.CONTRADICTED  # 56.1 < 57.2
    assert result["DeiT-hard"].comparisons[0].paper_diff == pytest.approx(2.1)  # 74.3 - 72.2


def test_claims_leave_out_rows_a_cut_table_does_not_have(tmp_path):
    import yaml

    from orchestrator.grid import ABLATIONS

    data = yaml.safe_load((ABLATIONS / "vitkd.yaml").read_text())
    data["rows"] = data["rows"][:3]  # DeiT-Tiny only
    kept = {r["student"] for r in data["rows"]}  # a per-student protocol must name a student the rows train
    for protocol in data.get("scales", {}).values():
        protocol["students"] = {k: v for k, v in protocol.get("students", {}).items() if k in kept}
    path = tmp_path / "vitkd.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    plan = make_plan("smoke", str(path), 2)
    model = build_table(
        plan.table("vitkd"),
        lambda i: plan.row_runs("vitkd", i),
        lambda h: _result(h, 60.0 + 2 * (plan.run(h).spec.distillation.vitkd is not None) + 0.1 * plan.run(h).seed),
    )
    two = claims.sequential.Design(looks=(2,))  # the fixed-sample test at the 2 seeds
    c = next(c for c in claims.check_all([model], design=two) if c.id == "ViTKD")
    assert len(c.comparisons) == 1 and "DeiT-Small" in c.note and c.verdict == claims.SUPPORTED


def test_disagreement_counts_differing_images():
    cols = {"ground truth": [0, 1, 2, 3], "teacher": [0, 1, 2, 0], "student": [1, 1, 2, 0]}
    d = agreement.disagreement(cols)
    assert d["ground truth", "teacher"] == 0.25 and d["teacher", "student"] == 0.25
    assert d["ground truth", "student"] == 0.5 and d["student", "student"] == 0.0
    with pytest.raises(ValueError):
        agreement.disagreement({"a": [1], "b": [1, 2]})


def test_agreement_matrix_and_its_claim_from_saved_predictions():
    plan = make_plan("smoke", "deit", 2)
    table = plan.table("deit")
    results = {r.hash: _result(r.hash, 60.0) for r in plan.runs}
    model = build_table(table, lambda i: plan.row_runs("deit", i), lambda h: results[h])
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    teacher = [0, 1, 2, 3, 4, 5, 6, 7, 0, 0]
    files = {}
    for row in model.rows:
        for seed, run in zip(row.seeds, row.runs):
            if row.cells["method"] == "DeiT⚗ – class+distillation":
                files[run.run_id, "predictions.json"] = {
                    "label": labels,
                    "top1": teacher[:9] + [9 - seed],
                    "cls": labels,
                    "dist": teacher,
                }
                files[run.run_id, "teacher.json"] = {"label": labels, "top1": teacher}
            elif row.cells["method"] == "DeiT – no distillation":
                files[run.run_id, "predictions.json"] = {"label": labels, "top1": [1, 1, 1, 1, 1, 1, 1, 1, 1, seed]}
    mats = agreement.build(model, "unused", read=lambda run_id, name: files.get((run_id, name)))
    assert [a.student for a in mats] == ["DeiT-Tiny", "DeiT-Small", "DeiT-Base"]
    a = mats[0]
    assert a.mean(agreement.TEACHER, agreement.HEADS["dist"]) == 0.0
    assert a.mean(agreement.GROUND_TRUTH, agreement.HEADS["cls"]) == 0.0
    assert a.mean(agreement.GROUND_TRUTH, agreement.TEACHER) == pytest.approx(0.2)
    # seed 0: the fused head differs from the teacher on 1 image, seed 1 on 1: 0.1; undistilled: 0.9 / 0.8
    assert a.mean(agreement.TEACHER, agreement.HEADS["top1"]) == pytest.approx(0.1)
    assert a.mean(agreement.TEACHER, agreement.NONE) == pytest.approx(0.85)
    c = agreement.agreement_claim(mats)
    assert c.comparisons[0].diff == pytest.approx(75.0) and (c.comparisons[0].n_a, c.comparisons[0].n_b) == (2, 2)
    # --resolve adds seeds to the rows the agreement is read from: the fused row and the no-distillation row
    fused, none = (
        next(r.index for r in model.rows if r.cells["student"] == "DeiT-Tiny" and r.cells["method"] == m)
        for m in ("DeiT⚗ – class+distillation", "DeiT – no distillation")
    )
    assert c.comparisons[0].rows == (("deit", fused), ("deit", none))
    keys = decide.row_keys(plan)
    assert [keys[r] for r in c.comparisons[0].rows] == [
        plan.row_runs("deit", fused)[0].hash,
        plan.row_runs("deit", none)[0].hash,
    ]
    assert "| ground truth |" in "\n".join(agreement.markdown_lines(mats))


def test_the_reader_returns_a_runs_predictions_and_keeps_no_copy(tmp_path, monkeypatch):
    """The report reads each prediction file from MLflow into memory and deletes its download: a report over
    DeiT's table used to leave one folder of downloaded predictions in /tmp per report."""
    import json
    import tempfile

    from mlflow import MlflowClient

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("agreement", artifact_location=(tmp_path / "artifacts").as_uri())
    run = c.create_run(exp)
    preds = {"label": [3, 1, 4], "top1": [3, 1, 5]}
    (tmp_path / "predictions.json").write_text(json.dumps(preds))
    c.log_artifact(run.info.run_id, str(tmp_path / "predictions.json"), "predictions")

    read = agreement._reader(uri)
    assert read(run.info.run_id, "predictions.json") == preds
    assert read(run.info.run_id, "teacher.json") is None  # not saved: no column
    assert list((tmp_path / "tmp").iterdir()) == []


def test_other_tables_are_found_by_their_content(tmp_path):
    from orchestrator import grid

    assert {"deit", "vitkd"} <= set(grid.EXTRA_TABLES) and grid.TABLE_FILES["vitkd"] == "vitkd.yaml"
    (tmp_path / "search.yaml").write_text("search: {alpha: [0.5, 1]}\n")
    (tmp_path / "t.yaml").write_text("table: x\ntitle: t\ncolumns: []\nrows: []\n")
    assert not grid.is_table_file(tmp_path / "search.yaml") and grid.is_table_file(tmp_path / "t.yaml")


@pytest.mark.parametrize("tables", ["deit", "vitkd", "deit,vitkd,2"])
def test_every_student_run_has_its_own_name_in_mlflow(tables):
    """Hard KD on the class token and the distilled student share teacher, student size and method: their
    MLflow run names must still differ (the second stands for Table 2's row too)."""
    plan = make_plan("mini", tables, 1, None)
    names = [r.spec.name for r in plan.runs if r.role == "student"]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    if "deit" in tables:
        assert "RegNetY-16GF→DeiT-Tiny · hard · class token" in names
        assert "RegNetY-16GF→DeiT-Tiny · hard" in names
