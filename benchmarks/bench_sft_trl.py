"""SFT training speed: `dscoder sft` vs TRL's `SFTTrainer`, same tiny model, data and hyperparameters.

Both sides fine-tune the same random v1 model (an HF Llama folder with a tokenizer trained here and the v1 chat
template) for one epoch on the same instruction pairs (mined from the stdlib with `data.instruct.mine_python`):
batch B rows, max length L, AdamW at the same LR, fp32, the same torch thread count, no packing, loss on the reply
tokens only (TRL: prompt-completion data, completion_only_loss). Throughput = real (non-padding) tokens of the
epoch / seconds spent in its optimizer steps (dscoder: metrics.jsonl `elapsed_s`; TRL: a callback timing each
step), so data preparation and start-up are left out on both sides.

    .venv/bin/python benchmarks/bench_sft_trl.py                    # 128 pairs, batch 8, seq 512, 1 thread
    .venv/bin/python benchmarks/bench_sft_trl.py --pairs 64 --threads 2
"""
from __future__ import annotations

import argparse
import json
import sysconfig
import tempfile
import time
from pathlib import Path

import torch


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def make_base(work: Path, pairs: list[dict], args) -> Path:
    """A tokenizer trained on the pairs and a random model, saved as one HF folder (v1 chat template)."""
    from dscoder.models.hf import build_model
    from dscoder.models.presets import get_preset
    from dscoder.tokenizer.bpe import load_tokenizer, train_tokenizer
    from dscoder.tokenizer.special import special_ids
    from dscoder.train import checkpoint as ckpt

    train_tokenizer([p["instruction"] + "\n" + p["output"] for p in pairs], 2048, work / "tok")
    tok = load_tokenizer(work / "tok")
    ids = special_ids(tok)
    torch.manual_seed(0)
    cfg = get_preset("tiny", vocab_size=2048 + 64, hidden_size=args.hidden, num_hidden_layers=args.layers,
                     intermediate_size=args.hidden * 8 // 3 // 64 * 64, bos_token_id=ids.bos, eos_token_id=ids.eos)
    return ckpt.save_hf_folder(work / "base", build_model(cfg), tok)


def run_dscoder(base: Path, data: Path, work: Path, steps: int, args) -> tuple[float, int]:
    from dscoder.train import sft
    from dscoder.train.metrics import read_metrics

    sft.main(["--model", str(base), str(data), "--out", str(work / "ours"), "--template", "v1", "--steps", str(steps),
              "--seq-len", str(args.seq), "--batch-size", str(args.batch), "--lr", str(args.lr), "--warmup", "1",
              "--workers", str(args.threads), "--seed", "0"])
    rows = read_metrics(work / "ours" / "metrics.jsonl")
    return rows[-1]["elapsed_s"], rows[-1]["tokens"]


def run_trl(base: Path, pairs: list[dict], work: Path, steps: int, args) -> tuple[float, int]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(base)
    tok.pad_token = tok.eos_token
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p["instruction"].strip()}],
                             "completion": [{"role": "assistant", "content": p["output"]}]} for p in pairs])
    times: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    cfg = SFTConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.batch, max_steps=steps,
                    max_length=args.seq, learning_rate=args.lr, warmup_steps=1, lr_scheduler_type="cosine",
                    use_cpu=True, report_to=[], save_strategy="no", logging_steps=10**6, seed=0,
                    dataloader_num_workers=0, completion_only_loss=True, packing=False, bf16=False)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), args=cfg,
                         train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    loader = trainer.get_train_dataloader()
    for b in loader:                                    # the epoch's real tokens, batch by batch
        tokens.append(int(b["attention_mask"].sum()))
    trainer.train()
    return sum(times), sum(tokens)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    from dscoder.data.instruct import mine_python

    pairs: list[dict] = []
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        pairs += [p for p in mine_python(f.read_text(errors="replace"), max_lines=15)]
        if len(pairs) >= args.pairs:
            break
    pairs = pairs[:args.pairs]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "pairs.jsonl"
        data.write_text("".join(json.dumps({"instruction": p["instruction"], "output": p["output"]}) + "\n"
                                for p in pairs))
        base = make_base(work, pairs, args)
        steps = -(-len(pairs) // args.batch)
        ours_s, ours_tok = run_dscoder(base, data, work, steps, args)
        trl_s, trl_tok = run_trl(base, pairs, work, steps, args)
    print(f"{len(pairs)} pairs, batch {args.batch}, seq {args.seq}, hidden {args.hidden} x {args.layers} layers, "
          f"{steps} steps (one epoch), {args.threads} thread(s)")
    print(f"dscoder sft : {ours_tok:>8,} tokens in {ours_s:7.2f} s = {ours_tok / ours_s:9,.0f} tokens/s")
    print(f"TRL SFT     : {trl_tok:>8,} tokens in {trl_s:7.2f} s = {trl_tok / trl_s:9,.0f} tokens/s")
    print(f"ratio (dscoder / TRL): {ours_tok / ours_s / (trl_tok / trl_s):.2f}x")


if __name__ == "__main__":
    main()
