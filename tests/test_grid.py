"""The paper's tables, scales and recipes as data: every row as printed, and malformed files rejected with
file, field path and reason. Nothing here trains or builds real weights (models on the meta device only)."""

from __future__ import annotations

import pytest
import yaml

from orchestrator import grid
from orchestrator.grid import GridError, get_recipe, load_recipes, load_scale, load_table, recipe_names, to_yaml

TINY, SMALL = "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224"
REGNET, XXS, S24 = "regnety_160", "cait_xxs24_224", "cait_s24_224"
FIRST4_LAST4_T = (1, 2, 3, 4, 21, 22, 23, 24)
FIRST4_LAST4_S = (1, 2, 3, 4, 9, 10, 11, 12)

# Typed from the paper (teacher, teacher Acc1, method, student, Acc1).
TABLE2 = [
    (REGNET, 82.9, "hard", TINY, 74.48),
    (REGNET, 82.9, "hard", SMALL, 81.16),
    (XXS, 77.6, "hard", TINY, 73.86),
    (XXS, 77.6, "hard", SMALL, 80.11),
    (S24, 82.7, "hard", TINY, 74.39),
    (S24, 82.7, "hard", SMALL, 81.27),
    (XXS, 77.6, "manifold", TINY, 74.46),
    (XXS, 77.6, "manifold", SMALL, 80.25),
    (S24, 82.7, "manifold", TINY, 75.06),
    (S24, 82.7, "manifold", SMALL, 81.48),
]
TABLE3 = [(("ci", "cp", "rs"), 75.06), (("ci", "cp"), 74.62), (("ci", "rs"), 74.54), (("cp", "rs"), 74.63)]
TABLE4 = [(1, 0.2, 75.06), (0.5, 0.2, 74.72), (2.5, 0.2, 74.90), (1, 1, 74.73)]
TABLE5 = [
    ({3, 4, 21, 22}, {3, 4, 9, 10}, 74.50),
    ({1, 2, 3, 4, 21, 22, 23, 24}, {1, 2, 3, 4, 9, 10, 11, 12}, 75.06),
    ({1, 2, 3, 9, 10, 11, 22, 23, 24}, {1, 2, 3, 5, 6, 7, 10, 11, 12}, 74.30),
    ({1, 2, 3, 4, 9, 10, 11, 12, 21, 22, 23, 24}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, 74.31),
]
TABLE6 = [(0, 74.62), (192, 75.06), (384, 74.95), (768, 74.81)]
TABLE7 = [
    (XXS, TINY, "embedding", 74.31),
    (XXS, TINY, "manifold", 74.46),
    (S24, SMALL, "embedding", 81.41),
    (S24, SMALL, "manifold", 81.48),
]
FIG4 = [
    ("none", None, "deit_tiny_patch16_224", "none", 72.2),
    ("hard", S24, TINY, "hard", 74.39),
    ("manifold", S24, TINY, "manifold", 75.06),
]

HEADERS = {
    "2": ["Teacher", "Acc1", "Distillation method", "Student", "Acc1"],
    "3": ["Teacher", "Student", "Manifold losses", "Acc1"],
    "4": ["Teacher", "Student", "α", "β", "Acc1"],
    "5": ["Teacher", "Student", "Teacher blocks extracted", "Student blocks extracted", "Acc1"],
    "6": ["Teacher", "Student", "k", "Acc1"],
    "7": ["Teacher", "Student", "Distillation method", "Acc1"],
}


def test_table2_rows_as_printed():
    t = load_table("2")
    assert (t.table, t.label) == ("2", "t2")
    assert [(r.teacher, r.teacher_acc1, r.method, r.student, r.paper_acc1) for r in t.rows] == TABLE2
    # manifold rows take the recipe's settings: none set in the row
    assert all(r.alpha is None and r.k is None and r.teacher_blocks is None for r in t.rows)
    assert t.cells(0) == ["RegNetY-16GF", "82.9", "Hard", "DeiT-Tiny", "74.48"]
    assert t.cells(8) == ["CaiT-S24 (our)", "82.7", "Manifold", "DeiT-Tiny", "75.06"]
    assert t.cells(6)[0] == "CaiT-XXS24 (our)"
    assert [r.key for r in t.rows] == [f"t2.r{i}" for i in range(1, 11)] == [t.row_key(i) for i in range(10)]


def test_tables_3_to_6_vary_one_setting_of_cait_s24_to_deit_tiny():
    for tid in "3456":
        t = load_table(tid)
        assert all((r.teacher, r.student, r.method) == (S24, TINY, "manifold") for r in t.rows), tid
    assert [(r.terms, r.paper_acc1) for r in load_table("3").rows] == TABLE3
    assert [(r.alpha, r.beta, r.paper_acc1) for r in load_table("4").rows] == TABLE4
    t5 = load_table("5")
    assert [(set(r.teacher_blocks), set(r.student_blocks), r.paper_acc1) for r in t5.rows] == TABLE5
    assert t5.cells(0) == ["CaiT-S24", "DeiT-Tiny", "{3,4,21,22}", "{3,4,9,10}", "74.50"]
    assert [(r.k, r.paper_acc1) for r in load_table("6").rows] == TABLE6
    assert load_table("3").cells(1)[2] == "L_ci, L_cp"
    assert load_table("4").cells(1)[2:4] == ["0.5", "0.2"]


def test_table7_and_figure4():
    t7 = load_table("7")
    assert [(r.teacher, r.student, r.method, r.paper_acc1) for r in t7.rows] == TABLE7
    assert all(r.teacher_blocks is None for r in t7.rows)  # the recipe's first-four/last-four blocks
    f = load_table("fig4")
    assert f.table == "fig4" and f.label == "fig4"
    assert [(r.curve, r.teacher, r.student, r.method, r.paper_acc1) for r in f.rows] == FIG4
    assert [f.row_key(i) for i in range(3)] == [r.key for r in f.rows] == ["fig4.none", "fig4.hard", "fig4.manifold"]
    assert f.cells(0) == ["none", "", "DeiT-Tiny", "None", "72.2"]
    assert load_table("figure4") == f


def test_columns_in_the_papers_order():
    for tid, headers in HEADERS.items():
        t = load_table(tid)
        assert [c.header for c in t.columns] == headers, tid
        assert t.title.startswith(f"Table {tid}") and t.caption
    assert [c.field for c in load_table("5").columns] == [
        "teacher",
        "student",
        "teacher_blocks",
        "student_blocks",
        "paper_acc1",
    ]
    assert sum(len(load_table(t).rows) for t in grid.TABLE_IDS) == 33


def test_table_yaml_round_trip(write_yaml):
    for tid in grid.TABLE_IDS:
        t = load_table(tid)
        assert load_table(write_yaml(f"t{tid}.yaml", to_yaml(t))) == t


def test_scales():
    paper, _ = load_scale("paper")
    d, r = paper.data, paper.student.recipe
    assert (d.dataset, d.img_size, d.in_chans, d.num_classes, d.root) == ("imagenet", 224, 3, 1000, None)
    a = d.augment
    assert (a.rand_augment, a.mixup, a.cutmix, a.smoothing, a.reprob, a.repeated_aug, a.color_jitter) == (
        "rand-m9-mstd0.5-inc1",
        0.8,
        1.0,
        0.1,
        0.25,
        True,
        0.3,
    )
    assert (r.epochs, r.batch_size, r.lr, r.lr_scale_batch) == (300, 128, 5e-4, 512)
    assert paper.student.drop_path == 0.1
    assert paper.launch.resources["gpus"] == 8
    assert {n: t.source for n, t in paper.teachers.items()} == {
        REGNET: "hub",
        XXS: "hub",
        S24: "hub",  # and ViTKD's DeiT III teachers (ablations/vitkd.yaml)
        "deit3_small_patch16_224": "hub",
        "deit3_base_patch16_224": "hub",
        "deit3_large_patch16_224": "hub",
    }
    assert paper.models[REGNET].name == "regnety_160.deit_in1k"  # DeiT's teacher weights, not timm's default
    assert paper.models[TINY].name == TINY

    paper, _ = load_scale("paper", ["data.root=/datasets/imagenet", f"teachers.{S24}.path=/x.pth"])
    assert paper.data.root == "/datasets/imagenet"
    assert (paper.teachers[S24].source, paper.teachers[S24].path) == ("checkpoint", "/x.pth")

    mini, _ = load_scale("mini")
    assert mini.data.dataset == "fashion_mnist" and mini.student.recipe.lr_scale_batch is None
    assert {t.source for t in mini.teachers.values()} == {"train"}
    assert mini.models[TINY].name == "analog_deit_tiny_distilled" and mini.models[TINY].kwargs["patch_size"] == 7
    # teachers see the whole training set (train_subset None) and more images in all than any student
    assert mini.teacher_data(S24).train_subset is None and mini.data.train_subset == 5000
    assert 60000 * mini.teachers[S24].recipe.epochs > mini.data.train_subset * mini.student.recipe.epochs
    assert mini.launch.max_cohort

    smoke, _ = load_scale("smoke")
    assert smoke.models[TINY].kwargs["embed_dim"] == 16 and smoke.models[SMALL].kwargs["embed_dim"] == 32
    from trainer.models import model_info

    info = model_info(smoke.models[TINY].name, **smoke.models[TINY].kwargs)
    assert info.num_patches == 16 and 768 <= smoke.student.recipe.batch_size * info.num_patches


def test_recipes():
    book = load_recipes()
    assert (book.hard.kd, book.hard.kd_weight) == ("hard", 0.5) and book.default == "paper-mean"
    assert book.aliases == {"paper": "paper-sum"} and get_recipe(book, "paper") is book.recipes["paper-sum"]
    assert recipe_names(book, "all") == ["paper-sum", "paper-mean", "released"]
    assert recipe_names(book, "paper,paper-sum, released") == ["paper-sum", "released"]
    assert recipe_names(book, None) == ["paper-mean"]
    pm = book.recipes["paper-mean"].manifold
    assert (pm.reduction, pm.layers, pm.alpha, pm.beta, pm.k) == ("mean", "sum", 1.0, 0.2, 192)
    p, r = book.recipes["paper-sum"], book.recipes["released"]
    assert (p.logit.kd, p.logit.kd_weight) == ("hard", 0.5)
    m = p.manifold
    assert (m.reduction, m.alpha, m.beta, m.k, m.weight) == ("sum", 1.0, 0.2, 192, 1.0)
    assert (m.student_blocks, m.teacher_blocks) == (FIRST4_LAST4_S, FIRST4_LAST4_T)
    assert (m.term_scale.ci, m.term_scale.cp, m.term_scale.rs) == (1, 1, 1)
    assert (r.logit.kd, r.logit.tau, r.logit.kd_weight) == ("soft", 1.0, 1.0)
    m = r.manifold
    assert (m.reduction, m.weight, m.alpha, m.beta, m.k) == ("mean", 1.0, 1.0, 0.2, 192)
    assert (m.term_scale.ci, m.term_scale.cp, m.term_scale.rs * m.beta) == (0.1, 4.0, 0.2)
    assert r.student.drop_path == 0.0
    assert (p.embedding.student_blocks, p.embedding.teacher_blocks) == (FIRST4_LAST4_S, FIRST4_LAST4_T)


# ---- malformed files: file, field path and reason ---------------------------------------------------
def _table(**row_overrides) -> dict:
    return {
        "table": "9",
        "title": "test",
        "columns": [{"header": "Teacher", "field": "teacher"}],
        "base": {"teacher": S24, "student": TINY, "method": "manifold"},
        "rows": [{"paper_acc1": 70.0}, {"k": 384, "paper_acc1": 71.0, **row_overrides}],
    }


def _rejects(path, *expected) -> str:
    with pytest.raises(GridError) as err:
        load_table(path)
    msg = str(err.value)
    for part in (str(path), *expected):
        assert part in msg, (part, msg)
    return msg


@pytest.mark.parametrize(
    "overrides, field, reason",
    [
        ({"alpha": -1}, "rows[1].alpha", "greater than or equal to 0"),
        ({"beta": "0.2"}, "rows[1].beta", "valid number"),
        ({"beta": float("nan")}, "rows[1].beta", "finite number"),
        ({"teacher_blocks": [1, 0]}, "rows[1].teacher_blocks[1]", "greater than or equal to 1"),
        ({"student": "deit_tinyy_patch16_224"}, "rows[1].student", "unknown model"),
        ({"alfa": 1}, "rows[1].alfa", "unknown key (did you mean alpha?)"),
        ({"paper_acc1": "75"}, "rows[1].paper_acc1", "valid number"),
        ({"method": "hard"}, "rows[1].k", "only manifold rows take k"),
        ({"teacher_blocks": [1, 2], "student_blocks": [1]}, "rows[1].teacher_blocks", "paired in order"),
    ],
)
def test_bad_row_values(write_yaml, overrides, field, reason):
    _rejects(write_yaml("bad.yaml", _table(**overrides)), field, reason)


def test_row_without_paper_value(write_yaml):
    data = _table()
    del data["rows"][1]["paper_acc1"]
    _rejects(write_yaml("t.yaml", data), "rows[1].paper_acc1", "missing", "paper")


def test_duplicate_rows(write_yaml):
    data = _table()
    data["rows"].append({"k": 384, "paper_acc1": 72.0})
    _rejects(write_yaml("t.yaml", data), "rows[2]", "duplicates rows[1]")


def test_unknown_keys_and_columns(write_yaml):
    data = _table()
    data["colums"] = []
    _rejects(write_yaml("t.yaml", data), "colums", "unknown key")
    data = _table()
    data["columns"].append({"header": "X", "field": "nope"})
    _rejects(write_yaml("t.yaml", data), "columns[1].field", "Input should be")
    data = _table()
    data["base"]["paper_acc1"] = 70.0
    _rejects(write_yaml("t.yaml", data), "base.paper_acc1", "unknown key")


def test_figure_rows_need_a_curve(write_yaml):
    data = _table()
    data["table"] = "fig4"
    _rejects(write_yaml("f.yaml", data), "rows[0].curve", "missing")


def test_unknown_table():
    with pytest.raises(GridError) as err:
        load_table("9")
    assert "ablations/table9.yaml" in str(err.value) and "--tables" in str(err.value)
    assert "no table '9'" in str(err.value)


def test_bad_scales(write_yaml):
    raw = yaml.safe_load((grid.EXPERIMENTS / "smoke.yaml").read_text())
    cases = [
        (["data.augment.mixupp=1"], "data.augment.mixupp", "unknown key (did you mean mixup?)"),
        (["student.recipe.lr=-1"], "student.recipe.lr", "greater than 0"),
        (["student.recipe.lr=abc"], "student.recipe.lr", "valid number"),
        ([f"teachers.{S24}.recipe.epoch=3"], f"teachers.{S24}.recipe.epoch", "did you mean epochs"),
        ([f"models.{TINY}.name=deit_tinyy"], f"models.{TINY}.name", "unknown model"),
        ([f"models.{TINY}.kwargs.num_heads=5"], f"models.{TINY}.kwargs", "cannot build"),
        ([f"teachers.{S24}.source=checkpoint"], f"teachers.{S24}.path", "needs the checkpoint file"),
    ]
    path = write_yaml("scale.yaml", raw)
    for overrides, field, reason in cases:
        with pytest.raises(GridError) as err:
            load_scale(path, overrides)
        msg = str(err.value)
        assert str(path) in msg and field in msg and reason in msg, (overrides, msg)
    # --set changes one teacher even where YAML anchors share one mapping between teachers
    s, _ = load_scale(path, [f"teachers.{S24}.recipe.epochs=7"])
    assert s.teachers[S24].recipe.epochs == 7 and s.teachers[XXS].recipe.epochs == 2
    with pytest.raises(GridError, match="no scale 'huge'"):
        load_scale("huge")


# ---- YAML: a key given twice is refused, naming the file, the key and its lines ---------------------
def test_duplicate_keys_are_refused_with_file_key_and_line(write_yaml):
    smoke = (grid.EXPERIMENTS / "smoke.yaml").read_text()
    twice = smoke.replace(
        "models:\n", f"models:\n  {TINY}: {{name: analog_deit_tiny_distilled, kwargs: {{patch_size: 7}}}}\n", 1
    )
    path = write_yaml("scale.yaml", twice)
    with pytest.raises(GridError) as err:
        load_scale(path)
    msg = str(err.value)
    assert str(path) in msg and f"models.{TINY}: duplicate key '{TINY}'" in msg, msg
    line = 1 + next(i for i, text in enumerate(twice.splitlines()) if text.startswith(f"  {TINY}:  "))
    assert f"on line {line} (first on line 7)" in msg, msg
    # in a table row too, and merge keys (`<<: *anchor`) may still be overridden
    table = "table: '9'\ntitle: t\ncolumns: []\nrows:\n  - {k: 1, k: 2, paper_acc1: 70.0}\n"
    with pytest.raises(GridError, match=r"rows\[0\]\.k: duplicate key 'k' on line 5"):
        load_table(write_yaml("t.yaml", table))
    from trainer import strict_yaml

    assert strict_yaml.loads("a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  p: 3\n") == {
        "a": {"p": 1, "q": 2},
        "b": {"p": 3, "q": 2},
    }


def test_the_grid_files_have_no_duplicate_keys():
    """The three scales mapped deit_small_patch16_224 twice (equal copies); every file now reads strictly."""
    from trainer import strict_yaml

    for path in sorted(grid.EXPERIMENTS.glob("*.yaml")) + sorted(grid.ABLATIONS.glob("*.yaml")):
        assert strict_yaml.read(path) == yaml.safe_load(path.read_text()), path


def test_other_tables_are_not_read_at_import():
    """Importing the grid reads no table: the other tables of ablations/ are found on first use."""
    import subprocess
    import sys

    code = (
        "import pathlib; seen = []; real = pathlib.Path.read_text\n"
        "pathlib.Path.read_text = lambda self, *a, **k: (seen.append(self.name), real(self, *a, **k))[1]\n"
        "import orchestrator.grid, orchestrator.plan; print(sorted({n for n in seen if n.endswith('.yaml')}))\n"
        "from orchestrator.grid import EXTRA_TABLES; print(EXTRA_TABLES)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]" and "'vitkd'" in out[1], out


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("analog_cait_s24", {"patch_size": 7, "embed_dim": 32, "num_heads": 8}),
        ("analog_deit_tiny_distilled", {"patch_size": 7, "embed_dim": 16, "num_heads": 2}),
        ("analog_regnety_160", {"depth": 6, "w0": 8, "wa": 8.0, "wm": 2.0, "group_size": 8}),
        ("deit_small_patch16_224", {}),
    ],
)
def test_model_info_reads_the_model_that_create_builds(name, kwargs):
    """model_info (and the memory and FLOP estimates) build on the meta device with the initialisers skipped
    (they only write values): that model has the parameters, shapes and attributes of the one `create` builds
    with real weights."""
    import torch

    from trainer.models import _NoValues, build_on_meta, create, model_info

    real = create(name, **kwargs)
    meta = build_on_meta(name, **kwargs)
    assert [(k, v.shape) for k, v in meta.state_dict().items()] == [(k, v.shape) for k, v in real.state_dict().items()]
    assert all(v.is_meta for v in meta.state_dict().values())
    info = model_info(name, **kwargs)
    assert info.params == sum(p.numel() for p in real.parameters())
    if hasattr(real, "blocks"):  # ViT, DeiT, CaiT
        assert info.depth == len(real.blocks) and info.width == real.embed_dim
        assert info.num_patches == real.patch_embed.num_patches
    else:
        assert info.kind == "cnn" and info.depth is None
    # the values are skipped on meta tensors only: a real tensor under the mode is still initialised
    with _NoValues():
        t = torch.zeros(3).uniform_(1.0, 2.0)
    assert bool((t >= 1.0).all())
