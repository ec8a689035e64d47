"""Exact speculative decoding with prompt-lookup (n-gram) drafts: several tokens per forward pass when the
output re-types text it has already seen (an edited file, a renamed variable, repeated boilerplate).

Draft (prompt lookup decoding, A. Saxena 2023, github.com/apoorvumang/prompt-lookup-decoding; the same idea as
transformers' `prompt_lookup_num_tokens`): the last n tokens (n = 3, then 2) are looked up among all the tokens
before them, prompt and generated text alike; the tokens that followed their most recent earlier occurrence are
the draft. The lookup is a dict per n, updated as tokens arrive, so drafting costs no model call.

A match whose continuation runs up to the newest token (the output repeats a pattern of period p, e.g. a loop of
`0`s or of `, 1`) has fewer than k known tokens after it; the draft continues the pattern, d_i = d_{i-p}, so a
repetition drafts at full length instead of p tokens at a time.

A wrong draft is not free on a CPU: verifying 1 + k tokens costs more than one step (measured, int8, 169M model,
1 thread: 1.4x for k = 1, 2x for k = 4, 2.6x for k = 8; fp32, the 5M `make demo` model: 1.1x for k = 1, 1.7x
for k = 8, 2.2x for k = 16). So single-token matches (mostly a space or a bracket) do not draft, and each row's
draft length adapts (`next_draft_length`): it starts at half of `draft_tokens`, doubles after a fully accepted
draft (up to `draft_tokens`), and after a rejection with a tokens accepted falls to at most 2a + 1 (and at least
one below what it was). transformers' assisted generation grows by 2 and shrinks by 1; doubling reaches a long
copy's full length in a few passes, and cutting to what was accepted stops paying for long drafts where the
output has left the copied text (the demo model, 1 thread, CPU time, best / median of 7 against +2 / -1 with
a cap of 8: edit prompt +6% / +9% tokens/s, code prompt +12% / +11%).

Verify: one forward pass over [last token, d_1 .. d_k] gives the target distributions p_1 .. p_{k+1}.
* Greedy: keep d_i while it equals argmax p_i; the first mismatch emits the argmax instead. The emitted tokens
  are the ones plain greedy decoding picks, up to floating point: the verification pass multiplies 1 + k rows
  at once, and a kernel may round them differently from a single row, so an exact or near-exact tie between the
  two best logits can break the other way. torch's int8 kernel (a bf16 model's int8 layers) makes this likelier,
  as it returns bf16 logits: on a random 169M model (near-uniform logits) it parted at tokens 101 and 10 of two
  128-token runs, each time where the two best logits were at most one bf16 step (1/64) apart. fp32, and
  dscoder's own int8 kernel (fp32 activations and outputs), never parted.
* Sampling: speculative sampling (Leviathan et al. 2023, arXiv 2211.17192, Algorithm 1; Chen et al. 2023,
  arXiv 2302.01318). The draft is deterministic, q = one-hot(d_i), so "accept with probability
  min(1, p(x)/q(x))" is "accept d_i with probability p_i(d_i)", and the residual norm(max(0, p - q)) is p_i with
  d_i removed, renormalised. After k acceptances one more token is drawn from p_{k+1}. Every emitted token then
  has exactly the distribution plain sampling gives it (p is the temperature / top-k / top-p distribution of
  `sampling.next_token_probs`); the random draws differ, so a seeded run gives other (equally likely) tokens.

Batches: each row verifies its own draft (drafts are right-padded to one length), then every row keeps the
fewest tokens any unfinished row got, m >= 1, and the cache is rewound to that many new slots. Dropping a row's
later tokens is exact: whether a token is emitted depends only on the tokens before it (with a deterministic
draft, "d_1..d_j accepted" is "the emitted tokens equal d_1..d_j"), so cutting at m is a stopping rule, and the
dropped tokens are decided afresh next step. A batch thus advances at its slowest row's pace.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from ..errors import UserError
from .sampling import Sampler

if TYPE_CHECKING:
    from .engine import Run

SPECULATE = ("none", "ngram")   # the methods `Engine(speculate=...)` and `--speculate` accept
DRAFT_TOKENS = 16               # longest draft a row may grow to (see the module docstring); 1 + 16 rows stay
                                # within the int8 kernel's KERNEL_MAX_ROWS (models/quant.py)
MAX_NGRAM = 3                   # longest suffix looked up, as in the prompt-lookup reference implementation
MIN_NGRAM = 2                   # shortest (see the module docstring)


def check_speculate(method: str | None) -> str | None:
    """None for no speculation ("none" or None), "ngram"; anything else is a UserError."""
    if method is None or method == "none":
        return None
    if method not in SPECULATE:
        raise UserError(f"unknown speculation method {method!r}; use one of: {', '.join(SPECULATE)}")
    return method


class NgramDrafter:
    """Prompt-lookup drafts for one sequence. `index[n]` maps each n-gram to the position right after its most
    recent occurrence whose next token is known (so the current suffix never matches itself)."""

    def __init__(self, tokens: Sequence[int], max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.seq: list[int] = []
        self.index: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_ngram + 1)]
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.seq.append(int(t))
            j = len(self.seq) - 1                     # the new token follows the n-grams that end at j - 1
            for n in range(1, min(self.max_ngram, j) + 1):
                self.index[n][tuple(self.seq[j - n:j])] = j

    def draft(self, k: int) -> list[int]:
        """Up to k tokens that followed the longest matching suffix (empty when nothing matches or k < 1)."""
        if k < 1:
            return []
        seq = self.seq
        for n in range(min(self.max_ngram, len(seq)), self.min_ngram - 1, -1):
            at = self.index[n].get(tuple(seq[-n:]))
            if at is not None:
                out = seq[at:at + k]
                # a match that ends near the newest token (a repeating pattern, period p = len - at) runs into the
                # future: continue it with the draft itself, out[i] = out[i - p], as the repetition would
                p = len(seq) - at
                while len(out) < k:
                    out.append(out[len(out) - p])
                return out
        return []


def accept_greedy(argmax: Sequence[int], draft: Sequence[int]) -> list[int]:
    """Emitted tokens for one row: the target's argmax at each position up to and including the first position
    where it differs from the draft. argmax: len(draft) + 1 ids."""
    a = 0
    while a < len(draft) and argmax[a] == draft[a]:
        a += 1
    return list(argmax[:a + 1])


def accept_sampled(probs: torch.Tensor, draft: Sequence[int], generator: torch.Generator | None) -> list[int]:
    """Speculative sampling for one row with a deterministic draft. probs: (len(draft) + 1, V) target
    distributions after the last token and after each draft token."""
    out: list[int] = []
    for i, d in enumerate(draft):
        p = probs[i]
        if float(torch.rand((), generator=generator, device=p.device)) < float(p[d]):
            out.append(int(d))
            continue
        residual = p.clone()
        residual[d] = 0.0                           # max(0, p - one_hot(d)); multinomial renormalises
        out.append(int(torch.multinomial(residual, 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(probs[len(draft)], 1, generator=generator)))
    return out


def verify(sampler: Sampler, logits: torch.Tensor, drafts: list[list[int]]) -> list[list[int]]:
    """Each row's emitted tokens (1 to len(draft) + 1) from the verification logits (B, K+1, V)."""
    if sampler.greedy:
        rows = logits.argmax(dim=-1).tolist()                                   # (B, K+1)
        return [accept_greedy(r[:len(d) + 1], d) for r, d in zip(rows, drafts)]
    probs = sampler.probs(logits)                                               # (B, K+1, V)
    return [accept_sampled(probs[b, :len(d) + 1], d, sampler.generator) for b, d in enumerate(drafts)]


def next_draft_length(k: int, drafted: int, accepted: int, cap: int) -> int:
    """A row's next draft length after `accepted` of its `drafted` tokens were kept (k: the length it asked for;
    a draft can be shorter than k near the end of the run); unchanged when it had no draft."""
    if not drafted:
        return k
    if accepted == drafted:
        return min(2 * k, cap)
    return max(min(k - 1, 2 * accepted + 1), 1)


def decode(run: "Run", logits: torch.Tensor, prompts: list[list[int]], max_new_tokens: int, sampler: Sampler,
           active: list[bool], draft_tokens: int = DRAFT_TOKENS) -> Iterator[list[list[int]]]:
    """The speculative decode loop after the prefill (`logits` (B, V) for each row's next token). Yields each
    step's new tokens per row, the same count for every row; stops after max_new_tokens or once no row is active
    (the caller clears `active[b]`)."""
    first = sampler.pick(logits).tolist()
    yield [[t] for t in first]
    drafters = [NgramDrafter([*p, t]) for p, t in zip(prompts, first)]
    last, produced, ks = first, 1, [max(draft_tokens // 2, 1)] * len(prompts)
    while produced < max_new_tokens and any(active):
        # a step emits at most k + 1 tokens: the cap keeps the run inside max_new_tokens and the cache it sized
        room = max_new_tokens - produced - 1
        drafts = [d.draft(min(k, room)) if on else [] for d, k, on in zip(drafters, ks, active)]
        width = max(map(len, drafts))
        x = torch.tensor([[t, *d] + [0] * (width - len(d)) for t, d in zip(last, drafts)],
                         dtype=torch.long, device=logits.device)                # (B, 1 + width)
        new = verify(sampler, run.forward(x), drafts)
        ks = [next_draft_length(k, len(d), len(n) - 1, draft_tokens) for k, d, n in zip(ks, drafts, new)]
        m = min(len(n) for n, on in zip(new, active) if on)
        run.keep(m)                                  # slots of the last token and the m - 1 kept draft tokens
        new = [n[:m] if len(n) >= m else n + [0] * (m - len(n)) for n in new]   # finished rows: filler
        for d, n in zip(drafters, new):
            d.extend(n)
        last = [n[-1] for n in new]
        produced += m
        yield new
