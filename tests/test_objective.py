"""trainer.objective: the engine's loss, in float32 whatever dtype the heads return under autocast."""

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from benchmarks.bench_gpu import paper_mean_row
from trainer.objective import objective


def test_bf16_heads_give_float32_losses_equal_to_float32_heads():
    g = torch.Generator().manual_seed(0)
    n, p, classes = 6, 9, 5
    cls, dist = (torch.randn(n, classes, generator=g).bfloat16() for _ in range(2))
    t_logits = torch.randn(n, classes, generator=g).bfloat16()
    y = torch.randint(0, classes, (n,), generator=g)
    f_s = [torch.randn(n, p, 4, generator=g).bfloat16() for _ in range(8)]
    f_t = [torch.randn(n, p, 8, generator=g).bfloat16() for _ in range(8)]
    row = paper_mean_row()
    row.distillation.manifold = SimpleNamespace(**{**vars(row.distillation.manifold), "k": 20})

    def run(c, d, t):
        t_feats = dict(zip((0, 1, 2, 3, 20, 21, 22, 23), f_t))
        return objective(row, (c, d), y, t, {"manifold": f_s}, t_feats, torch.Generator().manual_seed(1))

    low = run(cls, dist, t_logits)
    high = run(cls.float(), dist.float(), t_logits.float())
    assert all(v.dtype == torch.float32 for v in low.values())
    for name in low:  # the same bf16 values, computed in float32 either way
        torch.testing.assert_close(low[name], high[name], rtol=0, atol=0)
    # and what the terms are: DeiT's hard distillation with label smoothing 0.1 on the class head
    ce = F.cross_entropy(cls.float(), y, label_smoothing=0.1)
    kd = F.cross_entropy(dist.float(), t_logits.float().argmax(1))
    torch.testing.assert_close(low["ce"], ce)
    torch.testing.assert_close(low["kd"], kd)
    manifold = low["mf_ci"] + low["mf_cp"] + low["mf_rs"]
    torch.testing.assert_close(low["loss"], 0.5 * ce + 0.5 * kd + manifold)
