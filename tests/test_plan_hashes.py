"""Every run of the paper's grid keeps its content hash across the method registry (issue 13): the smoke,
mini and paper plans of every recipe, 3 seeds, against the hashes recorded before the refactor."""

from __future__ import annotations

import json

import pytest

from tests.plan_hashes import FIXTURE, RECIPES, SCALES, plan_hashes

RECORDED = json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_plans_hash_as_recorded(scale, recipe):
    now = plan_hashes(scale, recipe)
    before = RECORDED[f"{scale}/{recipe}"]
    changed = {k: (before["rows"][k], v) for k, v in now["rows"].items() if before["rows"].get(k) != v}
    assert not changed, f"rows whose runs changed hash: {changed}"
    assert now["rows"].keys() == before["rows"].keys()
    assert now["runs"] == before["runs"]
