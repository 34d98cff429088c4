"""Cohorts fit the memory a worker is given, or are split (estimates from trainer.footprint)."""

from __future__ import annotations

import pytest

from orchestrator.launch.items import work_items
from orchestrator.plan import make_plan
from trainer.footprint import cohort_bytes, footprint

GiB = 2**30


def paper_s24_students():
    plan = make_plan("paper", tables="3,4,5,6", overrides=["data.root=/datasets/imagenet"])
    return [r for r in plan.runs if r.role == "student"]


def test_footprint_grows_with_the_model_and_the_manifold_maps():
    runs = {r.spec.name: r.spec for r in make_plan("paper", tables="2", overrides=["data.root=/x"]).runs}
    tiny_hard = footprint(runs["CaiT-S24→DeiT-Tiny · hard"])
    tiny_mf = footprint(runs["CaiT-S24→DeiT-Tiny · manifold"])
    small_mf = footprint(runs["CaiT-S24→DeiT-Small · manifold"])
    assert 2 * GiB < tiny_hard.student < tiny_mf.student < small_mf.student < 20 * GiB
    assert 0 < tiny_mf.teacher < tiny_mf.student


@pytest.mark.slow
def test_a_cohort_is_split_to_fit_the_memory_budget():
    runs = paper_s24_students()
    assert len(runs) == 12  # Tables 3-6 without their shared rows: one CaiT-S24 -> DeiT-Tiny cohort
    whole = work_items(runs, workers=1)
    assert len(whole) == 1
    budget = 24 * GiB  # a 24 GB GPU: a few of these students beside the teacher
    assert cohort_bytes([r.spec for r in runs]) > budget
    items = work_items(runs, workers=1, memory_budget=budget)
    assert all(cohort_bytes([r.spec for r in it.runs]) <= budget for it in items)
    sizes = sorted(len(it.runs) for it in items)
    assert 1 < len(items) < len(runs) and sizes[-1] - sizes[0] <= 1  # even parts
    assert sorted(h for it in items for h in it.hashes) == sorted(r.hash for r in runs)
    # the fewest parts: one fewer even split would not fit
    from orchestrator.launch.items import _even_chunks

    fewer = _even_chunks([r.spec for r in runs], len(items) - 1)
    assert any(cohort_bytes(c) > budget for c in fewer)
    big = work_items(runs, workers=1, memory_budget=200 * GiB)
    assert len(big) == 1


@pytest.mark.slow
def test_a_run_larger_than_the_budget_trains_alone():
    runs = paper_s24_students()
    items = work_items(runs, workers=1, memory_budget=1 * GiB)
    assert [len(it.runs) for it in items] == [1] * len(runs)
