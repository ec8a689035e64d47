"""GRPO rollout throughput, side by side: dscoder's `Engine.generate` (what `dscoder grpo` samples with) against
transformers' `generate`, same fp32 weights, same left-padded batch of P prompts x G samples, temperature 1.0,
every completion forced to --new-tokens tokens (no end token), same thread count. The first row is `dscoder grpo
--rollout-batch P` (one batch for the step); the third is its default, --rollout-batch 1: one batch of G samples
per task, P calls in a row.

    .venv/bin/python benchmarks/bench_grpo_rollouts.py [--prompts 4] [--group 8] [--new-tokens 64] [--threads 2]

Prompts are random token ids of lengths spread over [--min-prompt, --max-prompt] (the batch is ragged, as a GRPO
step's is). Reported: completions/s and new tokens/s, best of --repeats, prefill included.
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from _pair import add_shape_args, llama_pair  # benchmarks/ is on sys.path when a script runs


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p, hidden=256, layers=4, heads=8, kv_heads=4, intermediate=688, vocab=4096)
    p.add_argument("--prompts", type=int, default=4, help="P, tasks per step")
    p.add_argument("--group", type=int, default=8, help="G, samples per task")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--min-prompt", type=int, default=24)
    p.add_argument("--max-prompt", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    a = parse()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ours, hf = llama_pair(a)
    ours.eval(), hf.eval()
    rng = random.Random(0)
    tasks = [[rng.randrange(1, a.vocab) for _ in range(rng.randint(a.min_prompt, a.max_prompt))]
             for _ in range(a.prompts)]
    prompts = [t for t in tasks for _ in range(a.group)]
    B, N = len(prompts), a.new_tokens

    from dscoder.infer.engine import Engine
    engine = Engine(ours)

    def run_ours():
        out = engine.generate(prompts, max_new_tokens=N, temperature=1.0, seed=0)
        assert all(len(o.tokens) == N for o in out)

    def run_grouped():
        for i, t in enumerate(tasks):
            out = engine.generate([t] * a.group, max_new_tokens=N, temperature=1.0, seed=i)
            assert all(len(o.tokens) == N for o in out)

    L = max(map(len, prompts))
    ids = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):], mask[b, L - len(p):] = torch.tensor(p), 1

    @torch.inference_mode()
    def run_hf():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, min_new_tokens=N, do_sample=True,
                          temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0, eos_token_id=None)
        assert out.shape[1] == L + N

    rows = []
    for name, fn in (("Engine, --rollout-batch P", run_ours), ("transformers generate", run_hf),
                     ("Engine, --rollout-batch 1", run_grouped)):
        fn()                                                     # warm-up (allocations, first-call paths)
        s = best(fn, a.repeats)
        rows.append((name, B / s, B * N / s, s))
    print(f"GRPO rollouts: P={a.prompts} x G={a.group} = {B} completions of {N} tokens, prompts "
          f"{a.min_prompt}-{a.max_prompt} tokens, hidden {a.hidden} x {a.layers} layers, vocab {a.vocab}, "
          f"{a.threads} threads, fp32, best of {a.repeats}")
    print(f"{'':26} {'completions/s':>14} {'tokens/s':>10} {'seconds':>8}")
    for name, cps, tps, s in rows:
        print(f"{name:26} {cps:14.2f} {tps:10.0f} {s:8.2f}")
    print(f"speed-up over transformers: {rows[0][1] / rows[1][1]:.2f}x one batch, {rows[2][1] / rows[1][1]:.2f}x "
          "a batch per task")


if __name__ == "__main__":
    main()
