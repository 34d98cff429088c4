"""NKD's loss (trainer/methods/nkd.py) against its definition computed by hand, per image, in double
precision: the target class's term and the renormalised non-target distributions."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.methods.nkd import nkd_loss


def _by_hand(s, t, y, temp, gamma):
    total_t, total_non = 0.0, 0.0
    for row_s, row_t, label in zip(s.double().tolist(), t.double().tolist(), y.tolist()):
        zs = sum(math.exp(v) for v in row_s)
        zt = sum(math.exp(v) for v in row_t)
        total_t += -(math.exp(row_t[label]) / zt) * math.log(math.exp(row_s[label]) / zs)
        others = [c for c in range(len(row_s)) if c != label]
        ns = sum(math.exp(row_s[c] / temp) for c in others)
        nt = sum(math.exp(row_t[c] / temp) for c in others)
        total_non += sum((math.exp(row_t[c] / temp) / nt) * math.log(math.exp(row_s[c] / temp) / ns) for c in others)
    n = len(y)
    return total_t / n - gamma * temp**2 * total_non / n


@pytest.mark.parametrize("temp,gamma", [(1.0, 1.0), (2.0, 1.5)])
def test_nkd_against_the_definition(temp, gamma):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    y = torch.tensor([0, 5, 2, 2])
    assert nkd_loss(s, t, y, temp=temp, gamma=gamma).item() == pytest.approx(_by_hand(s, t, y, temp, gamma), rel=1e-5)


def test_soft_targets_use_their_argmax_and_the_teacher_gets_no_gradient():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 5, generator=g, requires_grad=True)
    t = torch.randn(3, 5, generator=g, requires_grad=True)
    soft = torch.softmax(torch.randn(3, 5, generator=g) * 3, dim=1)  # Mixup-like targets
    loss = nkd_loss(s, t, soft)
    assert loss.item() == pytest.approx(_by_hand(s.detach(), t.detach(), soft.argmax(1), 1.0, 1.0), rel=1e-5)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
