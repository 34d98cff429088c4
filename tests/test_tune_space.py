"""The search file of `kdgrid tune`: distributions parsed, unknown fields and bad ranges named (file, key,
reason) before anything starts, every bound checked by the spec's own pydantic fields, and a trial being
the base row's spec with the sampled fields applied (so the paper's choice is the grid's own run)."""

from __future__ import annotations

import pytest

from orchestrator.grid import GridError
from orchestrator.tune.space import SearchSpec, check_fields, load_search, parse_param

BASE = {"search": "t", "base": "fig4.manifold"}


def _load(write_yaml, space, **extra):
    return load_search(write_yaml("s.yaml", {**BASE, "space": space, **extra}))


def _problems(err: GridError) -> dict[str, str]:
    return {path: reason for _, path, reason in err.entries}


def test_distributions_parse():
    p = parse_param("a", "loguniform(0.1, 10)")
    assert (p.dist, p.low, p.high, p.log) == ("loguniform", 0.1, 10.0, True)
    p = parse_param("k", "choice([0, 96, 192, 384])")
    assert p.options == (0, 96, 192, 384) and p.probe_values() == [0, 96, 192, 384]
    assert parse_param("k", {"choice": [1, 2]}).options == (1, 2)  # the YAML form, for options over lines
    p = parse_param("n", "randint(1, 4)")
    assert p.probe_values() == [1, 3]  # Tune's upper bound is exclusive: 3 is the largest value drawn
    blocks = parse_param("m", {"choice": [{"student_blocks": [1, 2], "teacher_blocks": [1, 2]}]})
    assert blocks.options == ({"student_blocks": (1, 2), "teacher_blocks": (1, 2)},)


def test_tune_domains_sample_inside_the_range():
    import numpy as np

    d = parse_param("a", "loguniform(0.1, 10)").domain()
    values = d.sample(size=200, random_state=np.random.RandomState(0))
    assert min(values) >= 0.1 and max(values) <= 10
    # log-uniform: about half the draws below the geometric middle (1), not the arithmetic one (5.05)
    assert 0.35 < sum(v < 1 for v in values) / len(values) < 0.65


@pytest.mark.parametrize(
    "text, words",
    [
        ("loguniform(0, 10)", "above 0"),
        ("loguniform(-1, 10)", "above 0"),
        ("uniform(2, 1)", "empty range"),
        ("randint(1, 1.5)", "integers"),
        ("lognormal(0, 1)", "unknown distribution 'lognormal'"),
        ("uniform(1)", "takes 2 argument"),
        ("choice([])", "non-empty list"),
        ("uniform(0, .inf)", "finite"),
        ("0.5", "not a distribution"),
    ],
)
def test_bad_ranges_name_the_key(write_yaml, text, words):
    with pytest.raises(GridError) as err:
        _load(write_yaml, {"distillation.manifold.alpha": text})
    problems = _problems(err.value)
    assert list(problems) == ["space.distillation.manifold.alpha"], problems
    assert words in problems["space.distillation.manifold.alpha"]
    assert "s.yaml" in str(err.value)


@pytest.mark.parametrize(
    "key, words",
    [
        ("distillation.manifold.alfa", "unknown field 'distillation.manifold.alfa'"),
        ("distillation.manifol.alpha", "unknown field 'distillation.manifol'"),
        ("seed", "seeds are not searched"),
        ("data.num_workers", "execution detail"),
        ("recipe.lr.x", "recipe.lr is a value"),
        ("distillation.manifold", "group of fields"),
    ],
)
def test_unknown_or_unsearchable_fields_are_named(write_yaml, key, words):
    with pytest.raises(GridError) as err:
        _load(write_yaml, {key: "choice([1, 2])"})
    problems = _problems(err.value)
    assert words in problems[f"space.{key}"], problems


def test_a_key_with_two_problems_reports_both(write_yaml):
    with pytest.raises(GridError) as err:
        _load(write_yaml, {"distillation.manifold.alfa": "loguniform(0, 1)", "recipe.lr": "uniform(2, 1)"})
    reasons = [(path, reason) for _, path, reason in err.value.entries]
    assert [p for p, _ in reasons] == ["space.distillation.manifold.alfa"] * 2 + ["space.recipe.lr"]
    assert "above 0" in reasons[0][1] and "unknown field" in reasons[1][1] and "empty range" in reasons[2][1]


def test_group_choices_check_their_fields_and_overlaps(write_yaml):
    bad = {"distillation.manifold": {"choice": [{"student_blocks": [1], "teacher_blok": [1]}]}}
    with pytest.raises(GridError) as err:
        _load(write_yaml, bad)
    assert "unknown field" in _problems(err.value)["space.distillation.manifold.options[0].teacher_blok"]
    both = {
        "distillation.manifold": {"choice": [{"student_blocks": [1], "teacher_blocks": [1]}]},
        "distillation.manifold.student_blocks": "choice([[2]])",
    }
    with pytest.raises(GridError) as err:
        _load(write_yaml, both)
    assert "search each field once" in _problems(err.value)["space.distillation.manifold.student_blocks"]
    # a group and an unrelated field of the same group are fine
    ok = SearchSpec.model_validate(
        {
            **BASE,
            "space": {
                "distillation.manifold": bad["distillation.manifold"] | {},
                "distillation.manifold.alpha": "uniform(0, 1)",
            },
        }
    )
    assert [p for p in check_fields(ok) if "alpha" in p[0]] == []


def test_unknown_top_level_key_and_paper_fields(write_yaml):
    with pytest.raises(GridError) as err:
        _load(write_yaml, {"distillation.manifold.alpha": "uniform(0, 1)"}, sheduler="asha")
    assert _problems(err.value)["sheduler"] == "unknown key"
    with pytest.raises(GridError) as err:
        _load(write_yaml, {"distillation.manifold.alpha": "uniform(0, 1)"}, paper={"distillation.manifold.alfa": 1})
    assert "unknown field" in _problems(err.value)["paper.distillation.manifold.alfa"]


# ---- against the base row's spec (plans the smoke scale's Figure 4 table; no training) -------------------
def _prepare(write_yaml, space, **extra):
    from orchestrator.tune.search import prepare

    return prepare(write_yaml("s.yaml", {**BASE, "space": space, **extra}), "smoke")


@pytest.mark.parametrize(
    "space, key, words",
    [
        (
            {"distillation.manifold.alpha": "uniform(-1, 1)"},
            "space.distillation.manifold.alpha",
            "greater than or equal to 0",
        ),
        ({"distillation.manifold.k": "choice([96, 5000])"}, "space.distillation.manifold.k", "larger than the batch"),
        (
            {"distillation.manifold": {"choice": [{"student_blocks": [1, 13], "teacher_blocks": [1, 24]}]}},
            "space.distillation.manifold",
            "block 13 is beyond",
        ),
        ({"distillation.kd": "choice([hard, sof])"}, "space.distillation.kd", "'sof'"),
        ({"recipe.epochs": "randint(0, 3)"}, "space.recipe.epochs", "greater than or equal to 1"),
    ],
)
def test_values_are_checked_by_the_spec_before_anything_starts(write_yaml, space, key, words):
    with pytest.raises(GridError) as err:
        _prepare(write_yaml, space)
    problems = _problems(err.value)
    assert key in problems and words in problems[key], problems
    assert "base fig4.manifold at scale smoke" in problems[key]


def test_unknown_base_row(write_yaml):
    with pytest.raises(GridError) as err:
        _prepare(write_yaml, {"distillation.manifold.alpha": "uniform(0, 1)"}, base="fig4.manfold")
    assert "fig4.manifold" in _problems(err.value)["base"]  # the rows it could be


def test_trials_are_the_base_row_with_the_sampled_fields(write_yaml):
    from orchestrator.tune.search import run_spec

    setup = _prepare(
        write_yaml,
        {"distillation.manifold.alpha": "loguniform(0.1, 10)", "distillation.manifold.k": "choice([0, 96, 192])"},
        paper={"distillation.manifold.alpha": 1.0, "distillation.manifold.k": 192},
    )
    base = setup.base.spec

    def h(config, seed=0):
        return run_spec(base, config, seed, key=setup.key, role="trial", parent=None).content_hash()

    # the paper's choice is the recipe's values: the very run of Figure 4's manifold row (its content hash)
    assert h(dict(setup.search.paper)) == setup.base.hash
    assert setup.teachers and setup.teachers[0].hash == base.teacher.run  # the teacher is a planned run
    spec = run_spec(base, {"distillation.manifold.alpha": 0.3}, 2, key=setup.key, role="trial", parent="p")
    assert spec.distillation.manifold.alpha == 0.3 and spec.seed == 2
    assert spec.distillation.manifold.beta == base.distillation.manifold.beta  # everything else is the base's
    assert spec.tags["mlflow.parentRunId"] == "p" and spec.tags["kdgrid.search"] == "smoke/paper-mean/t"
    assert h({"distillation.manifold.alpha": 0.3}) != setup.base.hash
    # k=0 drops L_rs, so beta no longer matters: two such trials are one run
    assert h({"distillation.manifold.k": 0, "distillation.manifold.beta": 0.7}) == h(
        {"distillation.manifold.k": 0, "distillation.manifold.beta": 0.1}
    )


def test_cost_budget_stops_once_spent():
    from orchestrator.tune.search import CostBudget

    stop = CostBudget(cpu_hours=0.01, gpu_hours=None, uri="unused", scale="smoke", key="k")
    stop.spent = {"cost_cpu_s": 30.0, "cost_gpu_s": 0.0}  # what MLflow said the search had spent before
    assert stop("t1", {"cost_cpu_s": 5.0}) is False and not stop.stop_all()
    stop("t2", {"cost_cpu_s": 1.0})  # 36 s = 0.01 h
    assert stop.stop_all()
    gpu = CostBudget(cpu_hours=None, gpu_hours=0.5, uri="unused", scale="smoke", key="k")
    gpu.spent = {"cost_cpu_s": 0.0, "cost_gpu_s": 0.0}
    gpu("t", {"cost_cpu_s": 10**6, "cost_gpu_s": 1799.0})
    assert not gpu.stop_all()  # no CPU limit set; 1799 GPU-s < 1800
    gpu("t", {"cost_gpu_s": 1.0})
    assert gpu.stop_all()


def test_the_shipped_search_files_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "ablations"
    s = load_search(root / "search-manifold.yaml")
    assert set(s.space) == {
        "distillation.manifold.alpha",
        "distillation.manifold.beta",
        "distillation.manifold.k",
        "distillation.manifold",
    }
    assert s.paper["distillation.manifold.alpha"] == 1.0 and s.paper["distillation.manifold.beta"] == 0.2
    assert s.paper["distillation.manifold.k"] == 192
    assert load_search(root / "search-alpha-beta.yaml").space["distillation.manifold.beta"].log
    from orchestrator.tune.search import prepare

    for name in ("search-manifold.yaml", "search-alpha-beta.yaml"):  # every bound and block set fits the spec
        assert prepare(root / name, "smoke").base.spec.distillation.manifold.k == 192


def test_report_ranks_the_paper_among_finished_trials_and_groups_seeds(write_yaml):
    """The report's arithmetic on runs as MLflow would give them: stopped trials are listed, not ranked;
    the paper's choice is placed by its seed-0 run; the top configuration and the paper's choice are
    compared over their seeds with Welch's interval."""
    from orchestrator.tune.report import SearchRun, groups, markdown, paper_rank, plot, ranked_trials
    from orchestrator.tune.search import run_spec

    setup = _prepare(
        write_yaml, {"distillation.manifold.alpha": "loguniform(0.1, 10)"}, paper={"distillation.manifold.alpha": 1.0}
    )

    def run(alpha, seed, role, status, top1, epochs=2):
        cfg = {"distillation.manifold.alpha": alpha}
        h = run_spec(setup.base.spec, cfg, seed, key=setup.key, role=role, parent=None).content_hash()
        return SearchRun(
            h, f"id-{h[:6]}", "", cfg, seed, role, status, "ASHA" if status == "stopped" else None, epochs, top1
        )

    runs = [
        run(0.3, 0, "trial", "finished", 70.0),
        run(3.0, 0, "trial", "finished", 74.0),
        run(0.5, 0, "trial", "finished", 72.0),
        run(6.0, 0, "trial", "stopped", 80.0, epochs=1),
        run(0.2, 0, "trial", "failed", None),
        run(1.0, 0, "paper", "finished", 72.0),
        run(1.0, 1, "paper", "finished", 71.0),
        run(1.0, 2, "paper", "finished", 70.0),
        run(3.0, 1, "rerun", "finished", 75.0),
        run(3.0, 2, "rerun", "finished", 76.0),
    ]
    assert [r.top1 for r in ranked_trials(runs)] == [74.0, 72.0, 70.0]  # the stopped 80.0 is not ranked
    rank = paper_rank(setup, runs)
    assert (rank["rank"], rank["of"], rank["above"], rank["tied"], rank["below"]) == (2, 4, 1, 1, 1)
    assert rank["percentile"] == 50.0  # (1 below + half of 1 tied) / 3 others
    top, paper = groups(setup, runs, top=1, seeds=3)
    assert top.values == {0: 74.0, 1: 75.0, 2: 76.0} and paper.values == {0: 72.0, 1: 71.0, 2: 70.0}
    assert top.mean == 75.0 and paper.mean == 71.0 and paper.std == 1.0
    # Welch, equal stds of 1 over 3 seeds: se = sqrt(2/3), df = 4, t(0.975, 4) = 2.776 -> 4 ± 2.267
    md = markdown(setup, runs, top=1, seeds=3)
    assert "ranks **2 of 4**" in md and "stopped by ASHA at epoch 1" in md
    assert "| #1 | α=3 | 3 | 75.00 ± 1.00 | 74.00, 75.00, 76.00 | +4.00 [+1.73, +6.27] (better) |" in md
    assert "**5 trial(s)**: 3 finished, 1 stopped early by the scheduler (ASHA), 1 failed." in md
    assert plot(setup, runs)[:4] == b"\x89PNG"
