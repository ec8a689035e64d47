"""`dscoder sft`: supervised instruction tuning of a base checkpoint, full or LoRA (DeepSeek-Coder's README and
finetune/; V2 paper §2.1).

A thin verb over the pretraining loop (`loop.run`): what differs is the batch. Each record becomes one token
sequence rendered by the tokenizer's chat template (the same Jinja template `dscoder chat`, eval and
`AutoTokenizer.apply_chat_template` use; saved with the output), and targets that score only the assistant's
tokens: for every assistant turn, the tokens after that turn's generation prompt up to and including the turn's end
token (`<|EOT|>` for v1, EOS for V2). Everything else (system prompt, instructions, the newline after `<|EOT|>`,
padding) has target -100.
* Over-long samples keep their start (DeepSeek's finetune script truncates to model_max_length the same way): the
  sequence is cut to --seq-len + 1 tokens and counted as truncated; a sample left with no scored token is dropped
  and counted.
* Rows: one sample per row, right-padded to the longest row of the micro-batch; with --pack, samples (shuffled per
  epoch) fill rows of --seq-len tokens in order, each with positions restarting at 0 and a block-diagonal causal
  mask, so a sample sees only itself (the padding-free layout of TRL's BFD packing in trl/data_utils.py).
* LoRA (--lora-rank): PEFT adapters on every Linear except the output head (PEFT's "all-linear"), B = 0 at the
  start so step 0 is the base model. OUT/adapter/ is a PEFT folder for the base model; OUT/final/ is the merged
  model, a plain HF folder. Checkpoints hold the merged weights (loadable as is) and the adapter tensors (what a
  resume continues from, on top of --model).
Order of work as `pretrain` (whose run folder, lock, start planning, checkpoints and signal handling this reuses).
Usage is in `main`'s docstring (= `dscoder sft --help`).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ..args import (Parser, add_device_args, non_negative_int, out_dir, positive_float, positive_int,
                    resolve_device_dtype)
from ..args import seed as seed_int
from ..errors import UserError
from . import checkpoint as ckpt
from . import parallel
from .loop import IGNORE_INDEX, Batch, GracefulStop, LoopConfig, TrainState, run, set_rng_state
from .optim import build_optimizer
from .pretrain import LOOP_DTYPES, RunFolder, gathered_model, plan_start, save_run_checkpoint, seed_all, stopped_status

PROG = "dscoder sft"
TEMPLATES = ("v1", "v2", "v1-finetune-script")
# finetune/finetune_deepseekcoder.py's system prompt: "DeepSeek" spelling and a final period
# (deepseek-ai/DeepSeek-Coder finetune/finetune_deepseekcoder.py)
FINETUNE_SYSTEM = (
    "You are an AI programming assistant, utilizing the DeepSeek Coder model, developed by DeepSeek Company, and you "
    "only answer questions related to computer science. For politically sensitive questions, security and privacy "
    "issues, and other non-computer science questions, you will refuse to answer.\n")
# settings a resumed run must share with its checkpoint (--steps may grow)
_RESUME_FIXED = ("model", "data", "template", "system", "seq_len", "batch_size", "pack", "lr", "lora_rank",
                 "lora_alpha", "seed")


# ------------------------------------------------------------------------------------------- the template
def chat_template(name: str | None, saved: str | None, system: str | None) -> tuple[str, str | None]:
    """(the Jinja chat template to train with and save, its style for `infer.text.stop_ids`).

    `name` None: the template saved with the tokenizer. `system` replaces the default system prompt (what the
    template writes when a conversation has none), written exactly as a system message would be: v1 as is (so
    `dscoder chat --system TEXT` renders the same prompt), V2 followed by a blank line."""
    from ..tokenizer.chat import CHAT_TEMPLATES, V1_DEFAULT_SYSTEM

    if name is None:
        if not saved:
            raise UserError("the model's tokenizer has no chat template: pass --template v1, v2 or v1-finetune-script")
        known = [k for k, v in CHAT_TEMPLATES.items() if v == saved]
        if system is not None and not known:
            raise UserError("--system needs --template: the model's saved chat template is not one of DeepSeek's")
        name = known[0] if known else None
        if system is None:
            return saved, name
    if name == "v1-finetune-script" and system is None:
        system = FINETUNE_SYSTEM
    base = CHAT_TEMPLATES["v2" if name == "v2" else "v1"]
    if system is None:
        return base, name
    if name == "v2":
        literal = json.dumps(system + "\n\n", ensure_ascii=False)     # a Jinja string literal (same escapes)
        return base.replace("{{- bos_token -}}", "{{- bos_token -}}{%- if not (messages and messages[0]['role'] == "
                            "'system') -%}{{- " + literal + " -}}{%- endif -%}", 1), "v2"
    old = "'" + V1_DEFAULT_SYSTEM.replace("\n", "\\n") + "'"
    return base.replace(old, json.dumps(system, ensure_ascii=False), 1), "v1"


# ------------------------------------------------------------------------------------------- samples
def _render(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False, return_dict=False)
    return [int(t) for t in ids]


def encode_conversation(tokenizer, messages: list[dict[str, str]],
                        stops: list[int]) -> tuple[list[int], list[int]] | str:
    """(ids, labels) of a conversation under `tokenizer.chat_template`, or the reason it cannot be trained on.

    labels[k] = ids[k] on the tokens of every assistant turn (from the end of its generation prompt, which is
    `infer.text.chat_ids` of the turns before it, through its last end token in `stops`), else -100."""
    from ..infer.text import chat_ids

    full = _render(tokenizer, messages)
    labels = [IGNORE_INDEX] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        try:
            prompt = chat_ids(tokenizer, messages[:i])
        except UserError as e:
            return f"assistant message {i}: {e}"
        upto = full if i == len(messages) - 1 else _render(tokenizer, messages[:i + 1])
        if upto[:len(prompt)] != prompt or full[:len(upto)] != upto:
            return f"assistant message {i}: the template does not render its prompt as a prefix of the conversation"
        ends = [k for k, t in enumerate(upto[len(prompt):]) if t in stops]
        if not ends:
            return f"assistant message {i}: no end token after the reply"
        for k in range(len(prompt), len(prompt) + ends[-1] + 1):
            labels[k] = full[k]
    return full, labels


def encode_all(tokenizer, conversations, stops: list[int], seq_len: int, stats) -> list[tuple[list[int], list[int]]]:
    """Encode every conversation; over-long ones keep their first seq_len + 1 tokens (`stats.bad` counts those
    dropped, `stats.truncated` those cut)."""
    out = []
    for where, msgs in conversations:
        enc = encode_conversation(tokenizer, msgs, stops)
        if isinstance(enc, str):
            stats.skip(where, enc)
            continue
        ids, labels = enc
        if len(ids) > seq_len + 1:
            ids, labels = ids[:seq_len + 1], labels[:seq_len + 1]
            if all(t == IGNORE_INDEX for t in labels[1:]):
                stats.skip(where, f"longer than --seq-len {seq_len}, no reply token left")
                continue
            stats.truncated += 1
        out.append((ids, labels))
    stats.used = len(out)
    return out


def collate(rows: list[list[tuple[list[int], list[int]]]], pad_id: int, pack: bool) -> Batch:
    """One `Batch` from rows of samples; each sample contributes inputs ids[:-1] and targets labels[1:]. Rows are
    right-padded to the longest; packed rows get restarting positions and a block-diagonal causal mask."""
    T = max(sum(len(ids) - 1 for ids, _ in row) for row in rows)
    B = len(rows)
    inputs = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((B, T), dtype=torch.long)
    segment = torch.full((B, T), -1, dtype=torch.long)                       # -1: padding
    for b, row in enumerate(rows):
        off = 0
        for s, (ids, labels) in enumerate(row):
            n = len(ids) - 1
            inputs[b, off:off + n] = torch.tensor(ids[:-1])
            targets[b, off:off + n] = torch.tensor(labels[1:])
            positions[b, off:off + n] = torch.arange(n)
            segment[b, off:off + n] = s
            off += n
    n_tokens = int((segment >= 0).sum())
    if not pack:
        return Batch(inputs, targets, n_tokens=n_tokens)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = (segment[:, :, None] == segment[:, None, :]) & causal               # (B, T, T)
    return Batch(inputs, targets, positions, mask[:, None], n_tokens=n_tokens)  # mask (B, 1, T, T)


class SFTStream:
    """Rows of samples, reshuffled every epoch (a pure function of seed and epoch), so the position (epoch, row)
    is the whole data state a checkpoint needs."""

    def __init__(self, samples: list[tuple[list[int], list[int]]], seq_len: int, pack: bool, pad_id: int, seed: int):
        self.samples, self.seq_len, self.pack, self.pad_id, self.seed = samples, seq_len, pack, pad_id, seed
        self.epoch, self.pos = 0, 0
        self._rows = self.epoch_rows(0)

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        """Sample indices of each row of `epoch`: shuffled; with packing, filled in that order up to seq_len."""
        g = torch.Generator().manual_seed((self.seed + epoch) % 2**64)
        order = torch.randperm(len(self.samples), generator=g).tolist()
        if not self.pack:
            return [[i] for i in order]
        rows, cur, used = [], [], 0
        for i in order:
            n = len(self.samples[i][0]) - 1
            if cur and used + n > self.seq_len:
                rows.append(cur)
                cur, used = [], 0
            cur.append(i)
            used += n
        return rows + [cur]

    def next_windows(self, n: int) -> Batch:
        picked = []
        while len(picked) < n:
            if self.pos == len(self._rows):
                self.epoch, self.pos = self.epoch + 1, 0
                self._rows = self.epoch_rows(self.epoch)
            picked.append([self.samples[i] for i in self._rows[self.pos]])
            self.pos += 1
        return collate(picked, self.pad_id, self.pack)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, st: dict) -> None:
        self.epoch, self.pos = int(st["epoch"]), int(st["pos"])
        self._rows = self.epoch_rows(self.epoch)


# ------------------------------------------------------------------------------------------- LoRA
def lora_targets(model: torch.nn.Module) -> list[str]:
    """Names of every Linear except the output head (PEFT's "all-linear" target)."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and n != "lm_head"})


def add_lora(model: torch.nn.Module, rank: int, alpha: float):
    """The model wrapped in a `peft.PeftModel` with LoRA adapters; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                                            target_modules=lora_targets(model)))


def _adapter_state(peft_model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in peft_model.named_parameters() if p.requires_grad}


def _lora_export(peft_model) -> tuple[torch.nn.Module, dict]:
    """What a LoRA checkpoint holds: the merged model (written as the HF folder) and the adapter tensors."""
    return copy.deepcopy(peft_model).merge_and_unload(), {"adapter": _adapter_state(peft_model)}


def save_adapter(folder: Path, peft_model, base: str) -> None:
    """OUT/adapter: a PEFT adapter folder for `AutoModelForCausalLM.from_pretrained(base)`, written atomically."""
    def write(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp))
        cfg_file = tmp / "adapter_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg.update(base_model_name_or_path=str(base), task_type="CAUSAL_LM", auto_mapping=None)
        cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    ckpt.save_folder(folder, write)


# ------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = Parser(PROG, main.__doc__)
    a = p.add_argument
    a("--model", required=True, metavar="DIR", help="base checkpoint: an HF folder with its tokenizer")
    p.add_inputs("data", "FILE", "instruction data: JSONL or .parquet ('instruction'/'output' or 'messages')",
                 alias="--data")
    a("--out", required=True, type=out_dir, metavar="DIR", help="run folder")
    a("--template", choices=TEMPLATES, default=None,
      help="chat template (default: the one saved with the model's tokenizer)")
    a("--system", default=None, metavar="TEXT", help="default system prompt written into the template")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=None, metavar="N", help="optimizer steps in total")
    length.add_argument("--epochs", type=positive_float, default=None, metavar="E",
                        help="passes over the data (default 3, DeepSeek's finetune recipe)")
    a("--seq-len", type=positive_int, default=1024, metavar="N", help="tokens per row (longer samples are cut)")
    a("--batch-size", type=positive_int, default=16, metavar="N", help="global batch, rows per optimizer step")
    a("--lr", type=positive_float, default=None,
      help="peak LR, cosine to 0 (default 2e-5 full, as DeepSeek's recipe; 2e-4 with LoRA)")
    a("--warmup", type=non_negative_int, default=None, metavar="N", help="warmup steps (default min(10, steps/10))")
    a("--lora-rank", type=int, default=None, metavar="R", help="LoRA rank (default: full fine-tuning)")
    a("--lora-alpha", type=positive_float, default=None, help="LoRA alpha (default: the rank)")
    a("--pack", action="store_true", help="several samples per row, each seeing only itself")
    a("--save-every", type=non_negative_int, default=0, metavar="N", help="checkpoint every N steps (0: at the end)")
    a("--keep-last", type=positive_int, default=2, metavar="N", help="complete checkpoints to keep")
    a("--resume", action="store_true", help="continue from the newest complete checkpoint under OUT/checkpoints")
    a("--seed", type=seed_int, default=0, help="seeds the LoRA init and the data order (0 ... 2**64-1)")
    add_device_args(p)
    a("--workers", dest="threads", type=positive_int, default=None, metavar="N", help="torch CPU threads")
    return p


def _validate(args) -> None:
    from ..args import read_text_arg

    if args.lora_rank is not None and args.lora_rank < 1:
        raise UserError(f"--lora-rank must be >= 1, got {args.lora_rank} (leave it out for full fine-tuning)")
    if args.lora_rank is None and args.lora_alpha is not None:
        raise UserError("--lora-alpha needs --lora-rank")
    if args.dtype not in ("auto", *LOOP_DTYPES):
        raise UserError(f"--dtype {args.dtype}: fine-tuning runs in float32 or with bfloat16 autocast")
    if not (Path(args.model) / "config.json").is_file():
        raise UserError(f"--model {args.model}: not an HF checkpoint folder (no config.json)")
    if args.system is not None:
        args.system = read_text_arg(args.system, "--system")
    if args.lr is None:
        args.lr = 2e-4 if args.lora_rank else 2e-5
    if args.lora_rank and args.lora_alpha is None:
        args.lora_alpha = float(args.lora_rank)


def _run_args(args) -> dict:
    return {"model": str(Path(args.model).resolve()), "data": [str(Path(d).resolve()) for d in args.data],
            "template": args.template, "system": args.system, "seq_len": args.seq_len, "batch_size": args.batch_size,
            "pack": bool(args.pack), "lr": args.lr, "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha,
            "seed": args.seed, "steps": args.steps}


def prepare(args) -> tuple[Any, list, Any]:
    """(tokenizer with the training template set, encoded samples, read stats); UserError when nothing is usable."""
    from ..data.instruct import read_conversations
    from ..infer.text import stop_ids
    from ..tokenizer.bpe import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    tokenizer.chat_template, style = chat_template(args.template, tokenizer.chat_template, args.system)
    conversations, stats = read_conversations(args.data)
    samples = encode_all(tokenizer, conversations, stop_ids(tokenizer, "chat", style), args.seq_len, stats)
    if stats.truncated:
        print(f"{PROG}: {stats.truncated} sample(s) longer than --seq-len {args.seq_len} were cut", file=sys.stderr)
    for reason, n in stats.bad.items():
        print(f"{PROG}: skipped {n} record(s): {reason}", file=sys.stderr)
    if stats.examples:
        print(f"{PROG}: first skipped: {'; '.join(stats.examples)}", file=sys.stderr)
    if not samples:
        raise UserError(f"no usable record in {', '.join(map(str, args.data))} ({stats.records} read, "
                        f"{sum(stats.bad.values())} skipped): nothing to train on")
    return tokenizer, samples, stats


def main(argv: list[str] | None = None) -> int:
    """Instruction-tune a base checkpoint (DeepSeek-Coder's instruct recipe, deepseek-ai/DeepSeek-Coder finetune/),
    full or with LoRA.

    dscoder sft --model BASE data.jsonl --out runs/sft [--template v1|v2|v1-finetune-script] [--system TEXT]
        [--steps N | --epochs E] [--seq-len N] [--batch-size N] [--lr F] [--lora-rank R [--lora-alpha A]]
        [--pack] [--save-every N] [--resume] [--seed N]
Then:    echo "write quicksort" | dscoder chat --model runs/sft/final
Two processes (DDP):   python -m torch.distributed.run --nproc-per-node 2 -m dscoder.cli sft ...

Data: JSONL or Parquet records, either {"instruction", "output"} (DeepSeek's finetune format) or {"messages":
[{"role", "content"}, ...]} (multi-turn; the loss covers every assistant turn). Bad records are skipped and counted
with FILE:LINE; a set with no usable record exits 2 before OUT is created.
Template: the model's saved chat template, or --template v1 (DeepSeek-Coder instruct), v2 (Coder-V2 chat),
v1-finetune-script (v1 with the finetune script's system prompt: "DeepSeek", final period); --system TEXT sets the
default system prompt. The template is saved with OUT/final's tokenizer, so `dscoder chat` and
`apply_chat_template` prompt the model as it was trained. Loss on reply tokens and their end token only.
Samples longer than --seq-len + 1 tokens keep their start (counted; dropped when no reply token is left).
Writes OUT/metrics.jsonl (step, loss, lr, tokens_per_s, response_tokens), OUT/loss.png, OUT/checkpoints/step-N/
(atomic; --save-every), OUT/final/ (the merged HF folder), OUT/adapter/ (with --lora-rank: a PEFT adapter
folder for BASE) and OUT/summary.json (records read, skipped by reason, truncated). OUT is locked while a run
writes there. --resume continues from the newest complete checkpoint, bit for bit; it refuses changed settings.
SIGTERM: checkpoint, exit 143 (continue with --resume)."""
    args = _parser().parse_args(argv)
    _validate(args)
    tokenizer, samples, stats = prepare(args)
    with parallel.training_process(args.threads, resolve_device_dtype(args)[0].type) as dist:
        if args.batch_size % dist.world:
            raise UserError(f"--batch-size {args.batch_size} is not divisible by {dist.world} processes")
        stream = SFTStream(samples, args.seq_len, args.pack, _pad_id(tokenizer), args.seed)
        if args.steps is None:
            args.steps = max(1, math.ceil((args.epochs or 3.0) * len(stream.epoch_rows(0)) / args.batch_size))
        from ..models.config import config_from_hf
        cfg = config_from_hf(json.loads((Path(args.model) / "config.json").read_text()))
        with GracefulStop(dist) as stop, RunFolder(Path(args.out), dist) as folder:
            start = folder.decide(lambda: plan_start(args, cfg, folder.path, _run_args(args), _RESUME_FIXED, PROG))
            if start.done:
                return 0
            return _train(args, cfg, tokenizer, stream, stats, dist, start.resume_from, stop)


def _pad_id(tokenizer) -> int:
    from ..tokenizer.special import special_ids
    return special_ids(tokenizer).eos       # never scored: padding has target -100 and sees no real token


def _setup_model(args, dist, saved: dict | None):
    from ..models.hf import load_model

    if saved is not None and not args.lora_rank:
        return load_model(args.resume_from).to(dist.device)
    model = load_model(args.model)
    if args.lora_rank:
        model = add_lora(model, args.lora_rank, args.lora_alpha)
        if saved is not None:
            missing = set(_adapter_state(model)) ^ set(saved["adapter"])
            if missing:
                raise UserError(f"--resume: the checkpoint's adapter does not fit ({sorted(missing)[:3]})")
            model.load_state_dict(saved["adapter"], strict=False)
    return model.to(dist.device)


def _train(args, cfg, tokenizer, stream: SFTStream, stats, dist, resume_from: Path | None, stop) -> int:
    out = Path(args.out)
    ck_dir = out / "checkpoints"
    saved = ckpt.load_train_state(resume_from) if resume_from else None
    args.resume_from = resume_from
    seed_all(args.seed)
    model = parallel.parallelize(_setup_model(args, dist, saved), dist)
    optimizer = build_optimizer(model, args.lr)
    state = TrainState()
    if saved is not None:
        parallel.load_optimizer_state(model, optimizer, saved["optimizer"], dist)
        stream.load_state_dict(saved["data"])
        set_rng_state(saved["rng"][min(dist.rank, len(saved["rng"]) - 1)])
        state = TrainState(step=int(saved["step"]), tokens=int(saved["tokens"]), elapsed_s=float(saved["elapsed_s"]))
    warmup = args.warmup if args.warmup is not None else min(10, max(1, args.steps // 10))
    loop_cfg = LoopConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                          warmup=warmup, schedule="cosine", min_ratio=0.0, save_every=args.save_every or args.steps,
                          log_every=1, dtype=LOOP_DTYPES.get(args.dtype) or
                          ("bf16" if dist.device.type == "cuda" else "fp32"))
    run_args = _run_args(args)
    export = _lora_export if args.lora_rank else None

    def save(st: TrainState) -> None:
        save_run_checkpoint(out, ck_dir, st, model, optimizer, stream, tokenizer, cfg, run_args, dist, args.keep_last,
                         export)

    state = run(model, optimizer, stream, loop_cfg, dist, state, out, save, stop=stop)
    if state.step < args.steps:
        return stopped_status(stop.received, state.step, args.steps, ck_dir, dist, PROG)
    plain = gathered_model(model, cfg, dist)
    if dist.is_main:
        if args.lora_rank:
            save_adapter(out / "adapter", plain, args.model)
            plain = plain.merge_and_unload()
        ckpt.save_hf_folder(out / "final", plain, tokenizer, meta={"step": state.step})
        _write_summary(out, state, stats, stream)
        print(f"{PROG}: {state.step} steps, {state.tokens:,} tokens; final model in {out / 'final'}"
              + (f", adapter in {out / 'adapter'}" if args.lora_rank else ""), file=sys.stderr)
    parallel.barrier(dist)
    return 0


def _write_summary(out: Path, state: TrainState, stats, stream: SFTStream) -> None:
    """OUT/summary.json: totals, and what reading and encoding the data kept, cut and skipped."""
    summary = {"steps": state.step, "tokens": state.tokens, "train_seconds": round(state.elapsed_s, 1),
               "epochs_started": stream.epoch + 1, "rows_per_epoch": len(stream.epoch_rows(0)),
               "data": stats.as_dict()}
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "summary.json")
