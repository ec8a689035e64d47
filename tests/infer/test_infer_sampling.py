"""sample_next: greedy, top-k, nucleus and temperature sampling against known distributions."""
import math

import pytest
import torch

from dscoder.errors import UserError
from dscoder.infer.sampling import check_sampling, sample_next, top_p_mask

PROBS = [0.5, 0.3, 0.15, 0.05]


def _draw(n: int, **kw) -> torch.Tensor:
    """Frequencies of each id over n rows drawn from PROBS in one batched call."""
    logits = torch.tensor([math.log(p) for p in PROBS]).expand(n, -1)
    ids = sample_next(logits, generator=torch.Generator().manual_seed(0), **kw)
    return torch.bincount(ids, minlength=len(PROBS)).float() / n


def test_greedy_is_argmax_per_row():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 2.9, 0.0]])
    assert sample_next(logits).tolist() == [1, 0]
    assert sample_next(logits, temperature=1.0, top_k=1).tolist() == [1, 0]


def test_temperature_one_matches_the_distribution():
    freq = _draw(40000, temperature=1.0)
    assert torch.allclose(freq, torch.tensor(PROBS), atol=0.015)


def test_top_k_renormalises_over_the_k_best():
    freq = _draw(40000, temperature=1.0, top_k=2)
    assert freq[2:].sum() == 0
    assert abs(freq[0].item() - 0.5 / 0.8) < 0.015


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    freq = _draw(40000, temperature=1.0, top_p=0.7)  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: keep ids 0 and 1
    assert freq[2:].sum() == 0 and freq[1] > 0.3
    assert _draw(1000, temperature=1.0, top_p=1e-6).tolist() == [1.0, 0.0, 0.0, 0.0]
    mask = top_p_mask(torch.tensor([[0.5, 0.3, 0.15, 0.05]]), 0.5)
    assert mask.tolist() == [[False, True, True, True]]


def test_high_temperature_flattens():
    hot = _draw(40000, temperature=100.0)
    assert torch.allclose(hot, torch.full((4,), 0.25), atol=0.015)


def test_seeded_generator_reproduces_and_seeds_differ():
    logits = torch.randn(8, 50)
    a = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(1))
    b = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(1))
    c = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(2))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


@pytest.mark.parametrize("kw", [dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5),
                                dict(temperature=float("nan"))])
def test_bad_settings_are_user_errors(kw):
    args = dict(temperature=1.0, top_k=0, top_p=1.0) | kw
    with pytest.raises(UserError):
        check_sampling(**args)
