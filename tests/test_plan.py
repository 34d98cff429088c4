"""The planned grid: rows resolved to specs, deduplicated exactly where the paper's tables share a run,
teachers planned once as dependencies, tags independent of --tables, and malformed input rejected before
any launch with file, field path and reason. Plans only: nothing trains."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml

from orchestrator import grid
from orchestrator.grid import GridError, load_recipes
from orchestrator.plan import Plan, RowRef, make_plan, run_states
from tests.conftest import kdgrid
from trainer import tracking
from trainer.spec import parse_experiment

REPO = Path(__file__).resolve().parents[1]
TINY, SMALL = "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224"
S24 = "cait_s24_224"

# The paper's shared rows: each set is one run. Nothing else merges.
MERGE_GROUPS = {
    frozenset({"t2.r9", "t3.r1", "t4.r1", "t5.r2", "t6.r2", "fig4.manifold"}),  # CaiT-S24 -> DeiT-Tiny manifold
    frozenset({"t3.r2", "t6.r1"}),  # L_ci + L_cp  ==  k = 0
    frozenset({"t2.r7", "t7.r2"}),  # CaiT-XXS24 -> DeiT-Tiny manifold
    frozenset({"t2.r10", "t7.r4"}),  # CaiT-S24 -> DeiT-Small manifold
    frozenset({"t2.r5", "fig4.hard"}),  # CaiT-S24 -> DeiT-Tiny hard
}


@functools.cache
def plan(scale="mini", tables=None, seeds=1, recipe="paper", overrides=(), row_seeds=None) -> Plan:
    return make_plan(scale, tables, seeds, recipe, list(overrides), row_seeds=dict(row_seeds or ()))


def groups(p: Plan, seed: int = 0) -> set[frozenset[str]]:
    return {frozenset(u.key for u in r.uses) for r in p.students if r.seed == seed and len(r.uses) > 1}


def by_key(p: Plan, key: str, seed: int = 0):
    return next(r for r in p.students if r.seed == seed and key in {u.key for u in r.uses})


def test_paper_grid_dedup():
    p = plan("paper")
    assert (p.scale, p.recipe, p.seeds) == ("paper", "paper-sum", 1)  # `paper`: the old name of paper-sum
    assert [t.table for t in p.tables] == ["2", "3", "4", "5", "6", "7", "fig4"]
    assert p.rows_before_dedup == 33 and len(p.runs) == 24 and not p.teachers
    assert groups(p) == MERGE_GROUPS
    assert sum(len(r.uses) for r in p.runs) == 33  # every row is used exactly once
    assert len({r.hash for r in p.runs}) == 24
    for r in p.students:  # hub teachers, no dependencies
        assert r.deps == [] and (r.spec.teacher is None or r.spec.teacher.source == "hub")
    assert p.launch["resources"]["gpus"] == 8


def test_same_merges_under_the_released_recipe():
    paper, released = plan("paper", recipe="paper-sum"), plan("paper", recipe="released")
    assert groups(released) == MERGE_GROUPS and len(released.runs) == 24
    # hard rows and the no-distillation baseline do not depend on the recipe; manifold/embedding rows do
    for key in ("t2.r1", "t2.r6", "fig4.none"):
        assert by_key(paper, key).hash == by_key(released, key).hash
    for key in ("t2.r9", "t7.r1", "t3.r2"):
        assert by_key(paper, key).hash != by_key(released, key).hash


def test_mini_plans_teachers_once_as_dependencies():
    p = plan("mini")
    assert p.rows_before_dedup == 36 and len(p.runs) == 27 and len(p.students) == 24
    teachers = p.teachers
    assert [t.spec.student.name for t in teachers] == ["analog_regnety_160", "analog_cait_xxs24", "analog_cait_s24"]
    assert p.runs[:3] == teachers  # dependencies first
    assert groups(p) == MERGE_GROUPS
    hashes = {t.hash for t in teachers}
    for t in teachers:
        assert t.role == "teacher" and t.uses == [] and t.deps == [] and t.seed == 0
        assert t.spec.teacher is None and t.spec.distillation.kd == "none"
        assert t.spec.tags[tracking.ROLE] == "teacher" and t.spec.name.startswith("teacher · ")
    s24 = next(t for t in teachers if t.spec.student.name == "analog_cait_s24")
    assert s24.spec.tags[tracking.TABLES] == "2,3,4,5,6,7,fig4" and s24.spec.name == "teacher · CaiT-S24"
    for r in p.students:
        if r.spec.teacher is None:
            assert r.deps == [] and r.uses[0].key == "fig4.none"
            continue
        assert r.spec.teacher.source == "run" and r.deps == [r.spec.teacher.run] and r.deps[0] in hashes
        assert r.spec.teacher.name == p.run(r.deps[0]).spec.student.name
        assert r.spec.teacher.kwargs == p.run(r.deps[0]).spec.student.kwargs
    assert by_key(p, "t2.r1").deps[0] != by_key(p, "t2.r3").deps[0]  # RegNet vs CaiT-XXS24


def test_seeds_multiply_students_not_teachers():
    p1, p3 = plan("mini"), plan("mini", seeds=3)
    assert len(p3.students) == 3 * len(p1.students) == 72 and len(p3.teachers) == 3
    assert p3.rows_before_dedup == 33 * 3 + 3
    for s in range(3):
        assert groups(p3, s) == MERGE_GROUPS
    runs = p3.row_runs("2", 8)
    assert [r.seed for r in runs] == [0, 1, 2] and len({r.hash for r in runs}) == 3
    assert runs[0].hash == p1.row_runs("2", 8)[0].hash  # seed 0 is the same run whatever --seeds
    assert len({r.deps[0] for r in runs}) == 1  # one teacher for every seed
    assert [r.hash for r in p3.row_runs("fig4", 2)] == [r.hash for r in runs]
    assert runs[1].spec.tags[tracking.SEED] == "1" and runs[1].spec.name.endswith(" · seed 1")


def test_names_and_tags_do_not_depend_on_tables():
    full, part = plan("mini"), plan("mini", "2,5", 3)
    assert [t.table for t in part.tables] == ["2", "5"]
    assert part.rows_before_dedup == 14 * 3 + 3 and len(part.students) == 39 and len(part.teachers) == 3
    r = by_key(full, "t2.r9")
    spec = r.spec
    assert spec.name == "CaiT-S24→DeiT-Tiny · manifold"
    note = spec.tags.pop(tracking.NOTE)  # the description: every row the run stands for, and what it trains
    assert spec.tags == {
        tracking.ROLE: "student",
        tracking.TABLES: "2,3,4,5,6,fig4",
        tracking.ROWS: "t2.r9,t3.r1,t4.r1,t5.r2,t6.r2,fig4.manifold",
        tracking.SEED: "0",
    }
    assert "Stands for 6 table rows" in note and "Table 6, row 2 (`t6.r2`)" in note and "k=192" in note
    spec.tags[tracking.NOTE] = note
    assert (spec.scale, spec.recipe_name) == ("mini", "paper-sum")  # planned as `paper`, its alias
    q = by_key(part, "t2.r9")
    assert q.hash == r.hash and q.spec.tags == spec.tags and q.spec.name == spec.name
    assert q.uses == [RowRef("2", 8, "t2.r9"), RowRef("5", 1, "t5.r2")]
    assert part.row_runs("5", 1)[0] is q
    # runs the recipe does not govern are named for what they are, whatever --recipe says
    assert by_key(full, "t2.r1").spec.recipe_name == "hard"
    assert by_key(plan("mini", recipe="released"), "t2.r1").spec.recipe_name == "hard"
    assert by_key(full, "fig4.none").spec.recipe_name == "none"
    assert {t.spec.recipe_name for t in full.teachers} == {"teacher"}
    assert by_key(plan("mini", recipe="released"), "t2.r9").spec.recipe_name == "released"
    assert by_key(full, "fig4.none").spec.name == "DeiT-Tiny · none"
    # each row's name carries what tells it apart from the other rows of its table
    assert by_key(full, "t3.r2").spec.name == "CaiT-S24→DeiT-Tiny · L_ci+L_cp"
    assert by_key(full, "t4.r2").spec.name == "CaiT-S24→DeiT-Tiny · α=0.5 β=0.2"
    assert by_key(full, "t5.r1").spec.name == "CaiT-S24→DeiT-Tiny · blocks {3,4,9,10}"
    assert by_key(full, "t6.r3").spec.name == "CaiT-S24→DeiT-Tiny · k=384"
    assert by_key(full, "t7.r1").spec.name == "CaiT-XXS24→DeiT-Tiny · embedding"
    for t in full.tables:
        names = [by_key(full, t.row_key(i)).spec.name for i in range(len(t.rows))]
        assert len(set(names)) == len(names), (t.table, names)
    assert by_key(full, "t3.r2").spec.tags[tracking.ROWS] == "t3.r2,t6.r1"
    assert plan("mini", "fig4").tables[0].table == "fig4"


def test_rows_resolve_scale_recipe_and_row():
    p, r = plan("mini"), plan("mini", recipe="released")
    s = by_key(p, "t5.r1").spec
    assert (s.student.name, s.student.kwargs["patch_size"], s.student.drop_path) == (
        "analog_deit_tiny_distilled",
        7,
        0.1,
    )
    assert (s.data.dataset, s.recipe.epochs, s.recipe.lr_scale_batch) == ("fashion_mnist", 12, None)
    d = s.distillation
    assert (d.kd, d.kd_weight) == ("hard", 0.5)
    assert (d.manifold.teacher_blocks, d.manifold.student_blocks) == ((3, 4, 21, 22), (3, 4, 9, 10))
    assert (d.manifold.alpha, d.manifold.beta, d.manifold.k, d.manifold.reduction) == (1.0, 0.2, 192, "sum")
    d = by_key(p, "t3.r2").spec.distillation.manifold  # L_ci + L_cp: canonical k=0
    assert (d.terms, d.k, d.beta) == (("ci", "cp"), 0, 0.0)
    assert by_key(p, "t6.r4").spec.distillation.manifold.k == 768
    assert by_key(p, "t4.r3").spec.distillation.manifold.alpha == 2.5
    h = by_key(p, "t2.r1").spec
    assert (h.distillation.kd, h.distillation.kd_weight, h.distillation.manifold) == ("hard", 0.5, None)
    assert h.teacher.name == "analog_regnety_160"
    e = by_key(p, "t7.r3").spec.distillation
    assert e.kd == "hard" and e.manifold is None and e.embedding.teacher_blocks == (1, 2, 3, 4, 21, 22, 23, 24)
    assert by_key(p, "fig4.none").spec.student.name == "analog_deit_tiny"
    # released: soft KD at weight 1, mean reduction and per-term weights, drop_path 0
    s = by_key(r, "t2.r9").spec
    d = s.distillation
    assert (d.kd, d.tau, d.kd_weight, s.student.drop_path) == ("soft", 1.0, 1.0, 0.0)
    ts = d.manifold.term_scale
    assert (d.manifold.reduction, ts.ci, ts.cp, ts.rs * d.manifold.beta) == ("mean", 0.1, 4.0, 0.2)
    e = by_key(r, "t7.r1").spec
    assert (e.distillation.kd, e.distillation.embedding is not None, e.student.drop_path) == ("soft", True, 0.0)
    assert by_key(r, "t2.r5").spec.distillation.kd == "hard"  # hard rows stay DeiT's hard distillation


def test_paper_scale_teachers_and_overrides():
    p = plan("paper", overrides=("data.root=/datasets/imagenet", f"teachers.{S24}.path=/ckpt/cait_s24.pth"))
    s = by_key(p, "t2.r9").spec
    assert s.data.root == "/datasets/imagenet" and s.student.name == TINY
    assert (s.teacher.name, s.teacher.source, s.teacher.path) == (
        "cait_s24_224.fb_dist_in1k",
        "checkpoint",
        "/ckpt/cait_s24.pth",
    )
    t = by_key(p, "t2.r1").spec.teacher
    assert (t.name, t.source) == ("regnety_160.deit_in1k", "hub")
    assert not p.teachers and len(p.runs) == 24


def test_dump_writes_trainable_specs(tmp_path):
    from orchestrator.plan import dump_plan

    p = plan("smoke")
    dump_plan(p, tmp_path)
    index = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    assert len(index["runs"]) == len(p.runs) == 27 and index["scale"] == "smoke"
    for r in p.runs:
        spec = parse_experiment(yaml.safe_load((tmp_path / f"{r.hash}.yaml").read_text()))
        assert spec.content_hash() == r.hash and spec.tags == r.spec.tags and spec.name == r.spec.name


def test_status_without_a_store(tmp_path):
    p = plan("smoke")
    db = tmp_path / "none.db"
    states, note = run_states(p, f"sqlite:///{db}")
    assert set(states.values()) == {"missing"} and len(states) == 27 and "no MLflow store" in note
    assert not db.exists()


def test_status_from_mlflow(tmp_path):
    p = plan("smoke", "6")
    uri = f"sqlite:///{tmp_path / 'kdgrid.db'}"
    c = tracking.client(uri)
    done, started = p.students[0], p.students[1]
    tracking.RunLog.open(c, done.spec, done.hash).finish()
    run = tracking.RunLog.open(c, started.spec, started.hash)
    states, note = run_states(p, uri)
    assert note is None and states[done.hash] == "finished" and states[started.hash] == "partial"
    assert sum(s == "missing" for s in states.values()) == len(p.runs) - 2
    tags = c.get_run(run.run_id).data.tags  # the planned metadata lands in MLflow as is
    assert tags[tracking.ROWS] == started.spec.tags[tracking.ROWS] and tags[tracking.SEED] == "0"


# ---- malformed input: rejected before any launch, with file, field path and reason -------------------
def _table(*rows, table="9", base=None) -> dict:
    return {
        "table": table,
        "title": "test",
        "columns": [{"header": "Teacher", "field": "teacher"}],
        "base": base or {"teacher": S24, "student": TINY, "method": "manifold"},
        "rows": list(rows),
    }


def _rejected(*expected, **kwargs) -> str:
    with pytest.raises(GridError) as err:
        make_plan(**kwargs)
    msg = str(err.value)
    for part in expected:
        assert str(part) in msg, (part, msg)
    return msg


def test_block_beyond_depth(write_yaml):
    path = write_yaml(
        "table5.yaml",
        _table(
            {"teacher_blocks": [3, 4, 21, 22], "student_blocks": [3, 4, 9, 10], "paper_acc1": 74.5},
            {"teacher_blocks": [1, 2, 3, 25], "student_blocks": [1, 2, 3, 4], "paper_acc1": 75.0},
            {"teacher_blocks": [1, 2, 3, 4], "student_blocks": [1, 2, 3, 13], "paper_acc1": 75.1},
            table="5",
        ),
    )
    msg = _rejected(
        path,
        "rows[1].teacher_blocks[3]",
        "block 25 is beyond",
        "depth 24",
        "rows[2].student_blocks[3]",
        "block 13 is beyond",
        "depth 12",
        scale="smoke",
        tables=[str(path)],
    )
    assert "ablations/table5.yaml" not in msg  # the given file replaced the paper's table 5


def test_different_patch_counts(write_yaml):
    raw = yaml.safe_load((grid.EXPERIMENTS / "smoke.yaml").read_text())
    raw["models"][S24]["kwargs"]["patch_size"] = 4  # 49 patches against the students' 16
    scale = write_yaml("scale.yaml", raw)
    _rejected(
        "ablations/table2.yaml",
        "rows[8].teacher",
        "16 patches",
        "49",
        "pairs patches one to one",
        str(scale),
        scale=str(scale),
        tables="2",
    )


def test_cnn_teacher_with_a_feature_loss(write_yaml):
    path = write_yaml(
        "t.yaml",
        _table(
            {"teacher": "regnety_160", "paper_acc1": 70.0},
            {"teacher": "regnety_160", "method": "embedding", "paper_acc1": 70.0},
        ),
    )
    _rejected(
        path,
        "rows[0].teacher",
        "rows[1].teacher",
        "is a CNN",
        "manifold loss",
        "embedding loss",
        scale="mini",
        tables=str(path),
    )


def test_k_larger_than_the_batch(write_yaml):
    path = write_yaml("t.yaml", _table({"k": 1025, "paper_acc1": 70.0}))
    _rejected(
        path, "rows[0].k", "k=1025 is larger than the batch's 64 x 16 = 1024 patches", scale="smoke", tables=str(path)
    )
    make_plan("mini", str(path))  # 128 x 49 patches: fine at mini


def test_bad_weights(write_yaml):
    path = write_yaml("t.yaml", _table({"alpha": -0.5, "paper_acc1": 70.0}, {"beta": "high", "paper_acc1": 70.0}))
    _rejected(
        path,
        "rows[0].alpha",
        "greater than or equal to 0",
        "rows[1].beta",
        "valid number",
        scale="smoke",
        tables=str(path),
    )
    _rejected(
        "experiments/smoke.yaml",
        "student.drop_path",
        "greater than or equal to 0",
        scale="smoke",
        overrides=["student.drop_path=-0.1"],
    )


def test_unknown_model_table_and_key(write_yaml):
    path = write_yaml("t.yaml", _table({"student": "deit_tiny_patch16_225", "paper_acc1": 70.0}))
    _rejected(path, "rows[0].student", "unknown model 'deit_tiny_patch16_225'", scale="smoke", tables=str(path))
    # a timm model the scale does not map
    path = write_yaml("t2.yaml", _table({"teacher": "vit_small_patch16_224", "paper_acc1": 70.0}))
    _rejected(
        path,
        "rows[0].teacher",
        "vit_small_patch16_224 has no model at scale 'smoke'",
        "experiments/smoke.yaml",
        scale="smoke",
        tables=str(path),
    )
    _rejected("ablations/table9.yaml", "--tables", "no table '9'", tables="9")
    _rejected("ablations/table9.yaml", "--tables", "no table '9'", tables="2,9")
    path = write_yaml("t3.yaml", _table({"k": 100, "kk": 1, "paper_acc1": 70.0}))
    _rejected(path, "rows[0].kk", "unknown key (did you mean k?)", scale="smoke", tables=str(path))
    _rejected("experiments/recipes.yaml", "--recipe", "no recipe 'fast'", recipe="fast")
    _rejected(
        "experiments/smoke.yaml",
        "launch.max_cohrt",
        "unknown key (did you mean max_cohort?)",
        scale="smoke",
        overrides=["launch.max_cohrt=2"],
    )


def test_row_without_paper_value_and_duplicates(write_yaml):
    path = write_yaml("t.yaml", _table({"k": 384, "paper_acc1": 70.0}, {"k": 768}))
    _rejected(path, "rows[1].paper_acc1", "missing", "paper's reported value", scale="smoke", tables=str(path))
    path = write_yaml("t2.yaml", _table({"k": 384, "paper_acc1": 70.0}, {"k": 384, "paper_acc1": 71.0}))
    _rejected(path, "rows[1]", "duplicates rows[0]", scale="smoke", tables=str(path))
    # rows that differ as written but are one run (k=0 is L_ci + L_cp) are duplicates too
    path = write_yaml("t3.yaml", _table({"k": 0, "paper_acc1": 70.0}, {"terms": ["ci", "cp"], "paper_acc1": 71.0}))
    _rejected(path, "rows[1]", "resolves to the same run as rows[0]", scale="smoke", tables=str(path))


# ---- the command line --------------------------------------------------------------------------------
def _cli(tmp_path, *args):
    """`kdgrid plan ARGS` on an absent store."""
    return kdgrid("plan", *args, "--tracking-uri", f"sqlite:///{tmp_path / 'kdgrid.db'}", cwd=tmp_path, timeout=300)


def test_cli_plan_paper(tmp_path):
    out = _cli(tmp_path, "--scale", "paper")
    assert out.returncode == 0, out.stderr
    assert "33 runs before deduplication" in out.stdout and "24 unique runs after deduplication" in out.stdout
    assert "t2.r9,t3.r1,t4.r1,t5.r2,t6.r2,fig4.manifold" in out.stdout
    assert "24 missing" in out.stdout and not (tmp_path / "kdgrid.db").exists()


@pytest.mark.slow
def test_cli_plan_mini_tables_seeds_and_dump(tmp_path):
    out = _cli(tmp_path, "--scale", "mini", "--tables", "2,5", "--seeds", "3", "--dump", "specs")
    assert out.returncode == 0, out.stderr
    assert "45 runs before deduplication" in out.stdout and "42 unique runs after deduplication" in out.stdout
    assert "39 students, 3 teachers" in out.stdout
    assert len(list((tmp_path / "specs").glob("*.yaml"))) == 42 + 1
    bad = _cli(tmp_path, "--tables", "9")
    assert bad.returncode == 2 and "ablations/table9.yaml: --tables: no table '9'" in bad.stderr


# Hashes planned by the code before the rename `paper` -> `paper-sum` (commit 10a2d27): the recipe name
# is display only, so stores trained under `paper` keep their runs.
PINNED_PAPER_SUM_T2_R9 = "fea6a71ea0554804"  # t2.r9 (CaiT-S24 -> DeiT-Tiny manifold), mini, seed 0


def test_recipe_rename_keeps_every_hash():
    old, new = plan("mini", recipe="paper"), plan("mini", recipe="paper-sum")
    assert old.recipe == new.recipe == "paper-sum"
    assert [r.hash for r in old.runs] == [r.hash for r in new.runs]
    assert by_key(new, "t2.r9").hash == PINNED_PAPER_SUM_T2_R9
    assert by_key(new, "t2.r9").spec.recipe_name == "paper-sum"
    mean = plan("mini", recipe="paper-mean")
    assert by_key(mean, "t2.r9").hash != by_key(new, "t2.r9").hash
    assert by_key(mean, "t2.r1").hash == by_key(new, "t2.r1").hash  # hard rows: shared by every recipe


def test_the_default_recipe_comes_from_recipes_yaml():
    assert make_plan("mini", "fig4").recipe == load_recipes().default == "paper-mean"


def test_row_seeds_add_seeds_to_one_run_wherever_it_stands():
    base = plan("mini", seeds=2)
    key = base.row_hashes[("3", 0)][0]  # the CaiT-S24 -> DeiT-Tiny manifold run: Tables 2-6 and Figure 4
    more = plan("mini", seeds=2, row_seeds=((key, 4),))
    added = {r.hash for r in more.runs} - {r.hash for r in base.runs}
    assert len(added) == 2 and all(more.run(h).seed in (2, 3) for h in added)
    for k, hs in more.row_hashes.items():
        assert len(hs) == (4 if hs[0] == key else 2), k
    assert sum(len(hs) == 4 for hs in more.row_hashes.values()) >= 6  # t2, t3, t4, t5, t6, fig4
    assert more.rows_before_dedup == base.rows_before_dedup + 2 * sum(len(hs) == 4 for hs in more.row_hashes.values())
