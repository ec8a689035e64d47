"""Training throughput and MFU of a DeepSeek-Coder-1.3B-shaped model in bf16 on one GPU.

    python benchmarks/bench_mfu.py [--preset deepseek-coder-1.3b] [--seq-len 2048] [--batch-size 4] [--steps 10]

Runs the real training step of `dscoder.train.loop` (bf16 autocast, fp32 master weights, AdamW, clip 1.0) on
random tokens and reports tokens/s and model FLOPs utilisation: achieved FLOP/s (6 x active params + causal
attention, `train.metrics.flops_per_token`) over the GPU's dense bf16 peak. Prints "skipped: no CUDA" on CPU.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

# dense bf16 tensor-core peaks (no sparsity), by substring of torch.cuda.get_device_name()
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def peak_flops(name: str) -> float:
    return next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="deepseek-coder-1.3b")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup-steps", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    from dscoder.models.hf import build_model
    from dscoder.models.presets import get_preset
    from dscoder.train.loop import LoopConfig, train_step
    from dscoder.train.metrics import flops_per_token, mfu
    from dscoder.train.optim import build_optimizer
    from dscoder.train.parallel import Dist

    torch.backends.cuda.matmul.allow_tf32 = True
    dev = torch.device("cuda")
    cfg = get_preset(args.preset)
    model = build_model(cfg).to(dev).train()
    opt = build_optimizer(model, 1e-4)
    loop_cfg = LoopConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=1e-4, warmup=1,
                          dtype="bf16")
    dist = Dist(device=dev)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        batch = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len + 1), generator=gen)
        train_step(model, opt, [batch], loop_cfg, dist)

    for _ in range(args.warmup_steps):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    tok_s = args.batch_size * args.seq_len / dt
    name = torch.cuda.get_device_name()
    achieved = tok_s * flops_per_token(cfg, args.seq_len)
    util = mfu(tok_s, cfg, args.seq_len, peak_flops(name))
    print(json.dumps({"device": name, "preset": args.preset, "params": cfg.num_params(), "seq_len": args.seq_len,
                      "batch_size": args.batch_size, "step_s": round(dt, 4), "tokens_per_s": round(tok_s),
                      "tflops": round(achieved / 1e12, 1), "mfu": round(util, 4),
                      "max_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
