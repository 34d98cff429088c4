"""A table's own protocol at a scale (`scales.<scale>` of a table: data, recipe, per-student settings),
validated like the rest of the grid: on load, each key against the spec's own field; at plan time, every
problem of the merged spec named at the table's file and field."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.grid import ABLATIONS, GridError, load_table
from orchestrator.plan import make_plan


def vitkd_with(write_yaml, protocol: dict):
    data = yaml.safe_load((ABLATIONS / "vitkd.yaml").read_text())
    data["scales"] = {"paper": protocol}
    return write_yaml("vitkd.yaml", data)


@pytest.mark.parametrize(
    "protocol, field, reason",
    [
        ({"recipe": {"precison": "fp32"}}, "scales.paper.recipe.precison", "precision"),  # a typo: its fix named
        ({"recipe": {"precision": "fp8"}}, "scales.paper.recipe.precision", "'fp16', 'bf16' or 'fp32'"),
        ({"recipe": {"epochs": 0}}, "scales.paper.recipe.epochs", "greater than or equal to 1"),
        ({"data": {"augment": {"repeated_aug": "sometimes"}}}, "scales.paper.data.augment.repeated_aug", "boolean"),
        ({"data": {"augment": {"mixupp": 0.8}}}, "scales.paper.data.augment.mixupp", "mixup"),
        (
            {"students": {"deit_huge_patch14_224": {"drop_path": 0.0}}},
            "scales.paper.students.deit_huge_patch14_224",
            "no row of this table trains it",
        ),
        (
            {"students": {"deit_base_patch16_224": {"recipe": {"ema": "often"}}}},
            "scales.paper.students.deit_base_patch16_224.recipe.ema",
            "boolean",
        ),
        ({"drop_path": {"deit_tiny_patch16_224": 0.0}}, "scales.paper.drop_path", "students"),
    ],
)
def test_a_bad_key_or_value_is_named_on_load(write_yaml, protocol, field, reason):
    path = vitkd_with(write_yaml, protocol)
    with pytest.raises(GridError) as err:
        load_table(path)
    entries = {(f, r) for _, f, r in err.value.entries}
    assert any(f == field and reason in r for f, r in entries), entries


def test_a_problem_of_the_merged_spec_is_named_in_the_table(write_yaml):
    """eval_weights: ema without an EMA passes the partial check, fails the spec's: named at the student's
    own settings in the table, not at the scale."""
    path = vitkd_with(write_yaml, {"students": {"deit_base_patch16_224": {"recipe": {"eval_weights": "ema"}}}})
    with pytest.raises(GridError) as err:
        make_plan("paper", [path], 1)
    where = {(src, f) for src, f, _ in err.value.entries}
    assert (str(path), "scales.paper.students.deit_base_patch16_224.recipe.eval_weights") in where, where
    path = vitkd_with(write_yaml, {"recipe": {"global_batch": 1000}})
    with pytest.raises(GridError) as err:
        make_plan("paper", [path], 1)
    assert {f for _, f, _ in err.value.entries} == {"scales.paper.recipe.global_batch"}


def test_the_protocol_applies_to_its_scale_rows_and_students(write_yaml):
    path = vitkd_with(
        write_yaml,
        {
            "data": {"augment": {"smoothing": 0.0}},
            "recipe": {"warmup_epochs": 3},
            "students": {"deit_small_patch16_224": {"drop_path": 0.05, "recipe": {"clip_grad": 1.0}}},
        },
    )
    runs = {u.key: r.spec for r in make_plan("paper", [path], 1).runs for u in r.uses}
    assert {s.data.augment.smoothing for s in runs.values()} == {0.0}
    assert {s.recipe.warmup_epochs for s in runs.values()} == {3.0}
    small = [runs[f"vitkd.r{i}"] for i in (4, 5, 6)]
    assert all(s.student.drop_path == 0.05 and s.recipe.clip_grad == 1.0 for s in small)
    others = [s for k, s in runs.items() if k not in ("vitkd.r4", "vitkd.r5", "vitkd.r6")]
    assert all(s.student.drop_path == 0.1 and s.recipe.clip_grad is None for s in others)
    mini = [r.spec for r in make_plan("mini", [path], 1).students]  # a scale the table does not name
    assert all(s.recipe.warmup_epochs == 1.0 and s.student.drop_path == 0.1 for s in mini)
