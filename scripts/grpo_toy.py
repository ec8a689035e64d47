"""A GRPO run that learns on a laptop CPU in minutes: a random tiny model learns to answer with a digit.

    python scripts/grpo_toy.py --out runs/grpo-toy [--steps 20] [--seed 0] [-- EXTRA dscoder grpo OPTIONS]

What it builds in OUT/setup: a byte-level BPE tokenizer (trained on the task prompts and a few lines of Python with
numbers), a randomly initialised tiny Llama (2 layers, hidden 64) saved as an HF folder, and OUT/setup/tasks.jsonl:
eight completion tasks `def NAME():\\n    return ` whose tests are `assert NAME() in range(10)`. Then it runs
`dscoder grpo` with one new token per completion, so a completion passes exactly when that token is a digit 0-9
(about 10 of the ~300 tokens: a random model passes ~3% of the time). GRPO has to move the probability mass onto
the digit tokens; the mean reward per step in OUT/run/metrics.jsonl and OUT/run/reward.png shows it doing so.

What it shows: the loop end to end (engine rollouts, the sandbox verdict as reward, group advantages, the clipped
loss with KL, AdamW) raises the reward of a policy that starts with no knowledge. What it does not show: anything
about code ability; the tests accept any single digit.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAMES = ("f", "g", "h", "value", "answer", "total", "count", "result")
TASK = "def {name}():\n    return "


def write_tasks(path: Path) -> Path:
    rows = [{"task_id": f"toy/{n}", "prompt": TASK.format(name=n), "tests": f"assert {n}() in range(10)\n"}
            for n in NAMES]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_model(folder: Path, seed: int) -> Path:
    """A tokenizer and a random tiny Llama in one HF folder (`dscoder.load_model` / `load_tokenizer` read it)."""
    import torch

    from dscoder.models.hf import build_model as build, save_pretrained
    from dscoder.models.presets import get_preset
    from dscoder.tokenizer.bpe import train_tokenizer

    texts = [TASK.format(name=n) + str(i) + "\n" for i, n in enumerate(NAMES)]
    texts += [f"x = {i} + {i * 7} - {i % 3}\nprint(x, 'value', {i * 11})\n" for i in range(40)]
    tok = train_tokenizer(texts, vocab_size=300, out_dir=folder)
    torch.manual_seed(seed)
    cfg = get_preset("tiny", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    save_pretrained(build(cfg), folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("extra", nargs="*", help="more `dscoder grpo` options, after --")
    a = p.parse_args(argv)
    setup = a.out / "setup"
    setup.mkdir(parents=True, exist_ok=True)
    model = setup / "model"
    if not (model / "config.json").is_file():
        build_model(model, a.seed)
    tasks = write_tasks(setup / "tasks.jsonl")
    from dscoder.cli import main as cli
    return cli(["grpo", "--model", str(model), "--tasks", str(tasks), "--out", str(a.out / "run"),
                "--steps", str(a.steps), "--group-size", "16", "--prompts-per-step", "4", "--max-new-tokens", "1",
                "--lr", "1e-2", "--beta", "0.04", "--save-every", "10", "--seed", str(a.seed), "--device", "cpu",
                *a.extra])


if __name__ == "__main__":
    sys.exit(main())
