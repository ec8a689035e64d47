"""pass@k: the product-form estimator against brute force over all k-subsets, and its edge cases."""
import itertools
import math

import pytest

from dscoder.errors import UserError
from dscoder.eval.passk import pass_at_k, pass_at_k_one, reportable_ks


def brute_force(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) holding at least one correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k_one(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_matches_binomial_form_at_large_n():
    n, c, k = 200, 13, 10
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k_one(n, c, k) == pytest.approx(exact, rel=1e-12)
    assert pass_at_k_one(1000, 1, 1) == pytest.approx(0.001)


def test_mean_and_greedy():
    assert pass_at_k([1, 1, 1, 1], [1, 0, 1, 1], 1) == pytest.approx(0.75)  # greedy: fraction passed
    assert pass_at_k([4, 4], [2, 0], 2) == pytest.approx((1 - 1 / 6) / 2)
    assert reportable_ks([20, 10, 100]) == [1, 10]
    assert reportable_ks([1]) == [1]


@pytest.mark.parametrize("args", [(0, 0, 1), (3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4), (3.0, 1, 1)])
def test_bad_input_is_user_error(args):
    with pytest.raises(UserError):
        pass_at_k_one(*args)


def test_bad_lists():
    with pytest.raises(UserError):
        pass_at_k([1, 2], [1], 1)
    with pytest.raises(UserError):
        pass_at_k([], [], 1)
