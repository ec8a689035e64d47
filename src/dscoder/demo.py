"""`make demo`: the whole recipe on a laptop CPU, on the running interpreter's standard library.

    python -m dscoder.demo --out runs/demo            (what `make demo` runs; under 20 minutes on 2 cores)

1. `dscoder data build` the stdlib: read, filter, dedup, syntax-screen, decontaminate against HumanEval,
   dependency-order (Algorithm 1) and near-dedup -> Parquet shards in OUT/data.
2. `dscoder tokenizer train` a byte-level BPE with DeepSeek's special tokens on those shards -> OUT/tokenizer.
3. `dscoder pretrain --preset tiny` with FIM (PSM, rate 0.5) -> OUT/metrics.jsonl, OUT/loss.png, OUT/final/.
4. Held-out loss before and after, one completion and one infill from OUT/final.
5. `dscoder data instruct` the same stdlib (functions and classes of up to 20 lines with docstrings, plus MBPP's
   train split when the benchmark files are at $DSCODER_BENCHMARKS or ../shared/benchmarks; decontaminated)
   -> OUT/instruct.jsonl.
6. A short `dscoder sft` of OUT/final with the v1 instruct template and packed rows -> OUT/sft/final, then one
   chat answer from it.

The same verbs scale up: on a GPU, `dscoder pretrain --preset deepseek-coder-1.3b ...` with real data.
Each step is skipped when its output is already complete, except training, which starts fresh each run.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

from .args import Parser, int_range, out_dir, positive_int

def _banner(text: str) -> None:
    print(f"\n=== {text} ===", file=sys.stderr, flush=True)


def build_corpus(out: Path, workers: int) -> Path:
    from .data import pipeline

    data = out / "data"
    stdlib = sysconfig.get_paths()["stdlib"]
    _banner(f"1/6 data: {stdlib} -> {data}")
    # the stdlib's import graph is one component of ~30 MB; cut it at file boundaries (order kept) so that
    # documents are short enough for FIM at a 512-token context and the held-out split has many documents
    pipeline.main([stdlib, "--out", str(data), "--workers", str(workers), "--max-sample-bytes", "16384"])
    return data


def train_tokenizer(out: Path, data: Path, vocab_size: int) -> Path:
    from .tokenizer import bpe

    tok = out / "tokenizer"
    _banner(f"2/6 tokenizer: byte-level BPE, {vocab_size} tokens -> {tok}")
    if (tok / "tokenizer.json").is_file() and (tok / "tokenizer_config.json").is_file():
        print(f"reusing {tok}", file=sys.stderr)
    else:
        bpe.main([str(data), "--out", str(tok), "--vocab-size", str(vocab_size),
                  "--max-bytes", "12000000"])
    return tok


def pretrain(out: Path, data: Path, tok: Path, steps: int, threads: int) -> dict:
    from .train import pretrain as pt

    _banner(f"3/6 pretrain: tiny preset, FIM 0.5 PSM, {steps} steps")
    for stale in ("checkpoints", "final", "metrics.jsonl", "loss.png", "summary.json"):
        p = out / stale
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    rc = pt.main(["--preset", "tiny", "--tokenizer", str(tok), str(data), "--out", str(out),
                  "--steps", str(steps), "--seq-len", "512", "--batch-size", "16", "--lr", "1e-3",
                  "--warmup", str(max(1, steps // 20)), "--schedule", "step", "--fim-rate", "0.5",
                  "--eval-every", str(max(1, steps // 4)), "--eval-batches", "6", "--heldout-every", "40",
                  "--save-every", str(max(1, steps // 2)), "--keep-last", "1", "--workers", str(threads),
                  "--seed", "0"])
    if rc:                                   # stopped by a signal (143): no summary, nothing more to show
        raise SystemExit(rc)
    return json.loads((out / "summary.json").read_text())


def show(out: Path) -> None:
    import dscoder
    from .infer.text import complete, infill

    _banner("4/6 use: completion and infilling with OUT/final")
    model = dscoder.load_model(out / "final")
    tok = dscoder.load_tokenizer(out / "final")
    engine = dscoder.Engine(model)
    print("(a 5M-parameter model after ~15 CPU-minutes: expect code-shaped text, not working code)")
    prompt = "class Stack:\n    def __init__(self):\n"
    text = complete(engine, tok, prompt, max_new_tokens=48)
    print("--- completion (greedy) ---")
    print(prompt + text)
    prefix = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        "
    suffix = "\n\n    def __repr__(self):\n        return f'Point({self.x}, {self.y})'\n"
    middle = infill(engine, tok, prefix, suffix, max_new_tokens=24, stop_strings=["\n"])
    print("--- single-line infill (greedy): <prefix>[middle]<suffix> ---")
    print(f"{prefix}[{middle}]{suffix}")


def _benchmarks() -> Path:
    """Where `dscoder data instruct` finds the benchmarks: $DSCODER_BENCHMARKS, ../shared/benchmarks beside the
    checkout, else the few rows under tests/fixtures/benchmarks (enough to decontaminate against, no MBPP train)."""
    root = Path(__file__).resolve().parents[2]
    for p in (os.environ.get("DSCODER_BENCHMARKS"), root.parent / "shared" / "benchmarks",
              root / "tests" / "fixtures" / "benchmarks"):
        if p and (Path(p) / "humaneval").is_dir():
            return Path(p)
    from .errors import UserError
    raise UserError("no benchmark files to decontaminate against: set DSCODER_BENCHMARKS")


def instruct(out: Path, steps: int, threads: int) -> None:
    """Steps 5-6: instruction pairs from the stdlib, a short SFT of OUT/final, one chat answer."""
    import dscoder
    from .data import instruct as di
    from .infer.text import chat
    from .train import sft

    pairs = out / "instruct.jsonl"
    _banner(f"5/6 instruction data: docstrings of the stdlib + MBPP train -> {pairs}")
    di.main([sysconfig.get_paths()["stdlib"], "--out", str(pairs), "--data", str(_benchmarks()),
             "--max-lines", "20"])
    _banner(f"6/6 sft: v1 instruct template, packed rows, {steps} steps -> {out / 'sft'}")
    shutil.rmtree(out / "sft", ignore_errors=True)
    sft.main(["--model", str(out / "final"), str(pairs), "--out", str(out / "sft"), "--template", "v1",
              "--steps", str(steps), "--seq-len", "256", "--batch-size", "8", "--lr", "1e-3", "--pack",
              "--workers", str(threads), "--seed", "0"])
    model_dir = out / "sft" / "final"
    engine, tok = dscoder.Engine(dscoder.load_model(model_dir)), dscoder.load_tokenizer(model_dir)
    question = "Write a Python function with the signature `def is_even(n):`.\n\nReturn True when n is even."
    print(f"--- chat (greedy, v1 template): {question!r} ---")
    print(chat(engine, tok, [{"role": "user", "content": question}], max_new_tokens=96))
    print(f"(same answer: echo ... | dscoder chat --model {model_dir})")


def main(argv: list[str] | None = None) -> int:
    """Train a tiny DeepSeek-Coder-style model with FIM on the standard library, then complete and infill; then
    instruction-tune it on pairs mined from the same code and ask it one question."""
    p = Parser("python -m dscoder.demo", __doc__)
    p.add_argument("--out", default="runs/demo", type=out_dir, metavar="DIR", help="folder for every stage's output")
    p.add_argument("--steps", type=positive_int, default=int(os.environ.get("DSCODER_DEMO_STEPS", 300)), metavar="N",
                   help="pretraining steps ($DSCODER_DEMO_STEPS)")
    p.add_argument("--vocab-size", type=int_range(257), default=4096, metavar="N", help="tokenizer vocabulary")
    p.add_argument("--sft-steps", type=positive_int, default=int(os.environ.get("DSCODER_DEMO_SFT_STEPS", 40)),
                   metavar="N", help="instruction-tuning steps ($DSCODER_DEMO_SFT_STEPS)")
    p.add_argument("--workers", dest="threads", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                   help="worker processes for the data build, torch threads for training")
    p.add_alias("--threads", "threads", type=positive_int)
    args = p.parse_args(argv)
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    data = build_corpus(args.out, args.threads)
    tok = train_tokenizer(args.out, data, args.vocab_size)
    summary = pretrain(args.out, data, tok, args.steps, args.threads)
    show(args.out)
    before, after = summary["initial_eval_loss"], summary["final_eval_loss"]
    print("\n--- held-out loss (nats/token) ---")
    print(f"before training: {before:.3f}\nafter {summary['steps']} steps: {after:.3f}  "
          f"({100 * (1 - after / before):.0f}% lower)")
    print(f"loss curve: {args.out / 'loss.png'}   model: {args.out / 'final'}")
    instruct(args.out, args.sft_steps, args.threads)
    print(f"instruct model: {args.out / 'sft' / 'final'}   total time: {(time.monotonic() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    from .errors import UserError

    try:
        sys.exit(main())
    except UserError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        sys.exit(2)
