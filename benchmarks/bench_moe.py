"""DeepSeek-V2 MoE forward speed: dscoder vs transformers' DeepseekV2ForCausalLM, same weights, fp32, same threads.

Also prints the expert load balance (max / mean picks per expert, per MoE layer) and the KV-cache size per token
of the latent cache (c_kv + shared rope key) against an expanded per-head K/V cache for the Lite and 236B configs
(V2 paper §2.1.2; modeling_deepseek.py).

Run:
    .venv/bin/python benchmarks/bench_moe.py                       # hidden 512, 4 layers, 16 experts top-4, 2 x 512
    .venv/bin/python benchmarks/bench_moe.py --threads 2 --repeats 5 --seq 256
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from dscoder.models.deepseek_v2 import DeepseekV2, cache_values_per_token
from dscoder.models.hf import save_pretrained
from dscoder.models.presets import get_preset


def bench_config(hidden: int, layers: int, experts: int, top_k: int):
    return get_preset("tiny-moe", vocab_size=8192, hidden_size=hidden, intermediate_size=4 * hidden,
                      moe_intermediate_size=hidden // 2, num_hidden_layers=layers, num_attention_heads=8,
                      num_key_value_heads=8, kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=16,
                      v_head_dim=32, n_routed_experts=experts, num_experts_per_tok=top_k, n_shared_experts=1)


def time_interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so machine load hits all of them alike."""
    for fn in fns.values():
        fn()                                               # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def cache_report() -> None:
    for name in ("deepseek-coder-v2-lite", "deepseek-coder-v2"):
        cfg = get_preset(name)
        latent, expanded = cache_values_per_token(cfg)
        layers = cfg.num_hidden_layers
        print(f"{name:24s} cache per token per layer: latent {latent} values ({2 * latent} B bf16) vs expanded "
              f"{expanded} ({2 * expanded} B bf16) -> {expanded / latent:.1f}x smaller; whole model "
              f"{2 * latent * layers / 1024:.1f} KiB vs {2 * expanded * layers / 1024:.1f} KiB per token")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import DeepseekV2ForCausalLM

    cfg = bench_config(args.hidden, args.layers, args.experts, args.top_k)
    torch.manual_seed(0)
    ours = DeepseekV2(cfg)
    ours.init_weights()
    with torch.no_grad():                                  # a livelier router than init so routing is uneven
        for layer in ours.model.layers:
            if layer.is_moe:
                layer.mlp.gate.weight.normal_(0, 0.2)
    ours.eval()
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(ours, tmp)
        refs = {impl: DeepseekV2ForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="sdpa",
                                                           experts_implementation=impl).eval()
                for impl in ("eager", "grouped_mm")}
    tokens = args.batch * args.seq
    with torch.inference_mode():
        delta = (ours(ids) - refs["eager"](input_ids=ids).logits).abs().max().item()
        fns = {"dscoder": lambda: ours(ids)}
        fns.update({f"transformers ({impl})": (lambda r=ref: r(input_ids=ids)) for impl, ref in refs.items()})
        med = time_interleaved(fns, args.repeats)
    print(f"config: hidden {args.hidden}, {args.layers} layers, {args.experts} experts top-{args.top_k}, "
          f"batch {args.batch} x seq {args.seq}, fp32, {args.threads} thread(s), median of {args.repeats}; "
          f"max |dlogits| {delta:.2e}")
    for name, sec in med.items():
        ratio = "" if name == "dscoder" else f"   dscoder speed-up x{sec / med['dscoder']:.2f}"
        print(f"{name:28s} {tokens / sec:9.0f} tok/s{ratio}")
    with torch.inference_mode():
        load = ours(ids, return_aux=True).expert_load.float()   # (n_moe_layers, E)
    ratio = (load.max(dim=1).values / load.mean(dim=1)).tolist()
    print("expert load max/mean per MoE layer:", " ".join(f"{r:.2f}" for r in ratio))
    cache_report()


if __name__ == "__main__":
    main()
