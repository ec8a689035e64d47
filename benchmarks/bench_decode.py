"""Greedy decode speed: dscoder `Engine` vs `transformers.LlamaForCausalLM.generate(do_sample=False)`.

Same random weights (ours copied into the HF model by name), fp32, CPU, the same torch thread count, one
prompt of random ids, every new token forced (no EOS stop). Prints tokens/s for each and the ratio, and
whether the two greedy continuations agree token for token. Besides wall time, each row's CPU time of this
process: on a shared machine the wall clock also counts the time other processes held the core, CPU time does
not (memory contention still slows both).

    .venv/bin/python benchmarks/bench_decode.py                       # hidden 1024, 8 layers, vocab 32256
    .venv/bin/python benchmarks/bench_decode.py --layers 2 --new 32   # quick look
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import torch

from _pair import add_shape_args, llama_pair  # benchmarks/ is on sys.path when a script runs


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p, hidden=1024, layers=8, heads=8, kv_heads=8, intermediate=2816, vocab=32256)
    p.add_argument("--prompt", type=int, default=128, help="prompt length in tokens")
    p.add_argument("--new", type=int, default=128, help="new tokens per run")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (best is reported)")
    return p.parse_args()


def best_times(fns: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Best wall time, best CPU time and last output of each fn. Runs alternate (a, b, a, b, ...) so that drifting
    machine load hits both sides alike; one untimed warm-up each (first-call allocations are not decode speed)."""
    outs = {name: fn() for name, fn in fns.items()}
    best = {name: float("inf") for name in fns}
    cpu = dict(best)
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    return best, cpu, outs


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from dscoder.infer.engine import Engine
    ours, hf = llama_pair(args)
    ours, hf = ours.eval(), hf.eval()

    prompts = torch.randint(0, args.vocab, (args.batch, args.prompt))
    engine = Engine(ours)
    relaid = copy.deepcopy(ours)  # same values again, stored column-major for the GEMV fast path
    engine_gemv = Engine(relaid).use_gemv_layout()

    @torch.inference_mode()
    def run_hf():
        out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.new,
                          min_new_tokens=args.new, do_sample=False, pad_token_id=0, eos_token_id=None)
        return out[:, args.prompt:].tolist()

    runs = {
        "dscoder Engine.generate": lambda: [o.tokens for o in engine.generate(prompts.tolist(), args.new)],
        "dscoder Engine + use_gemv_layout()": lambda: [o.tokens for o in engine_gemv.generate(prompts.tolist(),
                                                                                               args.new)],
        "transformers LlamaForCausalLM.generate": run_hf,
    }
    best, cpu, outs = best_times(runs, args.repeats)
    n = args.batch * args.new
    t_hf, c_hf, tok_hf = best[list(runs)[-1]], cpu[list(runs)[-1]], outs[list(runs)[-1]]
    print(f"greedy decode, fp32 CPU, {args.threads} threads: {sum(p.numel() for p in ours.parameters()) / 1e6:.0f}M params "
          f"(hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}), batch {args.batch}, "
          f"prompt {args.prompt}, {args.new} new tokens, best of {args.repeats} (prefill included); "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'implementation':<40}{'seconds':>9}{'tokens/s':>10}{'ms/token':>10}{'vs HF':>8}"
          f"{'CPU tok/s':>11}{'vs HF':>8}{'same tokens':>13}")
    for name, t in best.items():
        same = sum(a == b for ra, rb in zip(outs[name], tok_hf) for a, b in zip(ra, rb))
        print(f"{name:<40}{t:>9.3f}{n / t:>10.1f}{1000 * t / args.new:>10.2f}{t_hf / t:>7.2f}x"
              f"{n / cpu[name]:>11.1f}{c_hf / cpu[name]:>7.2f}x{same:>8}/{n}")

if __name__ == "__main__":
    main()
