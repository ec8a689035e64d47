"""Schedules (pure functions) and AdamW parameter groups."""
import math

import pytest
from torch import nn

from dscoder.errors import UserError
from dscoder.train.optim import build_optimizer, lr_at, param_groups


def test_step_schedule_three_stages():
    total, peak, warm = 1000, 1e-3, 100
    assert lr_at(0, total, peak, warm) == pytest.approx(peak / warm)
    assert lr_at(49, total, peak, warm) == pytest.approx(peak * 0.5)
    assert lr_at(99, total, peak, warm) == pytest.approx(peak)
    assert lr_at(100, total, peak, warm) == peak
    assert lr_at(799, total, peak, warm) == peak
    assert lr_at(800, total, peak, warm) == pytest.approx(peak * math.sqrt(0.1))   # x0.316 at 80%
    assert lr_at(899, total, peak, warm) == pytest.approx(peak * 0.31622776)
    assert lr_at(900, total, peak, warm) == pytest.approx(peak * 0.1)              # 10% of peak at the end
    assert lr_at(999, total, peak, warm) == pytest.approx(peak * 0.1)


def test_cosine_schedule_endpoints_and_midpoint():
    total, peak, warm = 102, 2.0, 1   # decay spans steps 1..101
    assert lr_at(0, total, peak, warm, "cosine") == pytest.approx(2.0)
    assert lr_at(1, total, peak, warm, "cosine") == pytest.approx(2.0)
    assert lr_at(51, total, peak, warm, "cosine") == pytest.approx(0.2 + 1.8 * 0.5)
    assert lr_at(101, total, peak, warm, "cosine", min_ratio=0.1) == pytest.approx(0.2)
    vals = [lr_at(s, total, peak, warm, "cosine") for s in range(1, total)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))                             # monotone decay


def test_schedule_rejects_bad_input():
    with pytest.raises(UserError):
        lr_at(0, 10, 1.0, 1, "linear")
    with pytest.raises(ValueError):
        lr_at(10, 10, 1.0, 1)


def test_weight_decay_only_on_matrices():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    decay, no_decay = param_groups(model)
    assert {p.ndim for p in decay["params"]} == {2} and len(decay["params"]) == 2
    assert {p.ndim for p in no_decay["params"]} == {1} and no_decay["weight_decay"] == 0.0
    opt = build_optimizer(model, lr=1e-3)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    assert opt.param_groups[0]["weight_decay"] == 0.1
    with pytest.raises(UserError):
        build_optimizer(model, lr=0.0)
