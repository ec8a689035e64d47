"""Local decode speed, one table: transformers fp32 greedy, dscoder fp32, dscoder int8, dscoder int8 + n-gram
speculation, and llama.cpp F32 / Q8_0 on the same weights exported with `dscoder export gguf`; same prompts, same
threads, batch 1, every new token forced (no EOS stop).

Two prompts: "code" (a plain completion) and "edit" (a file, then the instruction to write it again with one
change, then the file's first lines: the continuation is mostly in the prompt, where prompt-lookup drafts pay).

    .venv/bin/python benchmarks/bench_local_inference.py                  # random weights, bench_decode's shape
    .venv/bin/python benchmarks/bench_local_inference.py --model DIR      # a trained checkpoint + its tokenizer

With random weights the prompts are token ids and the model does not copy the file, so the n-gram row only
shows the cost of drafting and verifying; `--model` with a trained checkpoint gives the representative figures.
Per row: tokens/s (best of --repeats, prefill included), forward passes per new token, how many greedy tokens
equal transformers' (position by position), and the fraction of the memory roofline: bytes one decode pass reads (the Linear weights in
their stored dtype, norms, one embedding row, the mean KV cache) x passes / seconds, against the best 1 GB read
measured in the same run (a matrix-vector product over a 1 GB matrix: the access pattern of decode; `x.sum()`
reads slower than that on this machine, so it would overstate every fraction).

int8 quality, printed once: fp32 against int8 logits on held-out text -- with `--model`, windows of this
repository's own source, which the demo model (trained on the Python standard library) never saw -- as the mean
next-token loss of each and the share of positions where both pick the same top-1 token; the targets are a loss
within 1% of fp32 and >= 98% agreement. Random weights give near-uniform logits, where that check means little.

Times are wall clock ("tokens/s") and this process's (or llama.cpp's) CPU time ("CPU tokens/s"): on a shared
machine the wall clock also counts the time other processes held the core, CPU time does not (memory contention
still slows both). The roofline column uses CPU time, for the rows and the bandwidth probe alike.

llama.cpp runs in its own venv (llama-cpp-python compiles it from source; dscoder's venv never gets it), in a
subprocess of that venv's Python: `--llama-python` (default $LLAMA_CPP_PYTHON, else /work/venvs/llamacpp/bin/python
when it exists; `none` skips the rows). It loads each GGUF with its default settings but the thread count (F16 KV
cache) and extra buffer types off (llama.cpp's --no-repack: on CPUs with AMX, 0.3.36's AMX Q8_0 matmul segfaults
on batches of more than one token; see scripts/check_llamacpp.py), and times prompt + new tokens from its greedy
sampler like the other rows. Its roofline bytes are the GGUF's tensors (one embedding row) plus the F16 K/V cache.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from _pair import add_shape_args, decode_bytes, llama_pair, llama_preamble  # benchmarks/ is on sys.path when a script runs

EDIT_INSTRUCTION = "\n# The same module with `total` renamed to `result`:\n"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder with tokenizer (default: random weights)")
    add_shape_args(p, hidden=1024, layers=8, heads=8, kv_heads=8, intermediate=2816, vocab=32256)
    p.add_argument("--new", type=int, default=128, help="new tokens per run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per row (best is reported)")
    p.add_argument("--llama-python", default=os.environ.get("LLAMA_CPP_PYTHON", _LLAMA_VENV_PY),
                   help="Python of a venv with llama-cpp-python for the llama.cpp rows ('none': skip them)")
    return p.parse_args()


def prompts(tokenizer, vocab: int) -> dict[str, list[int]]:
    """{"code": ids, "edit": ids}. With a tokenizer: source text from this repository; without: random ids, the
    edit prompt holding a 200-token "file" twice (its copy cut after 30 tokens)."""
    if tokenizer is not None:
        from dscoder.infer.text import completion_ids
        src = (Path(__file__).resolve().parents[1] / "src" / "dscoder" / "infer" / "sampling.py").read_text()
        file = src[:1500].replace("result", "total")
        return {"code": completion_ids(tokenizer, src[:600]),
                "edit": completion_ids(tokenizer, file + EDIT_INSTRUCTION + file.replace("total", "result")[:200])}
    g = torch.Generator().manual_seed(0)
    file = torch.randint(0, vocab, (200,), generator=g).tolist()
    return {"code": torch.randint(0, vocab, (128,), generator=g).tolist(), "edit": file + [13, 13] + file[:30]}


def read_bandwidth(n_bytes: int = 2**30) -> float:
    """Bytes per CPU second of the best of three matrix-vector products over a 1 GB fp32 matrix (1024 columns):
    every byte read once, as a decode step reads its weights."""
    w = torch.ones(n_bytes // 4096, 1024)
    v = torch.ones(1024)
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        torch.mv(w, v)
        best = min(best, time.process_time() - t0)
    return n_bytes / best


def heldout(tokenizer, vocab: int, windows: int = 8, length: int = 256) -> torch.Tensor:
    """(windows, length) token ids: this repository's source files (with a tokenizer), else random ids."""
    if tokenizer is None:
        return torch.randint(0, vocab, (windows, length), generator=torch.Generator().manual_seed(1))
    root = Path(__file__).resolve().parents[1] / "src" / "dscoder"
    text = "\n".join(f.read_text() for f in sorted(root.rglob("*.py")))[:16 * windows * length]  # >= 4 chars/token
    ids = tokenizer.encode(text, add_special_tokens=False)[:windows * length]
    return torch.tensor(ids).view(-1, length)


def int8_quality(ref, q, x: torch.Tensor) -> str:
    """fp32 vs int8 on held-out windows x (W, T): next-token loss of each, top-1 agreement, against the targets."""
    with torch.inference_mode():
        a, b = ref(x)[:, :-1].flatten(0, 1), q(x)[:, :-1].flatten(0, 1)  # (W * (T-1), V)
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    ce = [torch.nn.functional.cross_entropy(z, x[:, 1:].flatten()).item() for z in (a, b)]
    rel = (ce[1] - ce[0]) / ce[0]
    ok = abs(rel) <= 0.01 and agree >= 0.98
    return (f"held-out loss fp32 {ce[0]:.4f}, int8 {ce[1]:.4f} ({rel:+.2%}; target within 1%); top-1 agreement "
            f"{agree:.1%} over {a.shape[0]} positions (target >= 98%): {'meets both' if ok else 'MISSES'}")


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from dscoder.infer.engine import Engine
    from dscoder.models.quant import quantize_int8

    tokenizer = None
    if args.model:
        import dscoder
        from transformers import LlamaForCausalLM
        ours, tokenizer = dscoder.load_model(args.model), dscoder.load_tokenizer(args.model)
        hf = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    else:
        ours, hf = llama_pair(args)
    ours, hf = ours.eval(), hf.eval()
    q8 = quantize_int8(copy.deepcopy(ours))
    calls = {"n": 0}
    for m in (ours, q8):
        m.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    engines = {"dscoder fp32": Engine(ours), "dscoder fp32 + ngram": Engine(ours, speculate="ngram"),
               "dscoder int8": Engine(q8), "dscoder int8 + ngram": Engine(q8, speculate="ngram")}
    llama, llama_why = llama_cpp_rows(args, ours, prompts(tokenizer, ours.config.vocab_size))
    bw = read_bandwidth()
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"batch 1, {args.new} new tokens (forced), {args.threads} thread(s), {n_params / 1e6:.0f}M params "
          f"({'checkpoint ' + args.model if args.model else 'random weights'}); read bandwidth {bw / 1e9:.2f} GB/s")
    for pname, ids in prompts(tokenizer, ours.config.vocab_size).items():
        x = torch.tensor([ids])

        @torch.inference_mode()
        def run_hf():
            out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new,
                              min_new_tokens=args.new, do_sample=False, pad_token_id=0, eos_token_id=None)
            return out[0, len(ids):].tolist()

        rows = {"transformers fp32 greedy": (run_hf, ours)}
        for name, eng in engines.items():
            rows[name] = ((lambda e=eng: e.generate([ids], args.new)[0].tokens), eng.model)
        best, cpu, outs, passes = {}, {}, {}, {}
        for name, (fn, _) in rows.items():           # one untimed warm-up each
            outs[name] = fn()
        for _ in range(args.repeats):                # interleaved, so drifting load hits every row alike
            for name, (fn, _) in rows.items():
                calls["n"] = 0
                t0, c0 = time.perf_counter(), time.process_time()
                outs[name] = fn()
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
                cpu[name] = min(cpu.get(name, float("inf")), time.process_time() - c0)
                passes[name] = calls["n"] or args.new    # transformers' forwards are not hooked: one per token
        ref = outs["transformers fp32 greedy"]
        print(f"\n{pname} prompt ({len(ids)} tokens)")
        print("| engine | tokens/s | CPU tokens/s | passes/token | same tokens as transformers | roofline |")
        print("|---|---|---|---|---|---|")
        for name, (_, model) in rows.items():
            t, c = best[name], cpu[name]
            roof = sum(decode_bytes(model, len(ids), args.new)) * passes[name] / c / bw
            same = sum(a == b for a, b in zip(outs[name], ref))
            print(f"| {name} | {args.new / t:.1f} | {args.new / c:.1f} | {passes[name] / args.new:.2f} | "
                  f"{same}/{args.new} | {roof:.0%} |")
        for kind, (res, n_bytes) in llama.items():
            r = res[pname]
            same = sum(a == b for a, b in zip(r["tokens"], ref))
            roof = (n_bytes + _llama_kv_bytes(ours.config, len(ids), args.new)) * args.new / r["cpu_seconds"] / bw
            print(f"| llama.cpp {kind.upper()} | {args.new / r['seconds']:.1f} | {args.new / r['cpu_seconds']:.1f} | "
                  f"1.00 | {same}/{args.new} | {roof:.0%} |")
        if not llama:
            print(f"| llama.cpp F32 / Q8_0 | not run: {llama_why} | | | |")
        spec, plain = outs["dscoder int8 + ngram"], outs["dscoder int8"]
        first = next((i for i, (a, b) in enumerate(zip(spec, plain)) if a != b), None)
        print(f"int8 + ngram vs int8 greedy: {'identical' if first is None else f'first differs at token {first}'}")
    print(f"\nint8 quality: {int8_quality(ours, q8, heldout(tokenizer, ours.config.vocab_size))}")


_LLAMA_VENV_PY = "/work/venvs/llamacpp/bin/python" if Path("/work/venvs/llamacpp/bin/python").is_file() else "none"

# run by the llama.cpp venv's Python: greedy decode of every prompt, first run untimed, best of the others
_LLAMA_WORKER = llama_preamble() + r"""
import json, sys, time
from llama_cpp import Llama
job = json.loads(sys.argv[1])
llm = Llama(model_path=job["gguf"], n_ctx=job["n_ctx"], n_threads=job["threads"], n_threads_batch=job["threads"],
            verbose=False)
out = {}
for name, ids in job["prompts"].items():
    best = cpu = float("inf")
    for r in range(job["repeats"] + 1):
        llm.reset()                  # no prompt reuse between runs
        t0, c0 = time.perf_counter(), time.process_time()
        got = []
        for t in llm.generate(ids, temp=0.0, reset=True):
            got.append(int(t))
            if len(got) == job["new"]:
                break
        if r:
            best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    out[name] = {"seconds": best, "cpu_seconds": cpu, "tokens": got}
print(json.dumps(out))
"""


def llama_cpp_rows(args, model, prompt_ids: dict[str, list[int]]) -> tuple[dict, str]:
    """({"f32": (results, decode weight bytes), "q8_0": ...}, why-not): the model exported to GGUF (its folder with
    --model; else saved with a small BPE tokenizer, since the GGUF embeds one) and timed in llama.cpp."""
    if args.llama_python == "none":
        return {}, "--llama-python none"
    if not Path(args.llama_python).is_file():
        return {}, f"{args.llama_python} does not exist"
    import gguf

    from dscoder.export.gguf import export_gguf
    from dscoder.models.hf import save_pretrained
    from dscoder.tokenizer.bpe import train_tokenizer
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-llamacpp-") as tmp:
        folder = Path(args.model) if args.model else Path(tmp) / "ckpt"
        if not args.model:
            src = Path(__file__).resolve().parents[1] / "src" / "dscoder"
            train_tokenizer([p.read_text() for p in sorted(src.rglob("*.py"))], 512, folder)
            save_pretrained(model, folder)
        for kind in ("f32", "q8_0"):
            path = export_gguf(folder, Path(tmp) / f"m-{kind}.gguf", kind)
            tensors = gguf.GGUFReader(path).tensors
            n_bytes = sum(int(t.n_bytes) for t in tensors if t.name != "token_embd.weight")
            emb = next(t for t in tensors if t.name == "token_embd.weight")
            n_bytes += int(emb.n_bytes) // int(emb.shape[-1])       # one row (GGUF shapes are (columns, rows))
            job = {"gguf": str(path), "prompts": prompt_ids, "new": args.new, "repeats": args.repeats,
                   "threads": args.threads, "n_ctx": max(map(len, prompt_ids.values())) + args.new + 8}
            proc = subprocess.run([args.llama_python, "-c", _LLAMA_WORKER, json.dumps(job)], capture_output=True,
                                  text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
            if proc.returncode != 0:
                return {}, f"llama.cpp failed: {proc.stderr.strip().splitlines()[-1:]}"
            out[kind] = (json.loads(proc.stdout.strip().splitlines()[-1]), n_bytes)
    return out, ""


def _llama_kv_bytes(config, prompt: int, new: int) -> float:
    """Mean F16 K/V-cache bytes one decode step reads (llama.cpp's default cache type)."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 2 * (prompt + (new + 1) / 2)


if __name__ == "__main__":
    main()
