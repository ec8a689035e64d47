"""Continuous batching over one model: many requests share each decode step; token ids in, token ids out.

One thread owns the model. Requests wait in a bounded queue; at every step the scheduler admits what fits (a new
request is prefilled alone, then its cache rows join the running batch), runs ONE decode forward for every running
sequence, and retires the sequences that stopped, ran out of tokens or time, or whose client went away (checked
before every step, so a cancelled request costs at most one more step). This is the scheduling idea of Orca
(Yu et al., OSDI 2022, "iteration-level scheduling") over this package's preallocated caches.

The batch cache is the model's own (`make_cache(max_batch, max_len)`: v1's K/V or V2's latent cache) with one
shared cursor L. Row r holds its sequence in slots [start_r, L): a prompt of P tokens is copied in ending at L, so
every row writes its next token at slot L, and each row's RoPE position and key mask (slots before start_r hidden)
are passed to the forward -- the same padded-batch path `Engine.generate` uses. Running rows are kept packed in
rows 0..n-1, so a step computes n rows, not max_batch. When a new row does not fit before max_len, every row is
moved left by the oldest row's start (compaction); a request that still does not fit waits for rows to finish.

    sched = Scheduler(Engine(model), max_batch=8, max_queue=64).start()
    job = Job(prompt_ids, Params(max_tokens=64, stop_ids=frozenset({eos})), emit=events.put)
    sched.submit(job)            # events: Tokens(index, ids, logprobs) ... Finished(index, output, logprobs)
    job.cancel()                 # the client went away: its rows are freed before the next step
    sched.shutdown()             # finishes what was admitted and queued, then the thread exits

Greedy output does not depend on the company a request keeps: its tokens equal `Engine.generate`'s alone.
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


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller should retry after `retry_after` seconds."""

    def __init__(self, depth: int, retry_after: int = 1):
        super().__init__(f"the server is busy: {depth} requests are already waiting; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Params:
    """How to decode one request. `logprobs` k >= 0 also reports each new token's log-probability and the top k
    alternatives (of the model's distribution, before temperature); None reports nothing."""
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    logprobs: int | None = None
    timeout: float | None = None          # seconds from submission; then the request ends as if at max_tokens


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
    thread with each event; it must not block (hand the event to another thread or event loop)."""
    prompt: list[int]
    params: Params
    emit: Callable[[Event], Any]
    n: int = 1
    decode: Decode | None = None
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

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
        self.next_token = -1                # sampled, not yet fed
        self.pos = len(job.prompt)          # RoPE position of next_token
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


class Scheduler:
    """Continuous batching over `engine`'s model (see the module docstring). `max_len` comes from the engine."""

    def __init__(self, engine: Engine, max_batch: int = 8, max_queue: int = 64, timeout: float | None = None):
        if max_batch < 1 or max_queue < 0:
            raise UserError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.engine, self.model = engine, engine.model
        self.max_batch, self.max_queue, self.timeout = max_batch, max_queue, timeout
        self.max_len = engine.max_len
        self.cache = self.model.make_cache(max_batch, self.max_len, device=engine.device)
        self.fields = _cache_fields(self.cache)
        self.L = 0                                  # the shared cursor: next slot every row writes
        self.seqs: list[_Seq] = []                  # running, packed: seqs[i] lives in cache row i
        self.queue: deque[Job] = deque()
        self.cv = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.counters = {"generated_tokens": 0, "prompt_tokens": 0, "finished": 0, "cancelled": 0}

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
            self.cv.notify()
        return job

    def stats(self) -> dict[str, int]:
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
    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.queue and not self.seqs and not self.stopping:
                    self.cv.wait()
                if self.stopping and not self.queue and not self.seqs:
                    return
            try:
                with torch.inference_mode():
                    self._admit()
                    self._retire_cancelled()
                    if self.seqs:
                        self._step()
            except Exception as e:  # one bad step must not take the server down: fail what ran, start clean
                self._fail_all(f"{type(e).__name__}: {e}")

    def _fail_all(self, message: str) -> None:
        for job in {s.job for s in self.seqs}:
            _tell(job, Failed(message))
        self.seqs, self.L = [], 0

    def _fits(self, job: Job) -> bool:
        """Room for `job`'s n rows, and for every row's remaining tokens before max_len once the rows are packed
        left (the shared cursor moves for all of them)."""
        if len(self.seqs) + job.n > self.max_batch:
            return False
        oldest = min((s.start for s in self.seqs), default=self.L)
        cursor = max(self.L - oldest, len(job.prompt))
        need = [s.job.params.max_tokens - len(s.out) for s in self.seqs] + [job.params.max_tokens]
        return cursor + max(need) <= self.max_len

    def _admit(self) -> None:
        while True:
            with self.cv:
                while self.queue and (self.queue[0].cancelled or time.monotonic() > self.queue[0].deadline):
                    gone = self.queue.popleft()
                    self.counters["cancelled"] += 1
                    if not gone.cancelled:
                        _tell(gone, Failed("the request timed out while waiting in the queue"))
                if not self.queue or not self._fits(self.queue[0]):
                    return
                job = self.queue.popleft()
            try:
                self._prefill(job)
            except Exception as e:  # e.g. out of memory on a long prompt: this request fails, the batch goes on
                self.seqs = [s for s in self.seqs if s.job is not job]
                _tell(job, Failed(f"{type(e).__name__}: {e}"))

    def _make_room(self, P: int, need: int) -> None:
        """Move the rows so a prompt of P tokens ends at the cursor and every row's remaining tokens (at most
        `need` for the new one) fit before max_len; `_fits` said they do once the rows are packed left."""
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

    def _prefill(self, job: Job) -> None:
        """Run the prompt alone, copy its cache into n free rows ending at the cursor, sample each first token."""
        P, p = len(job.prompt), job.params
        self._make_room(P, p.max_tokens)
        tmp = self.model.make_cache(1, P, device=self.engine.device)
        ids = torch.tensor([job.prompt], device=self.engine.device)
        logits = self.model(ids, cache=tmp, logits_to_keep=1)[:, -1]       # (1, V)
        new = []
        for i in range(job.n):
            row = len(self.seqs)
            for name in self.fields:
                getattr(self.cache, name)[:, row].narrow(-2, self.L - P, P).copy_(getattr(tmp, name)[:, 0])
            gen = None
            if p.seed is not None and p.temperature > 0:
                gen = torch.Generator(device=self.engine.device)
                gen.manual_seed((p.seed + i) % SEED_MOD)
            stops = StopStrings(p.stop_strings, job.decode) if p.stop_strings else None
            seq = _Seq(job, i, self.L - P, Sampler(p.temperature, p.top_k, p.top_p, gen), stops)
            self.seqs.append(seq)
            new.append(seq)
        self.counters["prompt_tokens"] += P
        self._take(new, logits.expand(job.n, -1))
        job.first_token_at = time.monotonic()

    def _step(self) -> None:
        """One decode forward for every running row (packed in rows 0..n-1), then one token each."""
        seqs, n, dev = self.seqs, len(self.seqs), self.engine.device
        tokens = torch.tensor([[s.next_token] for s in seqs], device=dev)           # (n, 1)
        positions = torch.tensor([[s.pos] for s in seqs], device=dev)               # (n, 1)
        starts = torch.tensor([s.start for s in seqs], device=dev)
        mask = torch.arange(self.L + 1, device=dev)[None] >= starts[:, None]        # (n, L+1)
        view = self._rows(n)
        logits = self.model(tokens, positions=positions, cache=view, attn_mask=mask)[:, -1]   # (n, V)
        self.L += 1
        for s in seqs:
            s.pos += 1
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

    def _retire(self, done: list[_Seq], emit: bool = True) -> None:
        """Free the rows of `done`, then (emit) tell their jobs: a client that saw the end sees the row free."""
        for s in done:
            row, last = self.seqs.index(s), len(self.seqs) - 1
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

