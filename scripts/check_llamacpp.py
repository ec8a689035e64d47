"""Run `dscoder export gguf` files through llama.cpp and compare with dscoder on the same checkpoint.

    .venv/bin/python scripts/check_llamacpp.py [--model DIR] [--llama-python /work/venvs/llamacpp/bin/python]

llama.cpp comes from llama-cpp-python, which compiles it from source (several minutes), so it lives in its own venv,
never in dscoder's:

    python3 -m venv /work/venvs/llamacpp
    /work/venvs/llamacpp/bin/pip install --no-binary llama-cpp-python "llama-cpp-python[server]==0.3.36"

Checked for a v1 model (GGUF architecture `llama`: `--model`, default runs/demo/final when `make demo` has run,
else a random tiny-preset model) and a DeepSeek-V2 model (`deepseek2`: a random tiny-moe model with MLA, 8 routed
experts + 1 shared, a leading dense layer and YaRN), each exported as F32 and as Q8_0, llama.cpp running on
1 thread with an F32 KV cache:
* tokens: llama.cpp's tokenizer (from the GGUF: vocab, merges, pre-tokenizer type) gives dscoder's ids for the
  prompt, the FIM prefix and the FIM suffix;
* logits over the code prompt: F32 max |difference| <= F32_ATOL + F32_RTOL x max |logit|; Q8_0 against dscoder
  running the very weights the Q8_0 file stores (`q8_rounded`; what is left is llama.cpp rounding activations to
  8 bits for its Q8_0 dot products): at Q8_WITHIN of the positions every logit within Q8_TOL x the standard
  deviation of dscoder's fp32 logits. Q8_0 against fp32, and the weight rounding's own effect, are printed;
* greedy: N new tokens from llama.cpp's greedy sampler equal dscoder's Engine (F32; Q8_0 is reported, not
  required, since its weights differ);
* infill: llama-server's /infill prompt (BOS per the file's add-BOS flag, then FIM prefix / suffix / middle ids as
  llama.cpp reads them from the file around its own tokens of the prefix and suffix; PSM) equals dscoder's
  `infill_ids`, and greedy decoding from it until llama.cpp's end-of-generation gives the middle's token ids and
  text that `dscoder infill` gives (F32).
The llama.cpp side runs in a subprocess of the llama.cpp venv's Python (this file, `--worker JOB`), which never
imports dscoder or torch. Exit status 1 if any check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
F32_ATOL, F32_RTOL = 1e-4, 1e-4     # fp32: different summation orders only
Q8_TOL, Q8_WITHIN = 0.1, 0.95       # Q8_0 (8-bit weights in blocks of 32; llama.cpp also rounds activations to 8 bits)
NEW = 32


# --------------------------------------------------------------------------- llama.cpp side (its own venv)
def worker(job_file: str) -> None:
    import numpy as np
    import llama_cpp.llama_cpp as C
    from llama_cpp import Llama

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _pair import no_extra_buffers

    no_extra_buffers()
    job = json.loads(Path(job_file).read_text())
    llm = Llama(model_path=job["gguf"], n_ctx=job["n_ctx"], n_batch=job["n_ctx"], n_threads=1,
                n_threads_batch=1, logits_all=True, type_k=0, type_v=0, seed=0, verbose=False)  # 0 = GGML_TYPE_F32
    res = {"tokens": [llm.tokenize(t.encode(), add_bos=False, special=False) for t in job["texts"]]}
    ids = job["prompt"]
    llm.reset()
    llm.eval(ids)
    np.save(job["logits_out"], np.asarray(llm.scores[:len(ids)], dtype=np.float32))
    greedy = []
    for t in llm.generate(ids, temp=0.0, reset=True):
        greedy.append(int(t))
        if len(greedy) == job["new"]:
            break
    res["greedy"] = greedy
    # llama-server's /infill prompt (format_infill, PSM): [BOS] FIM_PRE prefix FIM_SUF suffix FIM_MID, the ids being
    # the FIM token ids llama.cpp read from the file. (llama-cpp-python 0.3.36's own `suffix` path writes token 0
    # for all three sentinels -- "TODO: Fix" in Llama._create_completion -- so it is not used.)
    model = llm._model
    fim = [model.token_prefix(), model.token_suffix(), model.token_middle()]
    ids = ([llm.token_bos()] if model.add_bos_token() else []) + [fim[0]] + \
        llm.tokenize(job["prefix"].encode(), add_bos=False, special=False) + [fim[1]] + \
        llm.tokenize(job["suffix"].encode(), add_bos=False, special=False) + [fim[2]]
    middle = []
    llm.reset()
    for t in llm.generate(ids, temp=0.0, reset=True):   # greedy until llama.cpp's end-of-generation tokens
        if C.llama_vocab_is_eog(model.vocab, t) or len(middle) == job["new"]:
            break
        middle.append(int(t))
    res["infill_ids"] = middle
    res["infill"] = llm.detokenize(middle).decode("utf-8", errors="replace")
    res["infill_prompt"] = ids
    res["special"] = {"fim": fim, "bos": llm.token_bos(), "eos": llm.token_eos(), "eot": model.token_eot(),
                      "add_bos": model.add_bos_token()}
    print(json.dumps(res))


def run_llama(python: str, gguf: Path, job: dict, work: Path):
    import numpy as np

    job = dict(job, gguf=str(gguf), logits_out=str(work / "logits.npy"))
    (work / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([python, __file__, "--worker", str(work / "job.json")], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        sys.exit(f"error: llama.cpp failed on {gguf.name}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(work / "logits.npy")


# --------------------------------------------------------------------------- dscoder side
def tiny_models(out: Path, tokenizer_dir: Path | None) -> tuple[Path, Path]:
    """(v1, V2) random checkpoints sharing one tokenizer: `tokenizer_dir`'s, else a BPE trained on this package."""
    import shutil

    import torch

    from dscoder.models.hf import build_model, save_pretrained
    from dscoder.models.presets import get_preset
    from dscoder.tokenizer.bpe import load_tokenizer, train_tokenizer

    tok_dir = out / "tok"
    if tokenizer_dir is None:
        texts = [p.read_text() for p in sorted((ROOT / "src" / "dscoder").rglob("*.py"))]
        train_tokenizer(texts, vocab_size=2048, out_dir=tok_dir)
    else:
        tok_dir.mkdir(parents=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tokenizer_dir / name).is_file():
                shutil.copy(tokenizer_dir / name, tok_dir / name)
    vocab = len(load_tokenizer(str(tok_dir)))
    made = []
    for name, preset, extra in [("v1", "tiny", dict(rope_scaling_factor=4.0)), ("v2", "tiny-moe", {})]:
        torch.manual_seed(0)
        shutil.copytree(tok_dir, out / name)
        save_pretrained(build_model(get_preset(preset, vocab_size=vocab, **extra)), out / name)
        made.append(out / name)
    return made[0], made[1]


def texts() -> tuple[str, str, str]:
    """(code prompt, FIM prefix, FIM suffix), cut from this package's source."""
    src = (ROOT / "src" / "dscoder" / "infer" / "sampling.py").read_text()
    body = (ROOT / "src" / "dscoder" / "data" / "filters.py").read_text()
    return src[:1200], body[:700], body[760:1100]


def q8_rounded(model):
    """A copy of `model` holding exactly the weights the Q8_0 file stores: each matrix through gguf's Q8_0 round
    trip in the layout the export quantises (blocks of 32 along a row; kv_b's key half transposed, as attn_k_b;
    rows not a multiple of 32 in F16; norms and the MoE router in F32)."""
    import copy

    import gguf
    import numpy as np
    import torch

    Q = gguf.GGMLQuantizationType

    def round_trip(a):
        try:
            return gguf.quants.dequantize(gguf.quants.quantize(a, Q.Q8_0), Q.Q8_0)
        except gguf.QuantError:
            return a.astype(np.float16).astype(np.float32)
    m, cfg = copy.deepcopy(model), model.config
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim < 2 or name.endswith("mlp.gate.weight"):
                continue
            w = p.detach().float().numpy()
            if name.endswith("kv_b_proj.weight"):
                dn = cfg.qk_nope_head_dim
                kv = w.reshape(cfg.num_attention_heads, dn + cfg.v_head_dim, w.shape[-1]).copy()
                kv[:, :dn] = round_trip(np.ascontiguousarray(kv[:, :dn].transpose(0, 2, 1))).transpose(0, 2, 1)
                kv[:, dn:] = round_trip(np.ascontiguousarray(kv[:, dn:]))
                w = kv
            else:
                w = round_trip(w)
            p.copy_(torch.from_numpy(np.ascontiguousarray(w).reshape(p.shape)))
    return m


def ours(model_dir: Path, prompt: str, prefix: str, suffix: str) -> dict:
    import torch

    import dscoder
    from dscoder.infer.engine import Engine
    from dscoder.infer.text import completion_ids, encode, infill_ids, stop_ids

    torch.set_num_threads(1)
    tok = dscoder.load_tokenizer(str(model_dir))
    model = dscoder.load_model(str(model_dir), dtype=torch.float32)
    ids = completion_ids(tok, prompt)
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))[0].float().numpy()
        logits_q8 = q8_rounded(model)(torch.tensor([ids]))[0].float().numpy()
    engine = Engine(model)
    greedy = engine.generate([ids], NEW)[0].tokens
    fim = infill_ids(tok, prefix, suffix)
    middle = engine.generate([fim], NEW, stop_ids=stop_ids(tok, "fim"))[0].tokens     # what `dscoder infill` decodes
    with torch.inference_mode():   # the greedy path's smallest top-1 / top-2 logit gap: how close a tie came
        z = model(torch.tensor([ids + greedy[:-1]]))[0, len(ids) - 1:]
        top2 = z.topk(2).values
        gap = (top2[:, 0] - top2[:, 1]).min().item()
    cli = subprocess.run([sys.executable, "-m", "dscoder.cli", "infill", "--model", str(model_dir), "--prefix",
                          prefix, "--suffix", suffix, "--max-new-tokens", str(NEW), "--device", "cpu"],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if cli.returncode != 0:
        sys.exit(f"error: dscoder infill failed:\n{cli.stderr[-2000:]}")
    return {"prompt": ids, "infill_prompt": fim, "infill_ids": middle,
            "tokens": [encode(tok, t) for t in (prompt, prefix, suffix)], "logits": logits, "logits_q8": logits_q8, "greedy": greedy,
            "gap": gap, "infill": cli.stdout, "vocab": model.config.vocab_size}


# --------------------------------------------------------------------------- compare
def check(label: str, ok: bool, detail: str, failures: list[str]) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {label}: {detail}")
    if not ok:
        failures.append(label)


def check_model(name: str, model_dir: Path, python: str, work: Path, failures: list[str]) -> None:
    import numpy as np

    prompt, prefix, suffix = texts()
    mine = ours(model_dir, prompt, prefix, suffix)
    cfg = json.loads((model_dir / "config.json").read_text())
    print(f"\n== {name}: {model_dir} (model_type {cfg['model_type']}, vocab {mine['vocab']}, "
          f"{cfg['num_hidden_layers']} layers); prompt {len(mine['prompt'])} tokens, {NEW} new")
    job = {"texts": [prompt, prefix, suffix], "prompt": mine["prompt"], "prefix": prefix, "suffix": suffix,
           "new": NEW, "n_ctx": 2048}
    for kind in ("f32", "q8_0"):
        gguf = work / f"{name}-{kind}.gguf"
        exp = subprocess.run([sys.executable, "-m", "dscoder.cli", "export", "gguf", "--model", str(model_dir),
                              "--out", str(gguf), "--type", kind], capture_output=True, text=True)
        if exp.returncode != 0:
            sys.exit(f"error: export failed:\n{exp.stderr[-2000:]}")
        print(f" {exp.stdout.strip()}")
        d = work / f"{name}-{kind}"
        d.mkdir()
        got, logits = run_llama(python, gguf, job, d)
        ref = mine["logits"]
        if kind == "f32":
            same = got["tokens"] == mine["tokens"]
            check("tokenizer", same, "prompt, prefix and suffix ids equal" if same else
                  f"llama.cpp {[t[:12] for t in got['tokens']]} vs dscoder {[t[:12] for t in mine['tokens']]}",
                  failures)
        diff = np.abs(logits - ref)
        top1 = float((logits.argmax(-1) == ref.argmax(-1)).mean())
        if kind == "f32":
            bound = F32_ATOL + F32_RTOL * np.abs(ref).max()
            check("F32 logits", diff.max() <= bound, f"max |diff| {diff.max():.2e} (bound {bound:.2e}) over "
                  f"{ref.shape[0]}x{ref.shape[1]}, max |logit| {np.abs(ref).max():.2f}, top-1 agree {top1:.1%}",
                  failures)
            n_same = sum(a == b for a, b in zip(got["greedy"], mine["greedy"]))
            check("F32 greedy", got["greedy"] == mine["greedy"], f"{n_same}/{NEW} tokens equal (dscoder's "
                  f"smallest top-1/top-2 logit gap on the path {mine['gap']:.2e})", failures)
            same = got["infill_prompt"] == mine["infill_prompt"]
            check("FIM prompt", same, f"llama.cpp's FIM ids {got['special']['fim']}, BOS {got['special']['bos']} "
                  f"(add {got['special']['add_bos']}), EOS {got['special']['eos']}, EOT {got['special']['eot']}: "
                  f"infill prompt ({len(got['infill_prompt'])} tokens) "
                  f"{'equals' if same else 'differs from'} dscoder's", failures)
            middle = got["infill"]
            same = got["infill_ids"] == mine["infill_ids"] and mine["infill"] in (middle, middle + "\n")
            check("F32 infill", same, f"llama.cpp's middle ({len(got['infill_ids'])} tokens, {len(middle)} chars) "
                  f"{'equals' if same else 'differs from'} `dscoder infill`'s ({len(mine['infill_ids'])} tokens): "
                  f"{middle[:48]!r}" + ("" if same else f" vs {mine['infill'][:48]!r}"), failures)
        else:
            bound = Q8_TOL * ref.std()

            def spread(a, b) -> str:
                d = np.abs(a - b)
                return (f"{(d.max(-1) <= bound).mean():.1%} of positions within {bound:.3f}, worst {d.max():.3f}, "
                        f"mean {d.mean():.4f}, top-1 agree {(a.argmax(-1) == b.argmax(-1)).mean():.1%}")
            within = float((np.abs(logits - mine["logits_q8"]).max(-1) <= bound).mean())
            check("Q8_0 logits", within >= Q8_WITHIN, f"llama.cpp vs dscoder on the same Q8_0-rounded weights: "
                  f"{spread(logits, mine['logits_q8'])} (bound {Q8_TOL} x std of the logits, at >= "
                  f"{Q8_WITHIN:.0%} of positions)", failures)
            print(f"  [info] Q8_0 vs fp32: llama.cpp Q8_0 vs dscoder fp32: {spread(logits, ref)}; the weight rounding "
                  f"alone (dscoder on Q8_0-rounded weights vs fp32): {spread(mine['logits_q8'], ref)}")
            n_same = sum(a == b for a, b in zip(got["greedy"], mine["greedy"]))
            print(f"  [info] Q8_0 greedy: {n_same}/{NEW} tokens equal to dscoder fp32's")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a v1 checkpoint folder (default: runs/demo/final if present)")
    p.add_argument("--llama-python", default=os.environ.get("LLAMA_CPP_PYTHON", "/work/venvs/llamacpp/bin/python"),
                   help="the Python of a venv with llama-cpp-python (env LLAMA_CPP_PYTHON)")
    args = p.parse_args()
    if not Path(args.llama_python).is_file():
        sys.exit(f"error: --llama-python {args.llama_python!r} does not exist (see this script's docstring)")
    ver = subprocess.run([args.llama_python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                         capture_output=True, text=True)
    if ver.returncode != 0:
        sys.exit(f"error: {args.llama_python} cannot import llama_cpp:\n{ver.stderr[-1000:]}")
    if args.model and not (Path(args.model) / "config.json").is_file():
        print(f"error: --model {args.model!r} is not a checkpoint folder (no config.json)", file=sys.stderr)
        return 2
    demo = ROOT / "runs" / "demo" / "final"
    v1 = Path(args.model) if args.model else demo if (demo / "config.json").is_file() else None
    print(f"llama-cpp-python {ver.stdout.strip()} ({args.llama_python}); 1 thread, F32 KV cache")
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="check-llamacpp-") as tmp:
        work = Path(tmp)
        rand_v1, rand_v2 = tiny_models(work / "models", v1)
        check_model("v1", v1 or rand_v1, args.llama_python, work, failures)
        check_model("v2", rand_v2, args.llama_python, work, failures)
    print(f"\n{'all checks passed' if not failures else 'FAILED: ' + ', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
