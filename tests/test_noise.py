"""The noise split against its definition computed another way (explicit loops), and its two limits:
identical rows have no noise; rows that differ only by independent image-level flips have only evaluation
noise, whose size the binomial formula predicts."""

from __future__ import annotations

import math
import random

import pytest

from orchestrator.report import noise


def _explicit(a: dict[int, list[bool]], b: dict[int, list[bool]]):
    seeds = sorted(a)
    n = len(a[seeds[0]])
    d = [100 * (sum(a[s]) - sum(b[s])) / n for s in seeds]
    mean_d = sum(d) / len(d)
    var_d = sum((x - mean_d) ** 2 for x in d) / (len(d) - 1)
    v = []
    for s in seeds:
        x = [int(p) - int(q) for p, q in zip(a[s], b[s])]
        m = sum(x) / n
        v.append(100**2 * sum((xi - m) ** 2 for xi in x) / (n - 1) / n)
    acc_a = [100 * sum(a[s]) / n for s in seeds]
    acc_b = [100 * sum(b[s]) / n for s in seeds]
    ma, mb = sum(acc_a) / len(seeds), sum(acc_b) / len(seeds)
    cov = sum((x - ma) * (y - mb) for x, y in zip(acc_a, acc_b))
    corr = cov / math.sqrt(sum((x - ma) ** 2 for x in acc_a) * sum((y - mb) ** 2 for y in acc_b))
    return mean_d, math.sqrt(var_d), math.sqrt(sum(v) / len(v)), corr


def test_split_matches_the_definition():
    rng = random.Random(3)
    a = {s: [rng.random() < 0.8 for _ in range(500)] for s in range(5)}
    b = {s: [x if rng.random() < 0.9 else not x for x in a[s]] for s in range(5)}
    s = noise.split(a, b)
    diff, sd_diff, sd_eval, corr = _explicit(a, b)
    assert s.diff == pytest.approx(diff)
    assert s.sd_diff == pytest.approx(sd_diff)
    assert s.sd_eval == pytest.approx(sd_eval)
    assert s.corr == pytest.approx(corr)
    assert s.sd_train == pytest.approx(math.sqrt(max(sd_diff**2 - sd_eval**2, 0)))
    assert s.se_paired == pytest.approx(sd_diff / math.sqrt(5))


def test_identical_rows_have_no_noise_and_a_subset_keeps_its_images():
    rng = random.Random(0)
    a = {s: [rng.random() < 0.7 for _ in range(200)] for s in range(3)}
    s = noise.split(a, a)
    assert (s.diff, s.sd_diff, s.sd_eval, s.disagree) == (0.0, 0.0, 0.0, 0.0)
    assert s.corr == pytest.approx(1.0)
    sub = noise.split(a, a, images=range(50))
    assert sub.images == 50
    assert noise.split({0: [True]}, {0: [True]}) is None  # one seed: no spread


def test_pure_evaluation_noise_is_all_evaluation_noise():
    """B is A with each image flipped independently at rate q, fresh at every seed, and A is the same model at
    every seed: all of the difference's seed spread comes from which images flipped, and the binomial
    formula sqrt(q (1 - q) ... ) ~ sqrt(q / n) predicts it."""
    rng = random.Random(7)
    n, q, seeds = 4000, 0.05, 40
    base = [rng.random() < 0.8 for _ in range(n)]
    a = {s: base for s in range(seeds)}
    b = {s: [x if rng.random() >= q else not x for x in base] for s in range(seeds)}
    s = noise.split(a, b)
    assert s.sd_eval == pytest.approx(100 * math.sqrt(q / n), rel=0.05)
    assert s.sd_diff == pytest.approx(s.sd_eval, rel=0.3)  # 40 seeds: the spread estimates the same quantity
    assert s.disagree == pytest.approx(q, rel=0.1)


def test_correct_reads_a_head():
    preds = {"label": [1, 2, 3], "top1": [1, 0, 3], "cls": [0, 2, 3]}
    assert noise.correct(preds) == [True, False, True]
    assert noise.correct(preds, "cls") == [False, True, True]
