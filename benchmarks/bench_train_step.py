"""Training-step speed: dscoder `Transformer` vs `transformers.LlamaForCausalLM`, same config and weights.

One step = forward + shifted cross-entropy + backward + AdamW step, fp32, the same torch thread count, HF on its
default attention (SDPA). The loss is computed the same way from both models' logits. The two sides alternate
(ours, HF, ours, HF, ...) so machine noise hits both; the median step time of each is reported.

    .venv/bin/python benchmarks/bench_train_step.py                      # hidden 512, 8 layers, seq 256, batch 4
    .venv/bin/python benchmarks/bench_train_step.py --layers 2 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from _pair import add_shape_args, llama_pair  # benchmarks/ is on sys.path when a script runs


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p, hidden=512, layers=8, heads=8, kv_heads=8, intermediate=1376, vocab=32256)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per side (after one warm-up step each)")
    return p.parse_args()


def step_fn(model, logits_of, ids: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        logits = logits_of(model, ids[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def timed(step) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours, hf = llama_pair(args)
    ours, hf = ours.train(), hf.train()
    print(f"HF attention implementation: {hf.config._attn_implementation}")

    ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    # first step on identical weights and data: same loss (a fairness check, not a speed number)
    loss_ours = step_fn(ours, lambda m, x: m(x), ids)()
    loss_hf = step_fn(hf, lambda m, x: m(input_ids=x).logits, ids)()
    assert abs(loss_ours - loss_hf) < 1e-4, (loss_ours, loss_hf)
    step_ours = step_fn(ours, lambda m, x: m(x), ids)
    step_hf = step_fn(hf, lambda m, x: m(input_ids=x).logits, ids)
    step_ours(), step_hf()  # warm-up: allocator and kernel selection
    t_ours, t_hf = [], []
    for _ in range(args.repeats):
        t_ours.append(timed(step_ours))
        t_hf.append(timed(step_hf))
    tokens = args.batch * args.seq
    med_ours, med_hf = statistics.median(t_ours), statistics.median(t_hf)
    print(f"train step, fp32 CPU, {args.threads} threads: {ours.config.num_params() / 1e6:.1f}M params (hidden "
          f"{args.hidden}, {args.layers} layers, heads {args.heads}/{args.kv_heads}, vocab {args.vocab}), "
          f"batch {args.batch} x seq {args.seq}, median of {args.repeats}")
    print(f"  dscoder      {tokens / med_ours:8.0f} tokens/s  ({med_ours * 1e3:.0f} ms/step)")
    print(f"  transformers {tokens / med_hf:8.0f} tokens/s  ({med_hf * 1e3:.0f} ms/step)")
    print(f"  ratio (dscoder / transformers): {med_hf / med_ours:.2f}x")


if __name__ == "__main__":
    main()
