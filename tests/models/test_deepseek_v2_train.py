"""Pretraining the MoE model end to end: `dscoder pretrain --preset tiny-moe` learns and logs the balance loss."""
from __future__ import annotations

import json
import random

import pytest

NAMES = ["alpha", "beta", "gamma", "delta", "total", "count", "items", "value"]


@pytest.fixture(scope="module")
def corpus_and_tokenizer(tmp_path_factory):
    bpe = pytest.importorskip("dscoder.tokenizer.bpe")
    root = tmp_path_factory.mktemp("moe_corpus")
    rng = random.Random(0)
    texts = []
    for i in range(30):
        lines = ["import math", ""]
        for j in range(3):
            a, b = rng.sample(NAMES, 2)
            lines += [f"def {a}_{b}_{j}({a}, {b}):", f"    {a} = {a} + {rng.randint(1, 9)}",
                      f"    return {a} * {b}", ""]
        texts.append("\n".join(lines))
        (root / "src").mkdir(exist_ok=True)
        (root / "src" / f"m{i:02d}.py").write_text(texts[-1])
    bpe.train_tokenizer(texts, vocab_size=320, out_dir=root / "tok")
    return root / "src", root / "tok"


@pytest.mark.filterwarnings("ignore:held-out split")
def test_tiny_moe_pretrain_learns_and_logs_aux_loss(corpus_and_tokenizer, tmp_path):
    from dscoder.train.metrics import read_metrics
    from dscoder.train.pretrain import main

    data, tok = corpus_and_tokenizer
    small = ["hidden_size=64", "intermediate_size=128", "moe_intermediate_size=32", "num_hidden_layers=2",
             "kv_lora_rank=16", "qk_nope_head_dim=16", "qk_rope_head_dim=8", "v_head_dim=16",
             "n_routed_experts=4", "num_experts_per_tok=2"]
    argv = ["--preset", "tiny-moe", "--tokenizer", str(tok), "--data", str(data), "--out", str(tmp_path / "run"),
            "--steps", "20", "--seq-len", "32", "--batch-size", "4", "--lr", "3e-3", "--warmup", "2",
            "--save-every", "0", "--threads", "1", "--device", "cpu", "--schedule", "cosine"]
    for s in small:
        argv += ["--set", s]
    assert main(argv) == 0
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 20
    assert all("aux_loss" in r and r["aux_loss"] > 0 for r in rows)
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first - 0.5, (first, last)
    assert all(r["expert_max_over_mean"] >= 1.0 for r in rows)                 # expert load is logged
    cfg = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v2" and cfg["n_routed_experts"] == 4
