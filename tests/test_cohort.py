"""A run's numbers do not depend on its company: solo and cohort training give identical metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests import smoke_specs
from trainer.run import cohorts, train_specs
from trainer.spec import parse_experiment

pytestmark = pytest.mark.slow


def numbers(work: Path, h: str) -> list[dict]:
    hist = json.loads((work / h / "history.json").read_text())
    return [{k: v for k, v in e.items() if not (k.endswith("time_s") or k.startswith("cost."))} for e in hist]


def test_cohort_and_solo_training_give_identical_metrics(tmp_path):
    teacher = parse_experiment(smoke_specs.teacher(epochs=1, train=512))
    base = tmp_path / "teacher"
    assert train_specs([teacher], work=base, tracking_uri=f"sqlite:///{tmp_path / 't.db'}", threads=1) == {
        teacher.content_hash(): "finished"
    }
    t = teacher.content_hash()
    variants = [
        dict(kd="hard", manifold={"k": 192}),
        dict(
            kd="soft",
            tau=2.0,
            kd_weight=1.0,
            manifold={"k": 384, "terms": ["ci", "rs"], "reduction": "released", "exact": True, "exact_weight": 0.5},
        ),
        dict(kd="hard", embedding={"weight": 0.1}),  # widths 16 vs 32: a learned projection per block pair
    ]
    students = []
    for i, d in enumerate(variants):
        s = smoke_specs.student(t, epochs=2, train=512, **d)
        s["name"] = f"variant {i}"
        students.append(parse_experiment(s))
    assert len(cohorts(students)) == 1, "the variants must form one cohort"

    def fresh(name: str) -> Path:
        work = tmp_path / name
        shutil.copytree(base, work)
        return work

    solo = fresh("solo")
    for s in students:
        train_specs([s], work=solo, tracking_uri=f"sqlite:///{tmp_path / 'solo.db'}", threads=1)
    together = fresh("cohort")
    results = train_specs(students, work=together, tracking_uri=f"sqlite:///{tmp_path / 'cohort.db'}", threads=1)
    assert set(results.values()) == {"finished"}
    for s in students:
        h = s.content_hash()
        a, b = numbers(solo, h), numbers(together, h)
        assert len(a) == 2 and a == b, s.name
    # and the variants really differ from each other
    assert len({json.dumps(numbers(together, s.content_hash())) for s in students}) == 3
