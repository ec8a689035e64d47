"""Fill-in-the-middle transforms (v1 paper §3.1.2): pure functions, deterministic for a seeded rng.

A document is cut at two uniform character-level points into prefix / middle / suffix and rearranged so the model
learns to write the middle after seeing both sides. DeepSeek-Coder applies this at the document level, before
packing, to 50% of documents, in PSM mode. Layouts (ids; each piece encoded separately, sentinels inserted as ids):

    PSM  [FIM_BEGIN] prefix [FIM_HOLE] suffix [FIM_END] middle [EOS]
    SPM  [FIM_BEGIN, FIM_HOLE] suffix [FIM_END] prefix middle [EOS]     (Bavarian et al. 2022, "SPM variant" §D)

The sentinels are added as ids, never by tokenizing their strings, so code that happens to contain the literal text
`<｜fim▁hole｜>` is encoded as ordinary text and cannot inject a sentinel (`encode` must add no special tokens and
must not map special-token strings to ids). Inference builds the same PSM head with `psm_prompt_ids`.

    rng = random.Random(0)
    body = document_ids(text, encode, special_ids(tok, require_fim=True), rng, fim_rate=0.5)   # no BOS
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

from ..errors import UserError
from .special import FIM_BEGIN, FIM_END, FIM_HOLE, SpecialIds

Encode = Callable[[str], Sequence[int]]


def fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    """Cut `text` at two uniform character positions (sorted; equal positions give an empty middle).

    Python strings index code points, so a multi-byte UTF-8 character (CJK, emoji) is never split; the three parts
    concatenate back to `text`. Exactly two rng draws per call, whatever the text, so streams stay reproducible."""
    n = len(text)
    a, b = sorted((rng.randint(0, n), rng.randint(0, n)))
    return text[:a], text[a:b], text[b:]


def _require_fim(ids: SpecialIds) -> tuple[int, int, int]:
    if not ids.has_fim:
        raise UserError("FIM needs a tokenizer with <｜fim▁begin｜>, <｜fim▁hole｜> and <｜fim▁end｜>; "
                        "use a tokenizer from `dscoder tokenizer train` or set the FIM rate to 0")
    return ids.fim_begin, ids.fim_hole, ids.fim_end  # type: ignore[return-value]


def fim_token_ids(prefix: str, middle: str, suffix: str, encode: Encode, ids: SpecialIds,
                  mode: str = "psm") -> list[int]:
    """The FIM training sequence (no BOS) in `mode` "psm" or "spm"; see the module docstring for the layouts."""
    begin, hole, end = _require_fim(ids)
    if mode == "psm":
        return [*psm_prompt_ids(prefix, suffix, encode, ids), *encode(middle), ids.eos]
    pre, mid, suf = list(encode(prefix)), list(encode(middle)), list(encode(suffix))
    if mode == "spm":
        return [begin, hole, *suf, end, *pre, *mid, ids.eos]
    raise UserError(f"FIM mode must be 'psm' or 'spm', got {mode!r}")


def document_ids(text: str, encode: Encode, ids: SpecialIds, rng: random.Random,
                 fim_rate: float = 0.5, spm_rate: float = 0.0) -> list[int]:
    """One document's body ids WITHOUT BOS (packing adds it): `encode(text) + [EOS]`, or with probability
    `fim_rate` its FIM form (SPM with probability `spm_rate` among those, PSM otherwise), which also ends in EOS.

    An empty document gives `[EOS]` and is never FIM'd (there is nothing to fill)."""
    if not 0.0 <= fim_rate <= 1.0 or not 0.0 <= spm_rate <= 1.0:
        raise UserError(f"FIM rates must be in [0, 1], got fim_rate={fim_rate}, spm_rate={spm_rate}")
    # draw the decision first and always, so the rng stream does not depend on the text
    do_fim = rng.random() < fim_rate
    if not do_fim or not text:
        return [*encode(text), ids.eos]
    mode = "spm" if rng.random() < spm_rate else "psm"
    prefix, middle, suffix = fim_split(text, rng)
    return fim_token_ids(prefix, middle, suffix, encode, ids, mode)


def psm_prompt_ids(prefix: str, suffix: str, encode: Encode, ids: SpecialIds) -> list[int]:
    """The PSM prompt the model completes with the middle, then EOS: `[FIM_BEGIN] prefix [FIM_HOLE] suffix
    [FIM_END]` (no BOS; sentinels as ids). The head of a PSM training sequence, and the inference prompt."""
    begin, hole, end = _require_fim(ids)
    return [begin, *encode(prefix), hole, *encode(suffix), end]


def psm_prompt(prefix: str, suffix: str) -> str:
    """The PSM prompt as text, for servers that take text (DeepSeek-Coder README §4.2; the server's tokenizer maps
    the sentinel strings to their ids). Local inference builds ids with `psm_prompt_ids` instead."""
    return f"{FIM_BEGIN}{prefix}{FIM_HOLE}{suffix}{FIM_END}"
