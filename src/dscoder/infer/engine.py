"""Batched autoregressive generation over a KV cache: token ids in, token ids out.

The inference side of both papers' evaluation and serving (v1 §4, DeepSeek-Coder's README; V2 §4):
prompts of different lengths are left-padded into one batch, run through ONE prefill forward that fills
the model's preallocated cache, then decoded one token per step. Text, chat templates and FIM formatting
live one layer up (`infer.text`); this module never sees a string except through the optional `decode`
callback used to spot stop strings.

Run it:
    engine = Engine(dscoder.load_model("ckpt"))
    out = engine.generate([[32013, 1, 2], [32013, 5]], max_new_tokens=64, stop_ids=[32014])
    out[0].tokens, out[0].finish_reason                      # new ids, "stop" | "length"
    Engine(model, speculate="ngram")                         # prompt-lookup drafts, same output (infer/speculative)

Works with any model that follows the shared interface (`forward(input_ids, positions=, cache=, attn_mask=,
logits_to_keep=)` and `make_cache(batch, max_len)`, whose cache moves its own cursor): the v1 Llama
`Transformer` and the V2 MLA+MoE model alike.

A prompt that does not fit raises `ContextOverflow` (a `UserError`) naming both counts; a caller whose options
have other names rewords its advice with `ContextOverflow.advice(...)`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Generator, Iterator, Sequence

import torch

from ..errors import UserError
from .sampling import Sampler, check_sampling
from .speculative import DRAFT_TOKENS, check_speculate
from .speculative import decode as speculative_decode

Decode = Callable[[list[int]], str]


class ContextOverflow(UserError):
    """A prompt plus max_new_tokens does not fit in the context. The message names both counts and the ways out;
    `advice(truncate=..., max_new_tokens=...)` gives the same message with a caller's own option names."""

    def __init__(self, index: int, prompt_tokens: int, max_new_tokens: int, context: int):
        self.index, self.prompt_tokens, self.max_new_tokens, self.context = index, prompt_tokens, max_new_tokens, \
            context
        super().__init__(self.advice())

    def advice(self, truncate: str = "truncate='left'", max_new_tokens: str = "max_new_tokens") -> str:
        n, m = self.prompt_tokens, self.max_new_tokens
        return (f"prompt {self.index} has {n} tokens; with {max_new_tokens} {m} that is {n + m} > the model's "
                f"context of {self.context} tokens (shorten it, lower {max_new_tokens}, or pass {truncate} "
                f"to keep its last {self.context - m} tokens)")


@dataclass
class GenOutput:
    """One prompt's result. `tokens` excludes the stop id and every token that overlaps a stop string."""
    tokens: list[int]
    finish_reason: str          # "stop" (a stop id or string was produced) | "length" (max_new_tokens reached)
    prompt_tokens: int          # after any left truncation
    text: str | None = None     # decode(all new tokens) cut just before the stop string; None without `decode`


class StopStrings:
    """Incremental stop-string check for one row: decode only the last few tokens each step, never the whole text.

    Every byte-level BPE token decodes to at least one byte, so a stop string of n bytes that ends in the
    newest token starts within its last n tokens; 3 more cover a UTF-8 character cut at the window's start."""

    def __init__(self, stops: Sequence[str], decode: Decode):
        self.stops = [s for s in stops if s]
        if not self.stops:
            raise UserError("stop strings must be non-empty")
        self.decode = decode
        self.max_bytes = max(len(s.encode("utf-8")) for s in self.stops)
        self.window = self.max_bytes + 3

    def hit(self, tokens: list[int]) -> bool:
        tail = self.decode(tokens[-self.window:])
        return any(s in tail for s in self.stops)

    def cut(self, tokens: list[int]) -> tuple[list[int], str]:
        """(tokens before the first stop string, text before it); one full decode plus a few near the end."""
        full = self.decode(tokens)
        found = [i for i in (full.find(s) for s in self.stops) if i >= 0]
        if not found:
            return tokens, full
        text = full[:min(found)]
        k = len(tokens)
        while k > 0 and not text.startswith(self.decode(tokens[:k])):
            k -= 1
        return tokens[:k], text


class Run:
    """One generation's forward passes over the cache: the left-padded prompts' slot mask and each row's RoPE
    position. Without padding, slot index == position and every slot is valid, so neither is passed and the model
    takes its default path (is_causal prefill, no mask or position gather per decode step)."""

    def __init__(self, model: torch.nn.Module, cache, prompts: list[list[int]], max_new_tokens: int,
                 device: torch.device):
        B, P = len(prompts), max(map(len, prompts))
        self.model, self.cache = model, cache
        self.ids = torch.zeros(B, P, dtype=torch.long)
        pos = torch.zeros(B, P, dtype=torch.long)
        # one mask for the whole run: padding slots False, everything from a row's first token on True;
        # causality by slot index is the model's job, so a step passes the first (slots used + new) columns
        self.mask = torch.zeros(B, P + max_new_tokens, dtype=torch.bool)
        for b, p in enumerate(prompts):
            pad = P - len(p)
            self.ids[b, pad:] = torch.tensor(p)
            pos[b, pad:] = torch.arange(len(p))
            self.mask[b, pad:] = True
        self.ids, self.pos, self.mask = self.ids.to(device), pos.to(device), self.mask.to(device)
        self.padded = any(len(p) != P for p in prompts)
        self.next_pos = self.pos[:, -1:] + 1  # (B, 1) each row's next RoPE position

    def prefill(self) -> torch.Tensor:
        """Fill the cache with the prompts; logits (B, V) for each row's next token."""
        P = self.ids.shape[1]
        return self.model(self.ids, positions=self.pos if self.padded else None, cache=self.cache,
                          attn_mask=self.mask[:, :P] if self.padded else None, logits_to_keep=1)[:, -1]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed `tokens` (B, T) after the cached slots; logits (B, T, V). Call `keep` before the next forward."""
        T, n = tokens.shape[1], self.cache.length + tokens.shape[1]
        self._fed = T
        positions = self.next_pos + torch.arange(T, device=tokens.device) if self.padded else None
        return self.model(tokens, positions=positions, cache=self.cache,
                          attn_mask=self.mask[:, :n] if self.padded else None)

    def keep(self, m: int) -> None:
        """Keep the first `m` of the tokens just fed (their cache slots); the rest are rolled back."""
        self.cache.rewind(self.cache.length - self._fed + m)
        self.next_pos += m


class Engine:
    """Owns a model and its KV cache. `max_len` caps the context below the model's max_position_embeddings.

    `speculate="ngram"` decodes with prompt-lookup drafts verified in one forward pass (`infer.speculative`):
    greedy output is token for token that of plain greedy decoding, sampled output has the same distribution.
    `draft_tokens` caps a draft's length."""

    def __init__(self, model: torch.nn.Module, max_len: int | None = None, speculate: str | None = None,
                 draft_tokens: int = DRAFT_TOKENS):
        self.model = model.eval()
        self.speculate = check_speculate(speculate)
        if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or draft_tokens < 1:
            raise UserError(f"draft_tokens must be an integer >= 1, got {draft_tokens!r}")
        self.draft_tokens = draft_tokens
        limit = int(model.config.max_position_embeddings)
        self.max_len = min(limit, int(max_len)) if max_len else limit
        self.vocab_size = int(model.config.vocab_size)
        self._cache = None          # kept between calls: reallocating 2 x layers x (B, S, H, D) each call is waste
        self._cache_key: tuple[int, int] | None = None
        self._cache_lock = threading.Lock()  # held while a run uses the kept cache; a concurrent run gets its own

    def use_gemv_layout(self) -> "Engine":
        """Store every Linear weight column-major (same values, same shape) so that batch-1 decode on CPU
        runs MKL's no-transpose GEMV, which streams memory faster than the row-dot-product form (about +10%
        tokens/s on AMD EPYC, see benchmarks/bench_roofline.py). Opt-in: it changes the model's parameter
        storage in place, and code that needs contiguous weights (safetensors, `.view`) must call
        `.contiguous()` -- `models.hf.save_pretrained` does. For v1 models: V2's absorbed-MLA decode reshapes
        kv_b_proj's weight per head, which would copy a column-major weight at every step."""
        with torch.no_grad():
            for mod in self.model.modules():
                if isinstance(mod, torch.nn.Linear) and mod.weight.is_contiguous():
                    mod.weight.data = mod.weight.data.t().contiguous().t()  # (N, K) with strides (1, N)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- input checks -------------------------------------------------------------------------------
    def prepare(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                truncate: str | None = None) -> list[list[int]]:
        """Validate prompts and fit them in the context: error, or with truncate="left" keep the last tokens."""
        if truncate not in (None, "left"):
            raise UserError(f"truncate must be None or 'left', got {truncate!r}")
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompts:
            raise UserError("no prompts given")
        room = self.max_len - max_new_tokens
        if room < 1:
            raise UserError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
                            f"context of {self.max_len} tokens")
        out = []
        for i, p in enumerate(prompts):
            p = [int(t) for t in p]
            if not p:
                raise UserError(f"prompt {i} is empty: give at least one token (e.g. BOS)")
            bad = [t for t in p if not 0 <= t < self.vocab_size]
            if bad:
                raise UserError(f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {self.vocab_size})")
            if len(p) > room:
                if truncate != "left":
                    raise ContextOverflow(i, len(p), max_new_tokens, self.max_len)
                p = p[-room:]
            out.append(p)
        return out

    # --- the cache ------------------------------------------------------------------------------------
    def _take_cache(self, batch: int, length: int):
        if not self._cache_lock.acquire(blocking=False):  # an unfinished stream or another thread has it
            return self.model.make_cache(batch, length, device=self.device)
        try:
            key = self._cache_key
            if self._cache is None or key[0] != batch or key[1] < length:
                self._cache = None  # free the old one before allocating
                self._cache = self.model.make_cache(batch, length, device=self.device)
                self._cache_key = (batch, length)
            self._cache.reset()
            return self._cache
        except BaseException:  # e.g. out of memory: leave the engine usable
            self._cache_lock.release()
            raise

    def _give_cache(self, cache) -> None:
        if cache is self._cache:
            self._cache_lock.release()

    # --- the decode loop ------------------------------------------------------------------------------
    def _steps(self, prompts: list[list[int]], max_new_tokens: int, sampler: Sampler,
               active: list[bool]) -> Iterator[list[list[int]]]:
        """Yield each step's new tokens per row (one each, or with speculation the same number >= 1 for every
        row). The caller clears `active[b]` to finish a row; finished rows stay in the batch (their tokens are
        ignored) and the loop ends once no row is active."""
        B, P = len(prompts), max(map(len, prompts))
        cache = self._take_cache(B, P + max_new_tokens)
        try:
            run = Run(self.model, cache, prompts, max_new_tokens, self.device)
            logits = run.prefill()  # (B, V)
            if self.speculate == "ngram":
                yield from speculative_decode(run, logits, prompts, max_new_tokens, sampler, active,
                                              self.draft_tokens)
                return
            for step in range(max_new_tokens):
                tok = sampler.pick(logits)  # (B,)
                yield [[t] for t in tok.tolist()]
                if step == max_new_tokens - 1 or not any(active):
                    return
                logits = run.forward(tok.view(B, 1))[:, -1]
                run.keep(1)
        finally:
            self._give_cache(cache)

    def _picker(self, temperature: float, top_k: int, top_p: float, seed: int | None) -> Sampler:
        check_sampling(temperature, top_k, top_p)
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(seed))
        return Sampler(temperature, top_k, top_p, gen)

    @staticmethod
    def _stops(stop_strings: Sequence[str], decode: Decode | None) -> StopStrings | None:
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        if not stop_strings:
            return None
        if decode is None:
            raise UserError("stop_strings need a `decode` function (token ids -> text)")
        return StopStrings(stop_strings, decode)

    @staticmethod
    def _finish(tokens: list[int], reason: str, n_prompt: int, stops: StopStrings | None,
                decode: Decode | None) -> GenOutput:
        text = None
        if stops is not None and reason == "stop":
            tokens, text = stops.cut(tokens)
        elif decode is not None:
            text = decode(tokens)
        return GenOutput(tokens=tokens, finish_reason=reason, prompt_tokens=n_prompt, text=text)

    # --- public API ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, stop_ids: Sequence[int] = (), stop_strings: Sequence[str] = (),
                 decode: Decode | None = None, seed: int | None = None,
                 truncate: str | None = None) -> list[GenOutput]:
        """Generate for a batch of prompts (lists of ids). temperature 0 = greedy; `seed` makes sampling
        reproducible; a row stops at any of `stop_ids` or, given `decode`, any of `stop_strings`."""
        pick = self._picker(temperature, top_k, top_p, seed)
        stops = self._stops(stop_strings, decode)
        prompts = self.prepare(prompts, max_new_tokens, truncate)
        stop_set = frozenset(int(t) for t in stop_ids)
        B = len(prompts)
        out: list[list[int]] = [[] for _ in range(B)]
        reason, active = ["length"] * B, [True] * B
        for step in self._steps(prompts, max_new_tokens, pick, active):
            for b, toks in enumerate(step):
                for t in toks:
                    if not active[b]:
                        break
                    if t in stop_set:
                        active[b], reason[b] = False, "stop"
                        break
                    out[b].append(t)
                    if stops is not None and stops.hit(out[b]):
                        active[b], reason[b] = False, "stop"
        return [self._finish(out[b], reason[b], len(prompts[b]), stops, decode) for b in range(B)]

    def generate_stream(self, prompt: Sequence[int], max_new_tokens: int = 128, temperature: float = 0.0,
                        top_k: int = 0, top_p: float = 1.0, stop_ids: Sequence[int] = (),
                        stop_strings: Sequence[str] = (), decode: Decode | None = None, seed: int | None = None,
                        truncate: str | None = None) -> Generator[int, None, GenOutput]:
        """Yield one prompt's new token ids as they are decided; the generator's return value is the GenOutput.

        Bad input raises `UserError` here, before the generator is returned (a server can answer 400 before
        it starts streaming). With stop strings, a token is held back until it can no longer be part of one
        (at most as many tokens as the longest stop string has bytes), so nothing after the cut is yielded."""
        pick = self._picker(temperature, top_k, top_p, seed)
        stops = self._stops(stop_strings, decode)
        [prompt] = self.prepare([prompt], max_new_tokens, truncate)
        return self._stream(prompt, max_new_tokens, pick, frozenset(int(t) for t in stop_ids), stops, decode)

    @torch.inference_mode()
    def _stream(self, prompt: list[int], max_new_tokens: int, pick, stop_set: frozenset[int],
                stops: StopStrings | None, decode: Decode | None) -> Generator[int, None, GenOutput]:
        hold = stops.max_bytes if stops is not None else 0
        out: list[int] = []
        reason, active, sent = "length", [True], 0
        steps = self._steps([prompt], max_new_tokens, pick, active)
        try:
            for (toks,) in steps:
                for t in toks:
                    if t in stop_set:
                        reason = "stop"
                        break
                    out.append(t)
                    if stops is not None and stops.hit(out):
                        reason = "stop"
                        break
                    while len(out) - sent > hold:
                        yield out[sent]
                        sent += 1
                if reason == "stop":
                    break
        finally:
            steps.close()  # hands the cache back even when the consumer stops early
        final = self._finish(out, reason, len(prompt), stops, decode)
        for t in final.tokens[sent:]:
            yield t
        return final
