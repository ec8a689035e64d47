"""CPU decode against the memory roofline: how close does batch-1 greedy decode get to the memory bandwidth?

At batch 1 every decode step reads every weight matrix once (plus the KV cache so far), so
tokens/s x bytes read per token can be at most the machine's memory bandwidth. The model is
1.3b-shaped (hidden 2048, intermediate 5504, 16 heads, vocab 32256: deepseek-coder-1.3b-base's config.json) with fewer
layers, so that its weights (>= 500 MB fp32) are far larger than the CPU caches. The bandwidth is
measured in the same run, with the same threads, interleaved with the decode runs: the best of several
matrix-vector products over a 1 GB matrix (every byte read once, the access pattern of decode; a plain `sum`
reads slower than that on some machines, which would overstate the fraction).

bytes per token = all weights except the embedding table (one row of it is read) + the K and V cache
read by attention, averaged over the generated positions.

    .venv/bin/python benchmarks/bench_roofline.py                   # 2 layers: ~0.7 GB read per token
    .venv/bin/python benchmarks/bench_roofline.py --layers 4 --threads 2
"""
from __future__ import annotations

import argparse
import time

import torch

from _pair import decode_bytes  # benchmarks/ is on sys.path when a script runs


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads for both the bandwidth probe and decode")
    p.add_argument("--bandwidth-gb", type=float, default=1.0, help="size of the tensor read to measure bandwidth")
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bandwidth_probes(n_bytes: int):
    """(read probe, copy probe): each returns bytes/s of one full pass over an fp32 tensor of n_bytes."""
    x = torch.ones(n_bytes // 4, dtype=torch.float32)  # ones, not empty: every page really backed
    y = torch.empty_like(x)
    w, v = x.view(-1, 1024), torch.ones(1024)
    return (lambda: n_bytes / timed(lambda: torch.mv(w, v))), (lambda: 2 * n_bytes / timed(lambda: y.copy_(x)))


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from dscoder.infer.engine import Engine
    from dscoder.models.hf import build_model
    from dscoder.models.presets import get_preset

    probe_read, probe_copy = bandwidth_probes(int(args.bandwidth_gb * 2**30))
    cfg = get_preset("deepseek-coder-1.3b", num_hidden_layers=args.layers, max_position_embeddings=4096,
                     bos_token_id=None, eos_token_id=None)
    model = build_model(cfg).float().eval()
    engine = Engine(model)
    prompt = torch.randint(0, cfg.vocab_size, (args.prompt,)).tolist()

    def decode_seconds() -> float:
        """Time of `new` decode steps: from the first streamed token (prefill done) to the last."""
        stream = engine.generate_stream(prompt, max_new_tokens=args.new + 1)
        next(stream)
        t0 = time.perf_counter()
        for _ in stream:
            pass
        return time.perf_counter() - t0

    # interleave probes and decode so drifting load on a shared machine hits both alike; keep the best of each
    bw_read = bw_copy = 0.0
    speed = {}
    for layout in ("row-major weights (PyTorch default)", "column-major weights (Engine.use_gemv_layout)"):
        if layout.startswith("column"):
            engine.use_gemv_layout()
        decode_seconds()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            bw_read, bw_copy = max(bw_read, probe_read()), max(bw_copy, probe_copy())
            best = min(best, decode_seconds())
        speed[layout] = args.new / best
    w_bytes, kv_bytes = decode_bytes(model, args.prompt, args.new)

    print(f"batch-1 greedy decode, fp32 CPU, {args.threads} threads; 1.3b-shaped model with {args.layers} layers "
          f"({cfg.num_params() / 1e6:.0f}M params), prompt {args.prompt}, {args.new} decode steps, "
          f"best of {args.repeats}")
    rows = [
        ("measured read bandwidth (GEMV over 1 GB)", f"{bw_read / 1e9:.2f} GB/s"),
        ("measured copy bandwidth (read+write)", f"{bw_copy / 1e9:.2f} GB/s"),
        ("weights read per token", f"{w_bytes / 1e6:.1f} MB"),
        ("KV cache read per token (mean)", f"{kv_bytes / 1e6:.2f} MB"),
    ]
    for layout, tok_s in speed.items():
        achieved = tok_s * (w_bytes + kv_bytes)
        rows += [(layout, f"{tok_s:.2f} tokens/s ({1000 / tok_s:.1f} ms/token), {achieved / 1e9:.2f} GB/s "
                          f"= {achieved / bw_read:.0%} of read bandwidth")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
