"""Serving throughput: 8 concurrent clients against `dscoder serve` vs the same requests one at a time.

Each request is a fill-in-the-middle completion (`/v1/completions` with `suffix`, streamed) whose PSM prompt is
about 512 tokens, asking for 64 new tokens, greedy. The server runs as a real subprocess on loopback; time to first
token is measured by the client (first streamed event). Prints p50/p99 TTFT and total tokens/s for both modes and
the batching speed-up (continuous batching decodes the 8 requests in one forward per step).

    .venv/bin/python benchmarks/bench_serve.py                         # the tiny preset, random weights
    .venv/bin/python benchmarks/bench_serve.py --model runs/demo/final  # the demo model (`make demo`)

Without --model, a tiny-preset model with random weights and a BPE tokenizer trained on this package's source is
built in a temporary folder (the numbers measure the serving path, not the model's quality).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder (default: a tiny random one)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    return p.parse_args()


def tiny_checkpoint(out: Path) -> Path:
    import torch

    from dscoder.models.hf import build_model, save_pretrained
    from dscoder.models.presets import get_preset
    from dscoder.tokenizer.bpe import train_tokenizer
    src = ROOT / "src" / "dscoder"
    texts = [p.read_text() for p in sorted(src.rglob("*.py"))]
    tok = train_tokenizer(texts, vocab_size=2048, out_dir=out)
    torch.manual_seed(0)
    save_pretrained(build_model(get_preset("tiny", vocab_size=len(tok), max_position_embeddings=2048)), out)
    return out


def fim_prompts(model: Path, n: int, tokens: int) -> list[tuple[str, str]]:
    """n (prefix, suffix) pairs cut from this package's source, each about `tokens` tokens once encoded."""
    from dscoder.infer.text import infill_ids
    from dscoder.tokenizer.bpe import load_tokenizer
    tok = load_tokenizer(str(model))
    code = "".join(p.read_text() for p in sorted((ROOT / "src" / "dscoder").rglob("*.py")))
    out, at = [], 0
    for _ in range(n):
        chars = 4 * tokens
        while True:
            text = code[at:at + chars]
            cut = len(text) * 3 // 4
            size = len(infill_ids(tok, text[:cut], text[cut:]))
            if abs(size - tokens) <= 8:
                break
            chars = max(64, int(chars * tokens / size))
        out.append((text[:cut], text[cut:]))
        at += chars
    return out


def one(url: str, name: str, prefix: str, suffix: str, new: int) -> tuple[float, float, int]:
    """(time to first streamed event, total time, completion tokens) of one streamed FIM request."""
    body = {"model": name, "prompt": prefix, "suffix": suffix, "max_tokens": new, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, used = None, 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if line.startswith(b"data: {"):
                first = first or time.perf_counter() - t0
                event = json.loads(line[6:])
                if event.get("usage"):
                    used = event["usage"]["completion_tokens"]
    return first, time.perf_counter() - t0, used


def run_mode(url: str, name: str, prompts, new: int, concurrent: bool) -> dict:
    results: list = [None] * len(prompts)

    def go(i: int) -> None:
        results[i] = one(url, name, *prompts[i], new)
    t0 = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(len(prompts)):
            go(i)
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    tokens = sum(r[2] for r in results)
    return {"p50_ttft_ms": 1000 * statistics.median(ttft), "p99_ttft_ms": 1000 * ttft[min(len(ttft) - 1,
            int(0.99 * len(ttft)))], "tokens": tokens, "tokens_per_s": tokens / wall, "wall_s": wall}


def main() -> None:
    args = parse()
    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    model = Path(args.model) if args.model else tiny_checkpoint(Path(tmp) / "tiny")
    prompts = fim_prompts(model, args.clients, args.prompt_tokens)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    server = subprocess.Popen([sys.executable, "-m", "dscoder.cli", "serve", "--model", str(model), "--port",
                               str(port), "--device", "cpu", "--max-batch", str(args.clients), "--max-model-len",
                               str(args.prompt_tokens + args.new + 64)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if urllib.request.urlopen(url + "/health", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        name = json.loads(urllib.request.urlopen(url + "/v1/models").read())["data"][0]["id"]
        one(url, name, *prompts[0], 4)                                      # warm-up
        seq = run_mode(url, name, prompts, args.new, concurrent=False)
        par = run_mode(url, name, prompts, args.new, concurrent=True)
    finally:
        server.terminate()
        server.wait()
    print(f"{args.clients} FIM requests, ~{args.prompt_tokens}-token prompts, {args.new} new tokens, greedy, CPU "
          f"({args.threads} torch thread(s)), model {model.name}")
    for label, r in [("one at a time", seq), (f"{args.clients} concurrent", par)]:
        print(f"  {label:>14}: p50 TTFT {r['p50_ttft_ms']:7.1f} ms  p99 TTFT {r['p99_ttft_ms']:7.1f} ms  "
              f"{r['tokens']} tokens in {r['wall_s']:.2f} s = {r['tokens_per_s']:.1f} tokens/s")
    print(f"  batching speed-up (total tokens/s): {par['tokens_per_s'] / seq['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
