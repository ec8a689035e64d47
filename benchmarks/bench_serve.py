"""Serving: 8 concurrent clients against `dscoder serve` vs the same requests one at a time, and an editor's
keystrokes with and without prompt-prefix reuse.

1. Batching. Each request is a fill-in-the-middle completion (`/v1/completions` with `suffix`, streamed) whose PSM
   prompt is about 512 tokens, asking for 64 new tokens, greedy, with `cache_prompt: false` (no request reuses
   another's prompt). Prints p50/p99 TTFT and total tokens/s for both modes and the batching speed-up (continuous
   batching decodes the 8 requests in one forward per step).
2. Prefix reuse. One editor sends `/infill` on every keystroke: a prefix of about 512 tokens that grows by one typed
   character per request, the same short suffix, 8 new tokens, streamed. Prints p50 TTFT with `cache_prompt: true`
   (the kept prefix of the previous keystroke is reused) and `false` (every prompt prefilled in full), and the mean
   share of prompt tokens reused.

The server runs as a real subprocess on loopback; time to first token is measured by the client (first streamed
event). Beside wall time each mode reports the server process's CPU time (Linux /proc; on a shared machine the wall
clock also holds other processes' time) and how the scheduler thread spent it, from GET /metrics: CPU time in
prefill forwards, in decode forwards (steps, mean rows per step) and the rest of the process (HTTP, streaming,
tokenizing, scheduling; with --threads above 1 also the forwards' time on torch's other threads). `--repeat N` runs
both modes N times, alternating, and reports medians.
The last batching line is the most batching could give with the forwards this run measured: the concurrent run must
read all the prompts and then take at least `--new` decode steps of the full batch (the one-at-a-time wall time over
that sum).

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

from _pair import llama_preamble  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
_LLAMA_VENV_PY = "/work/venvs/llamacpp/bin/python" if Path("/work/venvs/llamacpp/bin/python").is_file() else "none"
# `python -m llama_cpp.server` with extra buffer types off (_pair.no_extra_buffers)
_LLAMA_SERVER = llama_preamble() + 'import runpy; runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)\n'


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder (default: a tiny random one)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    p.add_argument("--url", default=None, help="also send the load to this running OpenAI-compatible server (vLLM)")
    p.add_argument("--url-name", default=None, help="the model name at --url (default: its first /v1/models entry)")
    p.add_argument("--llama-python", default=os.environ.get("LLAMA_CPP_PYTHON", _LLAMA_VENV_PY),
                   help="Python of a venv with llama-cpp-python[server]: also load llama.cpp's server with the "
                        "same weights as GGUF F32 and Q8_0 ('none': skip)")
    p.add_argument("--keystrokes", type=int, default=16, help="requests of the prefix-reuse scenario, per mode")
    p.add_argument("--serve-args", default="", help="more `dscoder serve` flags, e.g. '--max-prefill-tokens 512'")
    p.add_argument("--repeat", type=positive, default=1, help="runs of each batching mode, alternating (medians shown)")
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


def streamed(url: str, route: str, body: dict) -> tuple[float, float, dict]:
    """(time to the first streamed event, total time, the last event) of one streamed request."""
    req = urllib.request.Request(url + route, json.dumps(body).encode(), {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, last = None, {}
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if line.startswith(b"data: {"):
                first = first or time.perf_counter() - t0
                last = json.loads(line[6:])
    return first, time.perf_counter() - t0, last


def one(url: str, name: str, prefix: str, suffix: str, new: int) -> tuple[float, float, int]:
    """(time to first streamed event, total time, completion tokens) of one streamed FIM request."""
    body = {"model": name, "prompt": prefix, "suffix": suffix, "max_tokens": new, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "cache_prompt": False}
    first, total, last = streamed(url, "/v1/completions", body)
    return first, total, last["usage"]["completion_tokens"]


def server_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of process `pid` (all its threads) from /proc; None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scheduler_counters(url: str) -> dict[str, float]:
    """The scheduler's CPU split from `dscoder serve`'s /metrics (empty for a server without them)."""
    try:
        raw = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    except OSError:
        return {}
    keys = {"dscoder_prefill_cpu_seconds_total": "prefill", "dscoder_decode_cpu_seconds_total": "decode",
            "dscoder_decode_steps_total": "steps", "dscoder_decode_rows_total": "rows"}
    return {keys[k]: float(v) for k, v in (line.rsplit(" ", 1) for line in raw.splitlines()
                                          if not line.startswith("#")) if k in keys}


def run_mode(url: str, name: str, prompts, new: int, concurrent: bool, send=None, pid: int | None = None) -> dict:
    results: list = [None] * len(prompts)
    cpu0, split0 = server_cpu(pid), scheduler_counters(url) if pid else {}

    def go(i: int) -> None:
        results[i] = (send or one)(url, name, *prompts[i], new)
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
    cpu1, split1 = server_cpu(pid), scheduler_counters(url) if pid else {}
    ttft = sorted(r[0] for r in results)
    tokens = sum(r[2] for r in results)
    out = {"p50_ttft_ms": 1000 * statistics.median(ttft), "p99_ttft_ms": 1000 * ttft[min(len(ttft) - 1,
           int(0.99 * len(ttft)))], "tokens": tokens, "tokens_per_s": tokens / wall, "wall_s": wall}
    if cpu0 is not None and cpu1 is not None:
        out["cpu_s"] = cpu1 - cpu0
    if split0 and split1:
        out.update({k: split1[k] - split0[k] for k in split1})
    return out


def median_run(runs: list[dict]) -> dict:
    """Per key, the median over runs."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0] if all(k in r for r in runs)}


def describe(label: str, r: dict) -> str:
    line = (f"  {label:>14}: p50 TTFT {r['p50_ttft_ms']:7.1f} ms  p99 TTFT {r['p99_ttft_ms']:7.1f} ms  "
            f"{r['tokens']:.0f} tokens in {r['wall_s']:.2f} s = {r['tokens_per_s']:.1f} tokens/s")
    if "cpu_s" in r:
        line += f"\n{'':18}server CPU {r['cpu_s']:.2f} s = {r['tokens'] / r['cpu_s']:.1f} tokens per CPU second"
        if "prefill" in r and r["steps"]:
            rest = r["cpu_s"] - r["prefill"] - r["decode"]
            line += (f": prefill forwards {r['prefill']:.2f} s, decode forwards {r['decode']:.2f} s "
                     f"({r['steps']:.0f} steps, {r['rows'] / r['steps']:.1f} rows/step, "
                     f"{1000 * r['decode'] / r['steps']:.2f} ms/step), rest {rest:.2f} s")
    return line


def editor(model: Path, tokens: int, keystrokes: int) -> tuple[str, str, str]:
    """(prefix of about `tokens` tokens, a suffix of a few lines, the text typed after the prefix)."""
    from dscoder.infer.text import encode
    from dscoder.tokenizer.bpe import load_tokenizer
    tok = load_tokenizer(str(model))
    code = (ROOT / "src" / "dscoder" / "infer" / "scheduler.py").read_text()
    cut = 4 * tokens
    while len(encode(tok, code[:cut])) > tokens:
        cut -= 16
    return code[:cut], code[cut + keystrokes:cut + keystrokes + 120], code[cut:cut + keystrokes]


def reuse_mode(url: str, prefix: str, suffix: str, typed: str, cache: bool) -> dict:
    """One editor typing `typed` after `prefix`: an /infill request per keystroke, one after another."""
    ttft, cached, evaluated = [], 0, 0
    for k in range(1, len(typed) + 1):
        body = {"input_prefix": prefix + typed[:k], "input_suffix": suffix, "n_predict": 8, "temperature": 0,
                "stream": True, "cache_prompt": cache}
        first, _, last = streamed(url, "/infill", body)
        ttft.append(first)
        cached += last["tokens_cached"]
        evaluated += last["tokens_evaluated"]
    return {"p50_ttft_ms": 1000 * statistics.median(ttft), "reused": cached / evaluated}


def psm_one(url: str, name: str, prompt: str, _suffix: None, new: int) -> tuple[float, float, int]:
    """`one` for servers without DeepSeek FIM through `suffix` (vLLM rejects the field; llama-cpp-python 0.3.36 writes
    token 0 for its FIM sentinels): the PSM prompt as text, sentinels included, which both servers' tokenizers map to
    the sentinel ids. Tokens: the streamed usage where the server sends it (vLLM); else `new` when the stream ends
    for length, and the streamed text chunks when it stops early (llama-cpp-python streams one chunk per token,
    less any held back as an incomplete UTF-8 sequence)."""
    body = {"model": name, "prompt": prompt, "max_tokens": new, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, used, chunks, finish = None, None, 0, None
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if line.startswith(b"data: {"):
                first = first or time.perf_counter() - t0
                event = json.loads(line[6:])
                if event.get("usage"):
                    used = event["usage"]["completion_tokens"]
                for c in event.get("choices") or []:
                    chunks += bool(c.get("text"))
                    finish = c.get("finish_reason") or finish
    return first, time.perf_counter() - t0, used if used is not None else new if finish == "length" else chunks


def others(args, model: Path, prompts) -> None:
    """The same requests, one at a time and concurrent, against vLLM (--url) and against llama.cpp's server
    (llama_cpp.server in the --llama-python venv, its defaults but the thread count and `--interrupt_requests false`:
    by default a new request cancels the running one) on `dscoder export gguf` files of the same weights."""
    from dscoder.tokenizer.special import FIM_BEGIN, FIM_END, FIM_HOLE
    psm = [(FIM_BEGIN + prefix + FIM_HOLE + suffix + FIM_END, None) for prefix, suffix in prompts]
    targets = [(f"vLLM ({args.url})", None)] if args.url else []
    if args.llama_python != "none":
        targets += [(f"llama.cpp server {kind.upper()}", kind) for kind in ("f32", "q8_0")]
    for label, kind in targets:
        server, url = None, args.url
        try:
            if kind:
                from dscoder.export.gguf import export_gguf
                gguf = export_gguf(model, Path(tempfile.mkdtemp(prefix="bench-serve-gguf-")) / f"{kind}.gguf", kind)
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                url = f"http://127.0.0.1:{port}"
                server = subprocess.Popen(
                    [args.llama_python, "-c", _LLAMA_SERVER, "--model", str(gguf), "--host", "127.0.0.1",
                     "--port", str(port), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                     "--n_ctx", str(args.prompt_tokens + args.new + 64), "--interrupt_requests", "false"],
                    env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while True:
                try:
                    models = json.loads(urllib.request.urlopen(url + "/v1/models", timeout=5).read())
                    break
                except OSError:
                    if server is not None and server.poll() is not None:
                        raise SystemExit(f"error: llama_cpp.server exited with status {server.returncode}")
                    time.sleep(0.2)
            name = (args.url_name if not kind else None) or models["data"][0]["id"]
            psm_one(url, name, *psm[0], 4)                                  # warm-up
            pid = server.pid if server is not None else None
            seq = run_mode(url, name, psm, args.new, concurrent=False, send=psm_one, pid=pid)
            par = run_mode(url, name, psm, args.new, concurrent=True, send=psm_one, pid=pid)
        finally:
            if server is not None:
                server.terminate()
                server.wait()
        print(f"{label}: the same {args.clients} requests, PSM prompt as text")
        for mode, r in [("one at a time", seq), (f"{args.clients} concurrent", par)]:
            print(describe(mode, r))


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
                               str(args.prompt_tokens + args.new + 64), *args.serve_args.split()], env=env)
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
        seqs, pars = [], []
        for _ in range(args.repeat):
            seqs.append(run_mode(url, name, prompts, args.new, concurrent=False, pid=server.pid))
            pars.append(run_mode(url, name, prompts, args.new, concurrent=True, pid=server.pid))
        prefix, suffix, typed = editor(model, args.prompt_tokens, args.keystrokes)
        reuse = reuse_mode(url, prefix, suffix, typed, cache=True)       # first: nothing of these prompts is kept
        full = reuse_mode(url, prefix, suffix, typed, cache=False)
    finally:
        server.terminate()
        server.wait()
    print(f"{args.clients} FIM requests, ~{args.prompt_tokens}-token prompts, {args.new} new tokens, greedy, CPU "
          f"({args.threads} torch thread(s)), model {model.name}"
          + (f", medians of {args.repeat} runs per mode" if args.repeat > 1 else ""))
    if args.repeat > 1:
        for k, (s_, p_) in enumerate(zip(seqs, pars)):
            cpu = (f", server CPU {s_['cpu_s']:.2f} / {p_['cpu_s']:.2f} s = "
                   f"{s_['cpu_s'] / p_['cpu_s']:.2f}x" if "cpu_s" in s_ and "cpu_s" in p_ else "")
            print(f"  run {k + 1}: {s_['tokens_per_s']:.1f} / {p_['tokens_per_s']:.1f} tokens/s = "
                  f"{p_['tokens_per_s'] / s_['tokens_per_s']:.2f}x{cpu}")
    seq, par = median_run(seqs), median_run(pars)
    for label, r in [("one at a time", seq), (f"{args.clients} concurrent", par)]:
        print(describe(label, r))
    speedups = [p_["tokens_per_s"] / s_["tokens_per_s"] for s_, p_ in zip(seqs, pars)]
    print(f"  batching speed-up (total tokens/s): {statistics.median(speedups):.2f}x"
          + (f" (runs: {', '.join(f'{x:.2f}' for x in speedups)})" if args.repeat > 1 else ""))
    if all("cpu_s" in r for r in seqs + pars):
        cpu = [s_["cpu_s"] / p_["cpu_s"] for s_, p_ in zip(seqs, pars)]
        print(f"  batching speed-up (server CPU time): {statistics.median(cpu):.2f}x")
    if par.get("steps"):
        # However well requests are packed, the concurrent run reads every prompt (its prefill forwards) and then
        # takes at least `new` decode steps, the last of them with every client in the batch
        step_ms = 1000 * par["decode"] / par["steps"]
        floor = par["prefill"] + args.new * step_ms / 1000
        print(f"  batching ceiling from these forward costs: {seq['wall_s']:.2f} s one at a time / "
              f"({par['prefill']:.2f} s reading the {args.clients} prompts + {args.new} steps x {step_ms:.2f} ms) = "
              f"{seq['wall_s'] / floor:.2f}x (forward time of the scheduler thread)")
    print(f"{args.keystrokes} /infill keystrokes, one after another, ~{args.prompt_tokens}-token prefix, 8 new tokens")
    print(f"  cache_prompt true:  p50 TTFT {reuse['p50_ttft_ms']:7.1f} ms  ({100 * reuse['reused']:.0f}% of prompt "
          f"tokens reused)")
    print(f"  cache_prompt false: p50 TTFT {full['p50_ttft_ms']:7.1f} ms  (all prefilled)")
    print(f"  prefix reuse speed-up (p50 TTFT): {full['p50_ttft_ms'] / reuse['p50_ttft_ms']:.2f}x")
    others(args, model, prompts)


if __name__ == "__main__":
    main()
