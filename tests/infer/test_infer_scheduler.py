"""Continuous batching: a request's greedy tokens do not depend on the company it keeps (v1 and V2 caches), rows
join and leave mid-run, the cache is compacted, cancelled and timed-out requests free their rows, the queue is
bounded, and sampling with a seed is reproducible."""
import queue
import random
import threading
import time

import pytest
import torch

from dscoder.errors import UserError
from dscoder.infer.engine import Engine
from dscoder.infer.scheduler import Failed, Job, Params, QueueFull, Scheduler, Tokens
from dscoder.models.presets import get_preset

MAX_LEN = 64


def _tiny(arch: str):
    torch.manual_seed(0)
    # initializer_range 0.2 gives peaked logits, so fp32 round-off cannot flip an argmax
    if arch == "llama":
        from dscoder.models.llama import Transformer
        cfg = get_preset("tiny", vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_LEN,
                         initializer_range=0.2)
        model = Transformer(cfg)
    else:
        from dscoder.models.deepseek_v2 import DeepseekV2
        cfg = get_preset("tiny-moe", vocab_size=101, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                         num_hidden_layers=2, max_position_embeddings=MAX_LEN, initializer_range=0.2)
        model = DeepseekV2(cfg)
    model.init_weights()
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "v2"])
def engine(request):
    return Engine(_tiny(request.param))


def _requests(k: int, seed: int = 1) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(1, 101) for _ in range(rng.randrange(2, 20))], rng.randrange(3, 24)) for _ in range(k)]


class Collector:
    """Events of several jobs, as the server gets them (from the scheduler thread)."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()

    def job(self, prompt, params, n=1, key=None, **kw) -> Job:
        return Job(prompt, params, emit=lambda e, k=key: self.q.put((k, e)), n=n, **kw)

    def wait(self, count: int, timeout: float = 60) -> dict:
        """key -> {index: Finished} once `count` choices finished; also checks that streamed ids add up."""
        done, streamed, end = {}, {}, time.monotonic() + timeout
        while sum(map(len, done.values())) < count:
            key, ev = self.q.get(timeout=max(0.01, end - time.monotonic()))
            assert not isinstance(ev, Failed), ev.message
            if isinstance(ev, Tokens):
                streamed.setdefault((key, ev.index), []).extend(ev.ids)
            else:
                done.setdefault(key, {})[ev.index] = ev
                assert streamed.get((key, ev.index), []) == ev.output.tokens[:len(streamed.get((key, ev.index), []))]
        return done


def test_greedy_tokens_alone_equal_among_others(engine):
    reqs = _requests(9)
    alone = [engine.generate([p], max_new_tokens=m)[0].tokens for p, m in reqs]
    sched = Scheduler(engine, max_batch=9, max_queue=16).start()
    try:
        c = Collector()
        sched.submit(c.job(reqs[0][0], Params(reqs[0][1]), key=0))        # alone in the scheduler
        assert c.wait(1)[0][0].output.tokens == alone[0]
        for i, (p, m) in enumerate(reqs):       # all nine at once: prefilled one by one, decoded together
            sched.submit(c.job(p, Params(m), key=i))
        together = c.wait(9)
        assert [together[i][0].output.tokens for i in range(9)] == alone
        assert all(together[i][0].output.finish_reason == "length" for i in range(9))
    finally:
        sched.shutdown(10)
    assert sched.stats()["running"] == 0 and sched.stats()["queued"] == 0


def test_rows_join_midway_and_the_cache_is_compacted(engine):
    """Staggered arrivals into a small batch, long generations: rows join a running batch, leave, and the cursor
    wraps by compaction many times (the total tokens are many times max_len); every output still equals alone."""
    reqs = _requests(14, seed=2)
    alone = [engine.generate([p], max_new_tokens=m)[0].tokens for p, m in reqs]
    sched = Scheduler(engine, max_batch=4, max_queue=32).start()
    try:
        c = Collector()
        for i, (p, m) in enumerate(reqs):
            sched.submit(c.job(p, Params(m), key=i))
            time.sleep(0.003 * (i % 3))
        out = c.wait(len(reqs))
        assert [out[i][0].output.tokens for i in range(len(reqs))] == alone
        assert sum(len(p) + m for p, m in reqs) > 3 * MAX_LEN
    finally:
        sched.shutdown(10)


def test_n_choices_share_a_prompt_and_seeded_sampling_repeats(engine):
    prompt = [3, 14, 15, 92, 65]
    sched = Scheduler(engine, max_batch=8, max_queue=8).start()
    try:
        c = Collector()
        params = Params(12, temperature=1.0, top_p=0.9, seed=7)
        sched.submit(c.job(prompt, params, n=3, key="a"))
        sched.submit(c.job(prompt, Params(12), n=2, key="greedy"))
        first = c.wait(5)
        sched.submit(c.job(prompt, params, n=3, key="b"))
        again = c.wait(3)
    finally:
        sched.shutdown(10)
    a = [first["a"][i].output.tokens for i in range(3)]
    assert a == [again["b"][i].output.tokens for i in range(3)]       # same seed, same choices
    assert len({tuple(x) for x in a}) > 1                              # choice i draws with seed + i
    greedy = engine.generate([prompt], max_new_tokens=12)[0].tokens
    assert [first["greedy"][i].output.tokens for i in range(2)] == [greedy, greedy]


def test_stop_ids_strings_and_logprobs(engine):
    prompt, decode = [5, 17, 3, 88], (lambda ids: "".join(f"<{i}>" for i in ids))
    full = engine.generate([prompt], max_new_tokens=10)[0].tokens
    stop_id, cut = full[4], full.index(full[4])
    sched = Scheduler(engine, max_batch=2, max_queue=4).start()
    try:
        c = Collector()
        sched.submit(c.job(prompt, Params(10, stop_ids=frozenset({stop_id})), key="id"))
        sched.submit(c.job(prompt, Params(10, stop_strings=(f"<{full[2]}><{full[3]}", ), logprobs=2), key="s",
                           decode=decode))
        out = c.wait(2)
    finally:
        sched.shutdown(10)
    assert out["id"][0].output.tokens == full[:cut] and out["id"][0].output.finish_reason == "stop"
    s = out["s"][0]
    assert s.output.finish_reason == "stop" and s.output.text == decode(full[:2]) and s.output.tokens == full[:2]
    assert len(s.logprobs) == 2 and all(len(e["top"]) == 2 and e["logprob"] <= 0 for e in s.logprobs)
    assert s.logprobs[0]["top"][0][0] == full[0]                        # greedy: the pick is the most likely


def test_cancel_timeout_queue_bound_and_bad_requests(engine):
    sched = Scheduler(engine, max_batch=1, max_queue=1).start()
    try:
        c = Collector()
        running, resume = threading.Event(), threading.Event()

        def held(e):                                    # the scheduler thread stops at long's first event until
            c.q.put(("long", e))                        # the test has queued, overflowed and cancelled
            running.set()
            resume.wait(30)
        long = sched.submit(Job([1, 2, 3], Params(MAX_LEN - 3), emit=held))
        assert running.wait(30)
        waiting = sched.submit(c.job([4, 5], Params(5), key="waiting"))
        with pytest.raises(QueueFull):
            sched.submit(c.job([6], Params(5)))
        long.cancel()                                   # its row is freed; the waiting one runs
        resume.set()
        out = c.wait(1)
        assert "long" not in out and out["waiting"][0].output.tokens == engine.generate([[4, 5]], 5)[0].tokens

        def slow(e):                                    # 10 ms per event: the full length would take 0.6 s
            c.q.put(("t", e))
            time.sleep(0.01)
        timed = sched.submit(Job([1, 2], Params(MAX_LEN - 2, timeout=0.03), emit=slow))
        fin = c.wait(1)["t"][0]
        assert fin.output.finish_reason == "length" and len(fin.output.tokens) < MAX_LEN - 2
        assert timed.first_token_at is not None
        for bad, what in [(Params(10, temperature=-1), "temperature"), (Params(MAX_LEN), "context"),
                          (Params(5, top_p=0), "top_p")]:
            with pytest.raises(UserError, match=what):
                sched.submit(c.job([1, 2], bad))
        with pytest.raises(UserError, match="n must be"):
            sched.submit(c.job([1, 2], Params(3), n=2))
        assert waiting.cancelled is False and sched.stats()["running"] == 0
    finally:
        sched.shutdown(10)


def test_an_owner_that_cannot_take_events_is_dropped_and_others_go_on(engine):
    def closed_loop(event):
        raise RuntimeError("Event loop is closed")
    sched = Scheduler(engine, max_batch=2, max_queue=4).start()
    try:
        c = Collector()
        gone = sched.submit(Job([1, 2, 3], Params(20), emit=closed_loop))
        sched.submit(c.job([4, 5], Params(6), key="ok"))
        assert c.wait(1)["ok"][0].output.tokens == engine.generate([[4, 5]], 6)[0].tokens
        assert gone.cancelled
    finally:
        sched.shutdown(10)
    assert sched.stats()["running"] == 0 and sched.thread is not None and not sched.thread.is_alive()


def _run_queued(engine, sched: Scheduler, reqs) -> tuple[list, list]:
    """Queue every (prompt, max_new_tokens) before the scheduler thread starts (so they are admitted together),
    run them; (each request's tokens, the input shapes of every forward with more than one new token)."""
    c = Collector()
    for i, (p, m) in enumerate(reqs):
        sched.submit(c.job(p, Params(m), key=i))
    shapes: list = []
    hook = engine.model.register_forward_pre_hook(
        lambda mod, args: shapes.append(tuple(args[0].shape)) if args[0].shape[1] > 1 else None)
    try:
        sched.start()
        out = c.wait(len(reqs))
    finally:
        hook.remove()
        sched.shutdown(10)
    return [out[i][0].output.tokens for i in range(len(reqs))], shapes


def test_batched_and_chunked_prefill_of_different_lengths(engine):
    """Waiting prompts of different lengths are prefilled in one left-padded forward; with a small prefill budget a
    long prompt is read in chunks while the others decode. Every output equals the request's alone."""
    rng = random.Random(3)
    reqs = [([rng.randrange(1, 101) for _ in range(n)], m) for n, m in [(3, 9), (17, 6), (30, 12), (8, 15), (41, 5)]]
    alone = [engine.generate([p], max_new_tokens=m)[0].tokens for p, m in reqs]
    for budget in (256, 8):
        tokens, shapes = _run_queued(engine, Scheduler(engine, max_batch=8, max_queue=8, prefill_tokens=budget), reqs)
        assert tokens == alone, budget
        if budget == 256:
            assert shapes == [(5, 41)]                                  # one forward, padded to the longest
        else:
            assert max(b * t for b, t in shapes) <= 8 and len(shapes) >= 41 // 8 + 30 // 8


def test_cpu_default_reads_long_prompts_one_per_forward_and_counts_forward_time(engine, monkeypatch):
    """By default a CPU reads waiting prompts together only while rows x padded length stays within GROUP_TOKENS
    (a padded forward needs a key mask, slower there than one forward per long prompt); an explicit prefill budget
    groups up to itself. The scheduler counts its CPU time in prefill and decode forwards, steps and rows."""
    from dscoder.infer import scheduler
    monkeypatch.setitem(scheduler.GROUP_TOKENS, "cpu", 40)
    rng = random.Random(5)
    reqs = [([rng.randrange(1, 101) for _ in range(n)], 4) for n in (30, 17, 8, 3)]
    alone = [engine.generate([p], max_new_tokens=m)[0].tokens for p, m in reqs]
    for budget, want in [(None, [(1, 30), (2, 17), (1, 3)]), (1024, [(4, 30)])]:
        sched = Scheduler(engine, max_batch=8, max_queue=8, prefill_tokens=budget)
        tokens, shapes = _run_queued(engine, sched, reqs)
        assert tokens == alone, budget
        assert shapes == want, budget
        st = sched.stats()
        assert st["prefill_seconds"] > 0 and st["decode_seconds"] > 0, st
        assert st["decode_steps"] >= 3 and st["decode_steps"] <= st["decode_rows"] <= 4 * st["decode_steps"], st


def test_prefix_reuse_gives_the_tokens_of_a_full_prefill(engine):
    """A prompt sharing a long prefix with a finished request (its prompt and generated tokens) prefills only the
    rest; the tokens equal a full prefill's. cache_prompt=False reads nothing kept; a small store stays in its
    bound."""
    rng = random.Random(4)
    base = [rng.randrange(1, 101) for _ in range(30)]
    for capacity in (None, 40):
        sched = Scheduler(engine, max_batch=4, max_queue=8, prompt_cache_tokens=capacity).start()
        try:
            c = Collector()

            def run(prompt, **kw):
                job = sched.submit(c.job(prompt, Params(10, **kw), key="k"))
                return job, c.wait(1)["k"][0].output.tokens
            first, out0 = run(base)
            assert first.cached_tokens == 0
            edit = base[:26] + [(base[26] % 100) + 1, 5, 9]           # a keystroke near the end
            cont = base + out0[:5] + [42]                               # the prompt grew by the answer
            for prompt, shared in [(edit, 26), (cont, 35), (edit, len(edit) - 1)]:
                job, toks = run(prompt)
                assert toks == engine.generate([prompt], max_new_tokens=10)[0].tokens
                assert job.cached_tokens >= shared or capacity is not None
                assert sched.prefixes.tokens <= (capacity or 2 * MAX_LEN)
            job, toks = run(cont, cache_prompt=False)
            assert job.cached_tokens == 0 and toks == engine.generate([cont], max_new_tokens=10)[0].tokens
            assert sched.stats()["cached_prompt_tokens"] >= 26 + 35
        finally:
            sched.shutdown(10)


def test_jobs_sharing_a_flush_are_flushed_once_per_step_after_their_events(engine):
    """Three jobs decoded together share one `flush` (a server's event loop): it is called once per step, after
    the step's events, so the owner can hand a step's events over with one wake-up."""
    events, flushed = [], []

    def flush():
        flushed.append(len(events))
    sched = Scheduler(engine, max_batch=4, max_queue=4)
    c = Collector()
    for k in range(3):
        sched.submit(Job([1 + k, 2, 3], Params(6), emit=lambda e, k=k: (events.append(e), c.q.put((k, e))),
                         flush=flush))
    try:
        sched.start()
        c.wait(3)
    finally:
        sched.shutdown(10)
    assert flushed[-1] == len(events) and len(set(flushed)) <= 7 < len(events)   # 1 prefill + 6 steps at most
