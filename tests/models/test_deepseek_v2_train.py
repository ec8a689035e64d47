"""Training the MoE model: the loop's step sums the returned balance loss and expert load over micro-batches, and
`dscoder pretrain --preset tiny-moe` learns and logs both."""
from __future__ import annotations

import json
import random

import pytest
import torch

from dscoder.models.hf import build_model
from dscoder.models.presets import get_preset
from dscoder.tokenizer import bpe
from dscoder.train.loop import LoopConfig, train_step
from dscoder.train.parallel import Dist

NAMES = ["alpha", "beta", "gamma", "delta", "total", "count", "items", "value"]


@pytest.fixture(scope="module")
def corpus_and_tokenizer(tmp_path_factory):
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


def test_train_step_sums_aux_loss_and_expert_load_over_micro_batches():
    cfg = get_preset("tiny-moe", vocab_size=50, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                     num_hidden_layers=3, kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
                     n_routed_experts=4, num_experts_per_tok=2, aux_loss_alpha=0.01)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    micro = [torch.randint(0, cfg.vocab_size, (3, 9)) for _ in range(2)]       # 2 micro-batches of 3 x (8 + 1)
    with torch.no_grad():                                                      # what the step will see
        want = [model(m[:, :-1], return_aux=True) for m in micro]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    res = train_step(model, opt, micro, LoopConfig(steps=1, batch_size=6, seq_len=8, lr=1e-3, warmup=0,
                                                   grad_accum=2), Dist())
    load = res["expert_load"]
    assert load.shape == (2, 4) and load.dtype == torch.long                  # layers 1 and 2 are MoE
    assert load.sum(1).tolist() == [2 * 3 * 8 * 2] * 2                         # micro x rows x T x top-k picks
    assert torch.equal(load, want[0].expert_load + want[1].expert_load)
    assert res["aux_loss"] == pytest.approx((want[0].aux_loss + want[1].aux_loss).item() / 2, rel=1e-6)


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
    picks = 4 * 32 * 2                                  # per step: batch x seq_len x top-k, in the one MoE layer
    for r in rows:                                      # max/mean over 4 experts -> the busiest expert's picks
        top = r["expert_max_over_mean"] * picks / 4
        assert picks / 4 <= top <= picks and abs(top - round(top)) < 0.01, r
        assert r["expert_dead_frac"] in (0.0, 0.25, 0.5, 0.75), r
    cfg = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v2" and cfg["n_routed_experts"] == 4
