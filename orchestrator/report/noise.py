"""Pure: how much of a comparison's seed spread is evaluation noise and how much is training noise.

Rows A and B are trained at the same seeds and evaluated on the same images. At seed s their accuracy
difference is d_s. Over a random draw of evaluation images, with the two models fixed, d_s has variance
v_s = Var_i(c_A,s,i - c_B,s,i) / n, where c is per-image correctness and n the number of images. By the law
of total variance, the seeds' spread of d is E_s[v_s] plus the training variance (Bouthillier et al.,
"Accounting for variance in machine learning benchmarks", MLSys 2021).

The between-row correlation at equal seeds is what a paired test gains over Welch's: the paired standard
error is sd(d)/sqrt(S), and Welch's is sqrt((sd_A^2 + sd_B^2)/S).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NoiseSplit:
    seeds: int
    images: int
    diff: float  # mean over seeds of A - B, in points
    corr: float | None  # Pearson correlation of A's and B's accuracy over the common seeds
    sd_a: float  # seed spread of each row's accuracy (points)
    sd_b: float
    sd_diff: float  # seed spread of the per-seed difference (points)
    sd_eval: float  # sqrt(mean_s v_s): the evaluation images' share of sd_diff (points)
    disagree: float  # fraction of images where A and B are not both right or both wrong (mean over seeds)

    @property
    def sd_train(self) -> float:
        """What is left of the seed spread once evaluation noise is taken out (0 when the estimate is negative)."""
        return math.sqrt(max(self.sd_diff**2 - self.sd_eval**2, 0.0))

    @property
    def eval_share(self) -> float | None:
        """The evaluation noise's share of the variance of the per-seed difference."""
        return self.sd_eval**2 / self.sd_diff**2 if self.sd_diff > 0 else None

    @property
    def se_welch(self) -> float:
        return math.sqrt((self.sd_a**2 + self.sd_b**2) / self.seeds)

    @property
    def se_paired(self) -> float:
        return self.sd_diff / math.sqrt(self.seeds)


def split(
    correct_a: Mapping[int, Sequence[bool]],
    correct_b: Mapping[int, Sequence[bool]],
    images: Sequence[int] | None = None,
) -> NoiseSplit | None:
    """The noise split of one comparison from per-image correctness {seed: [bool per image]}; `images` keeps a
    subset of the images (e.g. a smaller evaluation set). None with fewer than two common seeds."""
    seeds = sorted(set(correct_a) & set(correct_b))
    if len(seeds) < 2:
        return None
    a = np.array([np.asarray(correct_a[s], dtype=float) for s in seeds])
    b = np.array([np.asarray(correct_b[s], dtype=float) for s in seeds])
    if a.shape != b.shape:
        raise ValueError(f"rows evaluated on different image counts: {a.shape[1]} vs {b.shape[1]}")
    if images is not None:
        idx = np.asarray(images)
        a, b = a[:, idx], b[:, idx]
    n = a.shape[1]
    acc_a, acc_b = 100 * a.mean(axis=1), 100 * b.mean(axis=1)
    d = acc_a - acc_b
    per_image = a - b  # -1, 0, +1
    v = 100**2 * per_image.var(axis=1, ddof=1) / n
    corr = None
    if acc_a.std() > 0 and acc_b.std() > 0:
        corr = float(np.corrcoef(acc_a, acc_b)[0, 1])
    return NoiseSplit(
        seeds=len(seeds),
        images=n,
        diff=float(d.mean()),
        corr=corr,
        sd_a=float(acc_a.std(ddof=1)),
        sd_b=float(acc_b.std(ddof=1)),
        sd_diff=float(d.std(ddof=1)),
        sd_eval=float(math.sqrt(v.mean())),
        disagree=float((per_image != 0).mean()),
    )


def correct(predictions: Mapping[str, Sequence[int]], head: str = "top1") -> list[bool]:
    """Per-image correctness of one head from a run's saved predictions (`labels` beside each head's top-1)."""
    return [p == y for p, y in zip(predictions[head], predictions["label"])]
