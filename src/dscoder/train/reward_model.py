"""`dscoder rm train`: a reward model trained on compiler-labelled rollouts (DeepSeek-Coder-V2 §3.5: the 0/1 test
signal is noisy and sparse, so V2 trains a reward model on it and uses the model's signal for RL).

The model is the policy's architecture with a scalar head (Linear(hidden, 1), no bias) on the last hidden state
(after the final norm) of the last token of prompt + completion, as transformers' `*ForSequenceClassification`
heads read it. Trained pointwise: binary cross-entropy of the score against `passed`. Records are
`dscoder grpo`'s OUT/rollouts.jsonl rows (prompt, kind, completion, passed); identical (prompt, completion)
pairs are merged first (their label is the majority verdict), then 1 pair in `--heldout-every` (by a hash of its
text) is held out and the accuracy there is reported next to the majority-class baseline.

    dscoder rm train --model DIR --data OUT/rollouts.jsonl --out RM [--epochs E] [--lr F] [--batch-size N]
    dscoder grpo ... --reward rm:RM          # reward = sigmoid(score); the tests still give pass_rate

RM/ is an HF folder of the trunk (`dscoder.load_model` reads it) plus reward_head.pt and reward_model.json.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..args import Parser, add_device_args, int_range, out_dir, positive_float, positive_int, resolve_device_dtype
from ..args import seed as seed_int
from ..durable import lock_run_folder
from ..errors import UserError

HEAD_FILE = "reward_head.pt"
INFO_FILE = "reward_model.json"


class RewardModel(nn.Module):
    """A causal LM trunk + a scalar head on the final-norm hidden state of each row's last token."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.head = nn.Linear(lm.config.hidden_size, 1, bias=False)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(lm.config.hidden_size))

    def forward(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Scores (B,) of token-id rows of any lengths: left-padded so that every row ends at the last column,
        with the padding masked out and RoPE positions starting at each row's first token (as the Engine does)."""
        device = self.head.weight.device
        L = max(map(len, rows))
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        mask = torch.zeros(len(rows), L, dtype=torch.bool)
        pos = torch.zeros(len(rows), L, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, L - len(r):] = torch.tensor(list(r))
            mask[b, L - len(r):] = True
            pos[b, L - len(r):] = torch.arange(len(r))
        captured: list[torch.Tensor] = []
        hook = self.lm.model.norm.register_forward_hook(lambda m, i, out: captured.append(out))
        try:
            padded = any(len(r) != L for r in rows)
            self.lm(ids.to(device), positions=pos.to(device) if padded else None,
                    attn_mask=mask.to(device) if padded else None, logits_to_keep=1)
        finally:
            hook.remove()
        return self.head(captured[-1][:, -1].float())[:, 0]                   # (B,)


def load_reward_model(folder: str | Path, device: Any = "cpu") -> RewardModel:
    """A trained reward model folder (`dscoder rm train --out`); UserError when it is not one."""
    from ..models.hf import load_model
    folder = Path(folder)
    if not (folder / INFO_FILE).is_file() or not (folder / HEAD_FILE).is_file():
        raise UserError(f"{folder} is not a reward model folder (no {INFO_FILE} / {HEAD_FILE}; "
                        "train one with `dscoder rm train`)")
    rm = RewardModel(load_model(str(folder), device=device))
    rm.head.load_state_dict(torch.load(folder / HEAD_FILE, map_location=device, weights_only=True))
    return rm.to(device).eval()


@torch.no_grad()
def rm_rewards(rm: RewardModel, rows: Sequence[Sequence[int]], batch_size: int = 16) -> list[float]:
    """sigmoid(score) of each row: the probability the reward model gives to "passes its tests"."""
    out: list[float] = []
    for i in range(0, len(rows), batch_size):
        out += torch.sigmoid(rm(rows[i:i + batch_size])).tolist()
    return out


def rollout_ids(tokenizer, prompt: str, kind: str, completion: str) -> list[int]:
    """Prompt ids (the one prompt builder: BOS + code, or the chat template) + the completion's ids."""
    from ..infer.text import chat_ids, completion_ids, encode
    head = completion_ids(tokenizer, prompt) if kind == "completion" else \
        chat_ids(tokenizer, [{"role": "user", "content": prompt}])
    return head + encode(tokenizer, completion)


# ------------------------------------------------------------------------------------------- data
def read_records(path: str | Path) -> tuple[list[tuple[str, str, str, bool]], dict[str, int]]:
    """Unique (prompt, kind, completion, passed) from a rollouts.jsonl, and counts (read, bad, merged).
    A pair seen with both verdicts (a timeout on one run) takes the majority; a tie counts as failed."""
    from ..args import read_text_file
    votes: dict[tuple[str, str, str], list[bool]] = {}
    bad = read = 0
    for line in read_text_file(path, "--data").splitlines():
        if not line.strip():
            continue
        read += 1
        try:
            r = json.loads(line)
            key = (r["prompt"], r["kind"], r["completion"])
            ok = all(isinstance(x, str) for x in key) and key[1] in ("completion", "chat") \
                and isinstance(r["passed"], bool)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            bad += 1
            continue
        votes.setdefault(key, []).append(r["passed"])
    recs = [(p, k, c, sum(v) * 2 > len(v)) for (p, k, c), v in votes.items()]
    return recs, {"records": read, "bad": bad, "unique": len(recs)}


def _held_out(rec: tuple, every: int) -> bool:
    digest = hashlib.sha256(json.dumps(rec[:3]).encode()).digest()
    return int.from_bytes(digest[:8], "big") % every == 0


def accuracy(rm: RewardModel, rows: list[list[int]], labels: list[bool]) -> float:
    if not rows:
        return math.nan
    was = rm.training
    rm.eval()
    try:
        p = rm_rewards(rm, rows)
    finally:
        rm.train(was)
    return sum((x > 0.5) == y for x, y in zip(p, labels)) / len(rows)


# ------------------------------------------------------------------------------------------- CLI
def _parser() -> Parser:
    p = Parser("dscoder rm train", main.__doc__)
    a = p.add_argument
    a("--model", required=True, metavar="DIR", help="the trunk to start from (an HF folder with its tokenizer)")
    a("--data", required=True, metavar="FILE", help="rollouts.jsonl written by dscoder grpo")
    a("--out", required=True, type=out_dir, help="reward model folder")
    a("--epochs", type=positive_int, default=2, help="passes over the training pairs")
    a("--batch-size", type=positive_int, default=8, help="pairs per optimizer step")
    a("--lr", type=positive_float, default=2e-5, help="AdamW learning rate (DeepSeekMath's reward model: 2e-5)")
    a("--heldout-every", type=int_range(2), default=5, help="hold out 1 pair in N (by a hash of its text)")
    a("--seed", type=seed_int, default=0, help="seeds the head and the data order (0 ... 2**64-1)")
    add_device_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Train a reward model on (prompt, completion, passed) records (DeepSeek-Coder-V2 §3.5).

    dscoder rm train --model DIR --data OUT/rollouts.jsonl --out RM [--epochs E] [--batch-size N] [--lr F]
                     [--heldout-every N] [--seed N]
Prints and writes RM/reward_model.json: held-out accuracy, the majority-class baseline, counts. Use the model in
GRPO with `dscoder grpo ... --reward rm:RM`."""
    args = _parser().parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        raise UserError(f"--model {args.model}: not a Hugging Face model folder (no config.json)")
    recs, counts = read_records(args.data)
    if not recs:
        raise UserError(f"--data {args.data}: no usable record (need prompt, kind, completion, passed); "
                        f"{counts['bad']} of {counts['records']} lines were bad")
    device, dtype = resolve_device_dtype(args)
    if dtype != torch.float32:
        raise UserError("--dtype: the reward model trains in float32")
    import dscoder
    tokenizer = dscoder.load_tokenizer(args.model)
    rows = [rollout_ids(tokenizer, p, k, c) for p, k, c, _ in recs]
    test = [i for i, r in enumerate(recs) if _held_out(r, args.heldout_every)]
    train = [i for i in range(len(recs)) if i not in set(test)]
    if not train:
        raise UserError(f"--data {args.data}: every pair fell in the held-out split; lower --heldout-every")
    out = Path(args.out)
    if (out / INFO_FILE).exists():
        raise UserError(f"{out} already holds a reward model; choose a new --out")
    with lock_run_folder(out):
        info = _train(args, tokenizer, rows, [r[3] for r in recs], train, test, device)
    info.update(counts)
    print(json.dumps(info, indent=1))
    return 0


def _train(args, tokenizer, rows, labels, train, test, device) -> dict:
    from ..models.hf import load_model
    from . import checkpoint as ckpt
    from .optim import build_optimizer

    torch.manual_seed(args.seed)
    rm = RewardModel(load_model(args.model, device=device)).to(device)
    opt = build_optimizer(rm, args.lr, weight_decay=0.0)
    rng = random.Random(args.seed)
    test_rows, test_labels = [rows[i] for i in test], [labels[i] for i in test]
    before = accuracy(rm, test_rows, test_labels)
    rm.train()
    for epoch in range(args.epochs):
        order = list(train)
        rng.shuffle(order)
        total = 0.0
        for s in range(0, len(order), args.batch_size):
            b = order[s:s + args.batch_size]
            y = torch.tensor([float(labels[i]) for i in b], device=device)
            loss = nn.functional.binary_cross_entropy_with_logits(rm([rows[i] for i in b]), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
            opt.step()
            total += float(loss.detach()) * len(b)
        print(f"dscoder rm train: epoch {epoch + 1}/{args.epochs} loss {total / len(order):.4f}", file=sys.stderr)
    pos = sum(test_labels)
    info = {"heldout_accuracy": accuracy(rm, test_rows, test_labels), "heldout_accuracy_before": before,
            "heldout_majority_baseline": max(pos, len(test_labels) - pos) / len(test_labels) if test_labels
            else None, "train_pairs": len(train), "heldout_pairs": len(test),
            "train_pass_rate": sum(labels[i] for i in train) / len(train), "model": str(Path(args.model).resolve()),
            "epochs": args.epochs, "lr": args.lr, "seed": args.seed}
    out = Path(args.out)
    head = {k: v.detach().cpu() for k, v in rm.head.state_dict().items()}
    ckpt.save_hf_folder(out / ".rm", rm.lm, tokenizer, extra={HEAD_FILE: head})
    for p in (out / ".rm").iterdir():                                        # the folder itself is the RM
        os.replace(p, out / p.name)
    (out / ".rm").rmdir()
    tmp = out / (INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, out / INFO_FILE)                                         # written last: the commit marker
    return info
