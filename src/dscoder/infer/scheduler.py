"""Continuous batching over one model: many requests share each decode step; token ids in, token ids out.

One thread owns the model. Requests wait in a bounded queue; at every step the scheduler admits what fits, runs
one prefill forward for the requests being admitted and ONE decode forward for every running sequence, and retires
the sequences that stopped, ran out of tokens or time, or whose client went away (checked before every step, so a
cancelled request costs at most one more step). This is the scheduling idea of Orca (Yu et al., OSDI 2022,
"iteration-level scheduling") over this package's preallocated caches.

Prefill. Waiting requests are prefilled together, several prompts in one forward (left-padded so that every prompt
ends at the same slot, with each row's RoPE positions and key mask, the padded-batch path `Engine.generate` uses),
up to `prefill_tokens` tokens (rows x padded length) per forward (by default on a CPU, several prompts only up to
`GROUP_TOKENS`: see there). A longer prompt is prefilled in chunks of at most
that many tokens, one chunk per decode step, so the running sequences keep producing tokens while it is read (the
chunked prefill of Sarathi-Serve, Agrawal et al., OSDI 2024).

Prefix reuse. The cache slots of finished requests (prompt and generated tokens) are kept, up to
`prompt_cache_tokens` tokens, most recently used first. A new prompt copies in the keys/values of the longest
common token prefix it shares with one of them and prefills only the rest: an editor resends nearly the same
prompt on every keystroke (llama.cpp's `cache_prompt`, vLLM's automatic prefix caching). Keys are stored with RoPE
already applied at their positions from the sequence start, which a prefix keeps.

The batch cache is the model's own (`make_cache(max_batch, max_len)`: v1's K/V or V2's latent cache) with one
shared cursor L. Row r holds its sequence in slots [start_r, L): a prompt of P tokens is copied in ending at L, so
every row writes its next token at slot L, and each row's RoPE position and key mask (slots before start_r hidden)
are passed to the forward. Running rows are kept packed in rows 0..n-1, so a step computes n rows, not max_batch.
When new rows do not fit before max_len, every row is moved left by the oldest row's start (compaction); a request
that still does not fit waits for rows to finish.

    sched = Scheduler(Engine(model), max_batch=8, max_queue=64).start()
    job = Job(prompt_ids, Params(max_tokens=64, stop_ids=frozenset({eos})), emit=events.put)
    sched.submit(job)            # events: Tokens(index, ids, logprobs) ... Finished(index, output, logprobs)
    job.cancel()                 # the client went away: its rows are freed before the next step
    sched.shutdown()             # finishes what was admitted and queued, then the thread exits

Greedy output does not depend on the company a request keeps, nor on reused prefixes: its tokens equal
`Engine.generate`'s alone (up to floating-point ties between the two best logits).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from ..errors import UserError
from .engine import Decode, Engine, GenOutput, StopStrings
from .sampling import Sampler, check_sampling

SEED_MOD = 2**64        # torch.Generator.manual_seed takes 0 ... 2**64-1; choice i of n draws with seed + i
# rows x padded length of one prefill forward by default (a longer prompt is read in chunks). On a CPU a forward
# is compute-bound from a few hundred tokens on, and prompts of different lengths read together need a key mask,
# which takes SDPA off its causal kernel: tiny preset, 1 thread, prompts a few tokens apart, B rows together vs one
# forward each: 16 tokens x 4 rows 4.6 vs 8.9 ms, 128 x 4 26.5 vs 28.9 ms, 256 x 2 27.2 vs 27.7 ms, 512 x 2 70.6
# vs 66.8 ms, 512 x 4 150 vs 126 ms, 512 x 8 346-374 vs 266-284 ms. So by default a CPU reads several prompts in
# one forward only up to GROUP_TOKENS (rows x padded length), a longer one alone; on an accelerator (not measured
# here) a forward of many rows costs little more than one of a few.
PREFILL_TOKENS = {"cpu": 1024, "other": 8192}
GROUP_TOKENS = {"cpu": 512, "other": 8192}
MIN_REUSE = 16          # a shared prefix shorter than this is prefilled again (not worth a copy)
PROMPT_CACHE_CONTEXTS = 2   # kept prefixes by default: twice the context in tokens


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller should retry after `retry_after` seconds."""

    def __init__(self, depth: int, retry_after: int = 1):
        super().__init__(f"the server is busy: {depth} requests are already waiting; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Params:
    """How to decode one request. `logprobs` k >= 0 also reports each new token's log-probability and the top k
    alternatives (of the model's distribution, before temperature); None reports nothing. `cache_prompt` False
    prefills the whole prompt even when a kept prefix matches it."""
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    logprobs: int | None = None
    timeout: float | None = None          # seconds from submission; then the request ends as if at max_tokens
    cache_prompt: bool = True


@dataclass
class Tokens:
    """New token ids of choice `index` that can no longer be cut by a stop string (streaming)."""
    index: int
    ids: list[int]
    logprobs: list[dict] | None = None    # per id: {"logprob": float, "top": [(id, logprob), ...]}


@dataclass
class Finished:
    """Choice `index` is done; `output.tokens`/`output.text` are final (stop strings cut)."""
    index: int
    output: GenOutput
    logprobs: list[dict] | None = None


@dataclass
class Failed:
    """The request could not run (an internal error); every choice of it is over."""
    message: str


Event = Tokens | Finished | Failed


@dataclass(eq=False)
class Job:
    """One request: a prompt and `n` independent choices decoded from it. `emit` is called from the scheduler
    thread with each event; it must not block (hand the event to another thread or event loop). `flush`, if given,
    is called after every scheduler step (once for all the jobs that share it), so an owner can hand over the
    events of a step together. `cached_tokens` is set at prefill: how many prompt tokens came from a kept prefix."""
    prompt: list[int]
    params: Params
    emit: Callable[[Event], Any]
    n: int = 1
    decode: Decode | None = None
    flush: Callable[[], Any] | None = None
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    cached_tokens: int = 0

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def deadline(self) -> float:
        return self.submitted + self.params.timeout if self.params.timeout else math.inf


class _Seq:
    """One running choice: its row, its tokens so far, what it feeds next."""

    def __init__(self, job: Job, index: int, start: int, sampler: Sampler, stops: StopStrings | None):
        self.job, self.index, self.start, self.sampler, self.stops = job, index, start, sampler, stops
        self.out: list[int] = []
        self.lps: list[dict] | None = [] if job.params.logprobs is not None else None
        self.sent = 0                       # tokens already emitted
        self.next_token = -1                # sampled, not yet fed (at slot L, RoPE position L - start)
        self.reason: str | None = None

    @property
    def hold(self) -> int:
        return self.stops.max_bytes if self.stops is not None else 0


def _tell(job: Job, event: Event) -> None:
    """Hand `event` to the job's owner; an owner that cannot take it any more (its event loop closed) has gone:
    the job is cancelled, and the scheduler carries on."""
    try:
        job.emit(event)
    except Exception:  # noqa: BLE001 -- the owner's failure must not stop the thread that serves everyone
        job.cancel()


def _cache_fields(cache) -> tuple[str, str]:
    """The cache's per-slot tensors. Both keep layers at dim 0, the batch at dim 1 and slots at dim -2."""
    if hasattr(cache, "c_kv"):          # models.deepseek_v2.LatentCache: (layers, B, S, d)
        return "c_kv", "k_pe"
    return "k", "v"                     # models.llama.KVCache: (layers, B, H, S, D)


def _slots(cache, name: str, row: int, start: int, n: int) -> torch.Tensor:
    """Slots [start, start+n) of one row of a cache field: a view (layers, [H,] n, d)."""
    return getattr(cache, name)[:, row].narrow(-2, start, n)


def _sample(seqs: list[_Seq], logits: torch.Tensor) -> list[int]:
    """One token per row of logits (n, V): greedy rows in one argmax, sampled rows each with their own generator."""
    out = torch.argmax(logits, dim=-1).tolist()
    for i, s in enumerate(seqs):
        if not s.sampler.greedy:
            out[i] = int(s.sampler.pick(logits[i:i + 1])[0])
    return out


def _logprob_entries(logits: torch.Tensor, picked: list[int], ks: list[int | None]) -> list[dict | None]:
    """Per row: the picked token's log-probability and the top k (token, logprob) pairs; None where k is None."""
    if all(k is None for k in ks):
        return [None] * len(ks)
    lp = torch.log_softmax(logits.float(), dim=-1)  # (n, V)
    top_k = max(k or 0 for k in ks)
    top = torch.topk(lp, top_k, dim=-1) if top_k else None
    out: list[dict | None] = []
    for i, k in enumerate(ks):
        if k is None:
            out.append(None)
            continue
        pairs = list(zip(top.indices[i, :k].tolist(), top.values[i, :k].tolist())) if k else []
        out.append({"logprob": float(lp[i, picked[i]]), "top": pairs})
    return out


class PrefixStore:
    """Cache slots of finished sequences by their token ids, at most `capacity` tokens, least recently used
    dropped first. `match(prompt)` gives the entry sharing the longest token prefix with `prompt`."""

    def __init__(self, capacity: int, fields: tuple[str, str]):
        self.capacity, self.fields = capacity, fields
        self.entries: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = []   # (ids, slots per field); MRU last
        self.tokens = 0

    def match(self, prompt: list[int]) -> tuple[int, int]:
        """(entry index, shared prefix length); (-1, 0) when nothing is shared."""
        best, k = -1, 0
        if not self.entries:
            return best, k
        p = torch.tensor(prompt)
        for i, (ids, _) in enumerate(self.entries):
            m = min(len(ids), len(p))
            same = ids[:m] == p[:m]
            shared = m if bool(same.all()) else int(same.int().argmin())
            if shared > k:
                best, k = i, shared
        return best, k

    def slots(self, i: int) -> tuple[torch.Tensor, ...]:
        """Entry i's slots per field (layers, [H,] n, d); marks it most recently used."""
        entry = self.entries.pop(i)
        self.entries.append(entry)
        return entry[1]

    def add(self, ids: list[int], slots: tuple[torch.Tensor, ...]) -> None:
        """Keep a copy of `slots` (views of one row) for the token ids `ids`. An entry that `ids` extends is
        replaced; if `ids` is itself the start of a kept entry, nothing new is stored."""
        n = len(ids)
        if n > self.capacity:
            return
        new = torch.tensor(ids)
        keep = []
        for i, e in enumerate(self.entries):
            m = min(len(e[0]), n)
            if bool((e[0][:m] == new[:m]).all()):
                if len(e[0]) >= n:                # already kept in full: touch it
                    self.slots(i)
                    return
                self.tokens -= len(e[0])          # superseded by the longer one
                continue
            keep.append(e)
        self.entries = keep
        while self.entries and self.tokens + n > self.capacity:
            self.tokens -= len(self.entries.pop(0)[0])
        self.entries.append((new, tuple(s.clone() for s in slots)))
        self.tokens += n


class _Group:
    """Jobs prefilled together in a temporary cache of B rows, each prompt left-padded to end at the same slot.

    Row b reuses R_b prompt tokens from the prefix store and feeds the other n_b = P_b - R_b. With L0 = max R_b
    and T = max n_b, row b's kept prefix sits in slots [L0 - R_b, L0), padding in [L0, L0 + T - n_b) and its new
    tokens in [L0 + T - n_b, L0 + T): every forward writes the same slots in all rows, and the key mask hides the
    gaps. Without padding or reuse (one prompt, nothing kept) no mask or positions are passed: the forward is then
    exactly `Engine.generate`'s prefill."""

    def __init__(self, model, jobs: list[Job], reuse: list[tuple[tuple[torch.Tensor, ...] | None, int]],
                 fields: tuple[str, str], device):
        self.jobs, self.reuse, self.fields = jobs, reuse, fields
        B = len(jobs)
        self.R = [r for _, r in reuse]
        self.new = [len(j.prompt) - r for j, r in zip(jobs, self.R)]
        self.L0, self.T = max(self.R), max(self.new)
        self.cache = model.make_cache(B, self.L0 + self.T, device=device)
        ids = torch.zeros(B, self.T, dtype=torch.long)
        pos = torch.zeros(B, self.T, dtype=torch.long)
        mask = torch.zeros(B, self.L0 + self.T, dtype=torch.bool)
        for b, (job, (kept, r)) in enumerate(zip(jobs, reuse)):
            pad = self.T - self.new[b]
            ids[b, pad:] = torch.tensor(job.prompt[r:])
            pos[b, pad:] = torch.arange(r, len(job.prompt))
            mask[b, self.L0 - r:self.L0] = True
            mask[b, self.L0 + pad:] = True
            for name, src in zip(fields, kept or ()):
                _slots(self.cache, name, b, self.L0 - r, r).copy_(src.narrow(-2, 0, r))
        self.cache.length = self.L0
        self.exact = B == 1 and self.L0 == 0
        self.ids, self.pos, self.mask = ids.to(device), pos.to(device), mask.to(device)
        self.done = 0                             # new-token columns fed so far
        self.logits: torch.Tensor | None = None   # (B, V) once every prompt is read

    def forward(self, model, budget: int) -> None:
        """Feed the next chunk (at most `budget` tokens over all rows); after the last one, `logits` holds each
        prompt's next-token logits."""
        B = len(self.jobs)
        a = self.done
        b = min(self.T, a + max(1, budget // B))
        if self.exact:
            logits = model(self.ids[:, a:b], cache=self.cache, logits_to_keep=1)
        else:
            logits = model(self.ids[:, a:b], positions=self.pos[:, a:b], cache=self.cache,
                           attn_mask=self.mask[:, :self.L0 + b], logits_to_keep=1)
        self.done = b
        if b == self.T:
            self.logits = logits[:, -1]

    def copy_row(self, b: int, cache, row: int, end: int) -> None:
        """Row b's prompt into `cache` row `row`, ending at slot `end` (contiguous: the gaps are dropped)."""
        r, n, P = self.R[b], self.new[b], len(self.jobs[b].prompt)
        for name in self.fields:
            if r:
                _slots(cache, name, row, end - P, r).copy_(_slots(self.cache, name, b, self.L0 - r, r))
            _slots(cache, name, row, end - n, n).copy_(_slots(self.cache, name, b, self.L0 + self.T - n, n))


class Scheduler:
    """Continuous batching over `engine`'s model (see the module docstring). `max_len` comes from the engine;
    `prefill_tokens` bounds one prefill forward (rows x padded length; default `PREFILL_TOKENS` for the device, and
    then a forward of several prompts at most `GROUP_TOKENS`);
    `prompt_cache_tokens` bounds the kept prefixes (0: none kept; default twice max_len)."""

    def __init__(self, engine: Engine, max_batch: int = 8, max_queue: int = 64, timeout: float | None = None,
                 prefill_tokens: int | None = None, prompt_cache_tokens: int | None = None):
        kind = "cpu" if engine.device.type == "cpu" else "other"
        self.group_tokens = prefill_tokens or min(GROUP_TOKENS[kind], PREFILL_TOKENS[kind])
        if prefill_tokens is None:
            prefill_tokens = PREFILL_TOKENS[kind]
        if max_batch < 1 or max_queue < 0 or prefill_tokens < 1:
            raise UserError(f"max_batch and prefill_tokens must be >= 1 and max_queue >= 0, got {max_batch}, "
                            f"{prefill_tokens}, {max_queue}")
        self.engine, self.model, self.device = engine, engine.model, engine.device
        self.max_batch, self.max_queue, self.timeout = max_batch, max_queue, timeout
        self.prefill_tokens = prefill_tokens
        self.max_len = engine.max_len
        self.cache = self.model.make_cache(max_batch, self.max_len, device=self.device)
        self.fields = _cache_fields(self.cache)
        # the running rows' starts, as a key mask over every slot and as a column, rebuilt only when a row
        # joins, leaves or moves (not every step): see `_step`
        self.mask_starts: list[int] | None = None
        self.mask = self.starts = torch.empty(0)
        if prompt_cache_tokens is None:
            prompt_cache_tokens = PROMPT_CACHE_CONTEXTS * self.max_len
        self.prefixes = PrefixStore(prompt_cache_tokens, self.fields) if prompt_cache_tokens > 0 else None
        self.L = 0                                  # the shared cursor: next slot every row writes
        self.seqs: list[_Seq] = []                  # running, packed: seqs[i] lives in cache row i
        self.group: _Group | None = None            # being prefilled
        self.queue: deque[Job] = deque()
        self.cv = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None
        # prefill/decode_seconds: the scheduler thread's CPU time in prefill and decode forwards (time.thread_time);
        # decode_rows: rows summed over decode steps
        self.counters = {"generated_tokens": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0, "finished": 0,
                         "cancelled": 0, "prefill_seconds": 0.0, "decode_seconds": 0.0, "decode_steps": 0,
                         "decode_rows": 0}
        self.flushes: dict[Callable[[], Any], None] = {}   # the jobs' distinct `flush` callables, called per step

    # --- the caller's side (any thread) -------------------------------------------------------------
    def start(self) -> "Scheduler":
        self.thread = threading.Thread(target=self._loop, name="dscoder-scheduler", daemon=True)
        self.thread.start()
        return self

    def check(self, prompt: Sequence[int], params: Params, n: int = 1) -> list[int]:
        """The prompt as ids, or UserError for a request that could never run (raised before it is queued)."""
        check_sampling(params.temperature, params.top_k, params.top_p)
        if not 1 <= n <= self.max_batch:
            raise UserError(f"n must be between 1 and {self.max_batch} (this server's batch size), got {n}")
        if params.top_k > self.engine.vocab_size:
            raise UserError(f"top_k {params.top_k} is larger than the vocabulary of {self.engine.vocab_size}")
        [ids] = self.engine.prepare([prompt], params.max_tokens)
        return ids

    def submit(self, job: Job) -> Job:
        """Queue `job` (checked with `check` first); QueueFull when max_queue jobs are already waiting."""
        job.prompt = self.check(job.prompt, job.params, job.n)
        if job.params.timeout is None and self.timeout:
            job.params = replace(job.params, timeout=self.timeout)
        with self.cv:
            if self.stopping:
                raise QueueFull(len(self.queue))
            if len(self.queue) >= self.max_queue:
                raise QueueFull(len(self.queue))
            self.queue.append(job)
            if job.flush is not None:
                self.flushes[job.flush] = None
            self.cv.notify()
        return job

    def stats(self) -> dict[str, float]:
        """Queue depth, running sequences and counters (read without locking: a snapshot for metrics)."""
        return {"queued": len(self.queue), "running": len(self.seqs), **self.counters}

    def shutdown(self, timeout: float | None = None) -> None:
        """Finish what is running and queued, then stop the thread."""
        with self.cv:
            self.stopping = True
            self.cv.notify()
        if self.thread is not None:
            self.thread.join(timeout)

    # --- the scheduler thread -----------------------------------------------------------------------
    def _idle(self) -> bool:
        return not self.queue and not self.seqs and self.group is None

    def _loop(self) -> None:
        while True:
            with self.cv:
                while self._idle() and not self.stopping:
                    self.cv.wait()
                if self.stopping and self._idle():
                    return
            try:
                with torch.inference_mode():
                    self._admit()
                    self._retire_cancelled()
                    self._prefill()
                    if self.seqs:
                        self._step()
            except Exception as e:  # one bad step must not take the server down: fail what ran, start clean
                self._fail_all(f"{type(e).__name__}: {e}")
            self._flush()

    def _flush(self) -> None:
        """Call each owner's `flush` once; the jobs of an owner that cannot take it any more are cancelled."""
        for f in list(self.flushes):
            try:
                f()
            except Exception:  # noqa: BLE001 -- as in _tell: the owner has gone, the scheduler carries on
                del self.flushes[f]
                for job in [s.job for s in self.seqs] + list(self.queue) + (self.group.jobs if self.group else []):
                    if job.flush is f:
                        job.cancel()

    def _fail_all(self, message: str) -> None:
        for job in {s.job for s in self.seqs}:
            _tell(job, Failed(message))
        self.seqs, self.L = [], 0

    def _fits(self, jobs: list[Job]) -> bool:
        """Room for the rows of `jobs`, and for every row's remaining tokens before max_len once the rows are
        packed left (the shared cursor moves for all of them)."""
        if len(self.seqs) + sum(j.n for j in jobs) > self.max_batch:
            return False
        oldest = min((s.start for s in self.seqs), default=self.L)
        cursor = max([self.L - oldest] + [len(j.prompt) for j in jobs])
        need = [s.job.params.max_tokens - len(s.out) for s in self.seqs] + [j.params.max_tokens for j in jobs]
        return cursor + max(need, default=0) <= self.max_len

    def _reuse(self, job: Job) -> tuple[tuple[torch.Tensor, ...] | None, int]:
        """(kept slots, prompt tokens they cover) for the longest kept prefix of `job`'s prompt; at least the
        last prompt token is always fed (its logits give the first new token)."""
        if self.prefixes is None or not job.params.cache_prompt:
            return None, 0
        i, k = self.prefixes.match(job.prompt)
        k = min(k, len(job.prompt) - 1)
        if k < MIN_REUSE:
            return None, 0
        return self.prefixes.slots(i), k

    def _admit(self) -> None:
        """Start prefilling the waiting jobs that fit together (none while a group is being prefilled)."""
        if self.group is not None:
            return
        jobs: list[Job] = []
        reuse: list[tuple[tuple[torch.Tensor, ...] | None, int]] = []
        with self.cv:
            while self.queue:
                job = self.queue[0]
                if job.cancelled or time.monotonic() > job.deadline:
                    self.queue.popleft()
                    self.counters["cancelled"] += 1
                    if not job.cancelled:
                        _tell(job, Failed("the request timed out while waiting in the queue"))
                    continue
                if not self._fits(jobs + [job]):
                    break
                kept = self._reuse(job)
                width = max([len(j.prompt) - r for j, (_, r) in zip(jobs, reuse)] + [len(job.prompt) - kept[1]])
                if jobs and (len(jobs) + 1) * width > self.group_tokens:
                    break
                jobs.append(self.queue.popleft())
                reuse.append(kept)
        if not jobs:
            return
        try:
            self.group = _Group(self.model, jobs, reuse, self.fields, self.device)
        except Exception as e:  # e.g. out of memory on a long prompt: these requests fail, the batch goes on
            for job in jobs:
                _tell(job, Failed(f"{type(e).__name__}: {e}"))

    def _prefill(self) -> None:
        """One forward of the group being prefilled; once its prompts are read, its jobs join the batch."""
        g = self.group
        if g is None:
            return
        if all(j.cancelled for j in g.jobs):
            self.counters["cancelled"] += len(g.jobs)
            self.group = None
            return
        try:
            if g.logits is None:
                t = time.thread_time()
                g.forward(self.model, self.prefill_tokens)
                self.counters["prefill_seconds"] += time.thread_time() - t
            if g.logits is None or not self._fits([j for j in g.jobs if not j.cancelled]):
                return                              # more chunks to read, or waiting for rows to finish
            self.group = None
            self._join(g, g.logits)
        except Exception as e:  # e.g. out of memory on a long prompt: these requests fail, the batch goes on
            self.group = None
            self.seqs = [s for s in self.seqs if s.job not in g.jobs]
            for job in g.jobs:
                _tell(job, Failed(f"{type(e).__name__}: {e}"))

    def _join(self, g: _Group, logits: torch.Tensor) -> None:
        """Copy each read prompt into n free rows ending at the cursor and sample each first token."""
        live = [b for b, j in enumerate(g.jobs) if not j.cancelled]
        self.counters["cancelled"] += len(g.jobs) - len(live)
        if not live:
            return
        P = max(len(g.jobs[b].prompt) for b in live)
        self._make_room(P, max(g.jobs[b].params.max_tokens for b in live))
        new, rows = [], []
        for b in live:
            job, p = g.jobs[b], g.jobs[b].params
            for i in range(job.n):
                row = len(self.seqs)
                g.copy_row(b, self.cache, row, self.L)
                gen = None
                if p.seed is not None and p.temperature > 0:
                    gen = torch.Generator(device=self.device)
                    gen.manual_seed((p.seed + i) % SEED_MOD)
                stops = StopStrings(p.stop_strings, job.decode) if p.stop_strings else None
                seq = _Seq(job, i, self.L - len(job.prompt), Sampler(p.temperature, p.top_k, p.top_p, gen), stops)
                self.seqs.append(seq)
                new.append(seq)
                rows.append(b)
            job.cached_tokens = g.R[b]
            self.counters["prompt_tokens"] += len(job.prompt)
            self.counters["cached_prompt_tokens"] += g.R[b]
        self._take(new, logits[torch.tensor(rows, device=logits.device)])
        now = time.monotonic()
        for b in live:
            g.jobs[b].first_token_at = now

    def _make_room(self, P: int, need: int) -> None:
        """Move the rows so a prompt of P tokens ends at the cursor and every row's remaining tokens (at most
        `need` for the new ones) fit before max_len; `_fits` said they do once the rows are packed left."""
        if not self.seqs:
            self.L = 0
        need = max([need] + [s.job.params.max_tokens - len(s.out) for s in self.seqs])
        if self.seqs and max(self.L, P) + need > self.max_len:    # compaction: the oldest row moves to slot 0
            self._shift(-min(s.start for s in self.seqs))
        if self.L < P:                                       # a longer prompt than the cursor: move the rows right
            self._shift(P - self.L)

    def _shift(self, d: int) -> None:
        if d == 0:
            return
        n, lo = len(self.seqs), min((s.start for s in self.seqs), default=self.L)
        if n:
            for name in self.fields:
                rows = getattr(self.cache, name)[:, :n]
                src = rows.narrow(-2, lo, self.L - lo).clone()
                rows.narrow(-2, lo + d, self.L - lo).copy_(src)
            for s in self.seqs:
                s.start += d
        self.L += d

    def _step(self) -> None:
        """One decode forward for every running row (packed in rows 0..n-1), then one token each."""
        seqs, n, L = self.seqs, len(self.seqs), self.L
        starts = [s.start for s in seqs]
        if starts != self.mask_starts:               # a row joined, left or moved since the last step
            self.mask_starts = starts
            self.starts = torch.tensor(starts, device=self.device)[:, None]                  # (n, 1)
            self.mask = torch.arange(self.max_len, device=self.device)[None] >= self.starts  # (n, max_len)
        tokens = torch.tensor([[s.next_token] for s in seqs], device=self.device)          # (n, 1)
        # row r's next token sits at slot L; its prompt starts at slot start_r, so its RoPE position is L - start_r.
        # The key mask (n, 1, 1, L+1) is whole (4-D): slots [start_r, L] of row r, its own slot L included
        mask = self.mask[:, None, None, :L + 1]
        t = time.thread_time()
        logits = self.model(tokens, positions=L - self.starts, cache=self._rows(n), attn_mask=mask)[:, -1]  # (n, V)
        c = self.counters
        c["decode_seconds"] += time.thread_time() - t
        c["decode_steps"] += 1
        c["decode_rows"] += n
        self.L += 1
        self._take(list(seqs), logits)

    def _rows(self, n: int):
        """The batch cache restricted to rows 0..n-1 (views: writes land in the batch cache), cursor at L."""
        view = object.__new__(type(self.cache))
        view.__dict__.update(self.cache.__dict__)
        for name in self.fields:
            setattr(view, name, getattr(self.cache, name)[:, :n])
        view.length = self.L
        return view

    def _take(self, seqs: list[_Seq], logits: torch.Tensor) -> None:
        """Give each seq its next token (logits row i is seqs[i]'s), emit what is safe, retire finished seqs."""
        picked = _sample(seqs, logits)
        lps = _logprob_entries(logits, picked, [s.job.params.logprobs for s in seqs])
        now = time.monotonic()
        for s, t, lp in zip(seqs, picked, lps):
            p = s.job.params
            self.counters["generated_tokens"] += 1
            if t in p.stop_ids:
                s.reason = "stop"
                continue
            s.out.append(t)
            if s.lps is not None:
                s.lps.append(lp)
            s.next_token = t
            if s.stops is not None and s.stops.hit(s.out):
                s.reason = "stop"
            elif len(s.out) >= p.max_tokens or now > s.job.deadline:
                s.reason = "length"
            elif len(s.out) - s.sent > s.hold:
                k = len(s.out) - s.hold
                _tell(s.job, Tokens(s.index, s.out[s.sent:k], s.lps[s.sent:k] if s.lps is not None else None))
                s.sent = k
        self._retire([s for s in seqs if s.reason is not None])

    def _retire_cancelled(self) -> None:
        gone = [s for s in self.seqs if s.job.cancelled]
        if gone:
            self.counters["cancelled"] += len({s.job for s in gone})
            self._retire(gone, emit=False)

    def _keep(self, s: _Seq, row: int) -> None:
        """Store row's slots (its prompt and the tokens fed after it) in the prefix store."""
        n = self.L - s.start
        if self.prefixes is None or n < MIN_REUSE:
            return
        ids = (s.job.prompt + s.out)[:n]
        self.prefixes.add(ids, tuple(_slots(self.cache, name, row, s.start, n) for name in self.fields))

    def _retire(self, done: list[_Seq], emit: bool = True) -> None:
        """Free the rows of `done` (keeping their slots in the prefix store), then (emit) tell their jobs: a client
        that saw the end sees the row free."""
        for s in done:
            row, last = self.seqs.index(s), len(self.seqs) - 1
            self._keep(s, row)
            if row != last:                                  # keep rows packed: the last row moves into the hole
                for name in self.fields:
                    t = getattr(self.cache, name)
                    t[:, row, ..., :self.L, :] = t[:, last, ..., :self.L, :]
                self.seqs[row] = self.seqs[last]
            self.seqs.pop()
        if not self.seqs:
            self.L = 0
        for s in done if emit else ():
            out = Engine._finish(s.out, s.reason, len(s.job.prompt), s.stops, s.job.decode)
            lps = s.lps[:len(out.tokens)] if s.lps is not None else None
            self.counters["finished"] += 1
            _tell(s.job, Finished(s.index, out, lps))
