"""Next-token selection from logits: greedy, temperature, top-k and nucleus (top-p) sampling.

Pure functions over tensors, used by `infer.engine`. DeepSeek-Coder's own evaluations decode greedily
(DeepSeek-Coder's Evaluation/, V2 paper §4); the V2 agentic runs sample with temperature 0.5, top_p 0.95 (V2 paper §4).
A seeded `torch.Generator` makes sampling reproducible: same generator state, same logits -> same tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """Raise `UserError` for settings that cannot mean anything (negative temperature, top_p outside (0, 1])."""
    if not temperature >= 0.0:  # also catches NaN
        raise UserError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise UserError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise UserError(f"top_p must be in (0, 1] (1 = off), got {top_p}")


def top_p_mask(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """True where a token falls outside the nucleus. `sorted_probs` (B, K) is sorted descending.

    A token is kept while the mass of the tokens *before* it is below top_p, so the most likely token
    is always kept and the kept set is the smallest prefix whose mass reaches top_p."""
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # (B, K)
    outside = mass_before >= top_p
    outside[..., 0] = False     # cumsum rounding can leave a tiny "mass before" the first token: keep it anyway
    return outside


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature, shifted so the largest is 0 first: a tiny temperature gives -inf for the others
    (probability 0) instead of inf - inf = nan in the softmax. The softmax is unchanged by the shift; a temperature
    below float32's smallest normal number (it would round to 0) is raised to it."""
    x = logits.float()
    return (x - x.amax(dim=-1, keepdim=True)) / max(temperature, torch.finfo(torch.float32).tiny)


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row. logits (B, V) -> ids (B,) int64.

    temperature 0 (or top_k 1) is argmax and never builds a softmax over the vocabulary. Otherwise the
    logits are divided by temperature, cut to the top_k best (0 = all), cut to the nucleus of mass top_p
    (1 = all), and one token is drawn with `generator`."""
    if temperature == 0.0 or top_k == 1:
        return torch.argmax(logits, dim=-1)
    scaled = _scaled(logits, temperature)  # (B, V)
    k = scaled.shape[-1] if top_k <= 0 else min(top_k, scaled.shape[-1])
    if k < scaled.shape[-1]:
        values, index = torch.topk(scaled, k, dim=-1)  # (B, k), sorted descending
    elif top_p < 1.0:
        values, index = torch.sort(scaled, dim=-1, descending=True)  # (B, V)
    else:  # plain temperature sampling: no sort needed
        probs = torch.softmax(scaled, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    probs = torch.softmax(values, dim=-1)  # (B, k)
    if top_p < 1.0:
        probs = probs.masked_fill(top_p_mask(probs, top_p), 0.0)
    choice = torch.multinomial(probs, 1, generator=generator)  # (B, 1); multinomial renormalises
    return index.gather(-1, choice).squeeze(-1)


def next_token_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution `sample_next` draws from, over the whole vocabulary: logits (..., V) -> probs (..., V) fp32,
    zero outside the top-k / nucleus. Same cuts as `sample_next` (temperature > 0); speculative verification needs
    the probabilities themselves, not a draw."""
    scaled = _scaled(logits, temperature)  # (..., V)
    k = scaled.shape[-1] if top_k <= 0 else min(top_k, scaled.shape[-1])
    if k < scaled.shape[-1]:
        values, index = torch.topk(scaled, k, dim=-1)  # (..., k), sorted descending
    elif top_p < 1.0:
        values, index = torch.sort(scaled, dim=-1, descending=True)
    else:
        return torch.softmax(scaled, dim=-1)
    probs = torch.softmax(values, dim=-1)
    if top_p < 1.0:
        probs = probs.masked_fill(top_p_mask(probs, top_p), 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return torch.zeros_like(scaled).scatter_(-1, index, probs)


@dataclass(frozen=True)
class Sampler:
    """One run's sampling settings and its random generator (checked by `check_sampling`)."""
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """`sample_next` with these settings: logits (B, V) -> ids (B,)."""
        return sample_next(logits, self.temperature, self.top_k, self.top_p, self.generator)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """`next_token_probs` with these settings (not for greedy): (..., V) -> (..., V)."""
        return next_token_probs(logits, self.temperature, self.top_k, self.top_p)
