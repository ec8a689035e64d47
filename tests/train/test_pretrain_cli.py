"""`dscoder pretrain` end to end: bitwise resume after SIGKILL, torchrun DDP on gloo, MoE metrics, bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import torch
from pretrain_runs import ENV, kill_at_step, pretrain_args, run_cli, weights

from dscoder.cli import main as cli_main
from dscoder.train.metrics import read_metrics


def test_outputs_of_a_run(straight):
    rows = read_metrics(straight / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "tokens", "elapsed_s"} <= set(rows[0])
    assert rows[-1]["tokens"] == 12 * 4 * 64 and "eval_loss" in rows[5] and "eval_loss" in rows[11]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5                   # it learns
    assert (straight / "loss.png").stat().st_size > 1000
    # every --save-every steps and after the last one (a finished run can be extended exactly)
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["step-00000004", "step-00000008",
                                                                          "step-00000012"]
    import dscoder
    model = dscoder.load_model(straight / "final")
    assert model(torch.tensor([[1, 2, 3]])).shape[-1] == model.config.vocab_size


def test_resume_after_sigkill_is_bitwise(straight, tok_dir, corpus_dir, tmp_path):
    out = tmp_path / "killed"
    kill_at_step(pretrain_args(tok_dir, corpus_dir, out), out, 6)
    assert not (out / "final").exists()
    r = run_cli(pretrain_args(tok_dir, corpus_dir, out, extra=["--resume"]))
    assert r.returncode == 0, r.stderr
    ref = {x["step"]: x for x in read_metrics(straight / "metrics.jsonl")}
    got = read_metrics(out / "metrics.jsonl")
    assert [x["step"] for x in got] == list(range(1, 13))
    for x in got:                                   # exact float equality: same bits, not "close"
        assert (x["loss"], x["grad_norm"], x["lr"]) == (ref[x["step"]]["loss"], ref[x["step"]]["grad_norm"],
                                                        ref[x["step"]]["lr"]), x["step"]
        assert x.get("eval_loss") == ref[x["step"]].get("eval_loss")
    a, b = weights(straight / "final"), weights(out / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_two_processes_matches_single(straight, tok_dir, corpus_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dscoder.cli", *pretrain_args(tok_dir, corpus_dir, out, steps=3, extra=["--save-every", "0"])]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = read_metrics(straight / "metrics.jsonl")
    got = read_metrics(out / "metrics.jsonl")
    assert abs(got[0]["loss"] - ref[0]["loss"]) < 1e-5
    # steps 2-3 follow updates at LR peak/2 and peak, the same for --steps 3 and 12: same data, same updates
    assert [abs(g["loss"] - r["loss"]) < 1e-4 for g, r in zip(got, ref[:3])] == [True] * 3
    import dscoder
    assert dscoder.load_model(out / "final").config.num_hidden_layers == 4


def test_resume_with_changed_config_is_refused(straight, tok_dir, corpus_dir, capsys):
    before = sorted(p.name for p in straight.rglob("*"))
    rc = cli_main(pretrain_args(tok_dir, corpus_dir, straight, extra=["--resume", "--set", "num_hidden_layers=3"]))
    assert rc == 2 and "model config differs" in capsys.readouterr().err
    rc = cli_main(pretrain_args(tok_dir, corpus_dir, straight))               # no --resume over existing checkpoints
    assert rc == 2 and "--resume" in capsys.readouterr().err
    assert cli_main(pretrain_args(tok_dir, corpus_dir, straight, extra=["--resume"])) == 0     # finished: a no-op
    assert "nothing to do" in capsys.readouterr().err
    assert sorted(p.name for p in straight.rglob("*")) == before


def test_bad_input_exits_2_and_writes_nothing(tok_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blob.py").write_bytes(b"\x00\xff\x00")
    rc = cli_main(pretrain_args(tok_dir, empty, tmp_path / "out1"))
    assert rc == 2 and "no usable documents under" in capsys.readouterr().err
    assert not (tmp_path / "out1").exists()
    rc = cli_main(pretrain_args(tmp_path / "no-tok", empty, tmp_path / "out2"))
    assert rc == 2 and "--tokenizer" in capsys.readouterr().err and not (tmp_path / "out2").exists()


def test_summary_counts_skipped_data_lines(tok_dir, corpus_dir, tmp_path):
    """A shard with one line that is not JSON: training goes on, summary.json records the count and the line."""
    texts = [p.read_text() for p in sorted(corpus_dir.glob("*.py"))] * 5             # 200 records
    lines = [json.dumps({"text": t}) for t in texts]
    lines.insert(6, "{not json")                                                      # line 7
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "part-0.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert cli_main(pretrain_args(tok_dir, shards, out, steps=2, extra=["--save-every", "0"])) == 0
    data = json.loads((out / "summary.json").read_text())["data"]
    assert data["records"] == 201 and data["bad_records"] == 1
    assert data["first_bad"].startswith(f"{shards / 'part-0.jsonl'}:7 ")


def test_moe_preset_logs_aux_loss_and_expert_load(tok_dir, corpus_dir, tmp_path):
    args = ["pretrain", "--preset", "tiny-moe", "--tokenizer", str(tok_dir), "--data", str(corpus_dir),
            "--out", str(tmp_path / "moe"), "--steps", "2", "--seq-len", "16", "--batch-size", "2",
            "--save-every", "0", "--threads", "1", "--heldout-every", "4", "--eval-batches", "1",
            "--set", "hidden_size=32", "--set", "num_hidden_layers=2",
            "--set", "moe_intermediate_size=16", "--set", "intermediate_size=32", "--set", "kv_lora_rank=16",
            "--set", "qk_nope_head_dim=8", "--set", "qk_rope_head_dim=8", "--set", "v_head_dim=8"]
    assert cli_main(args) == 0
    rows = read_metrics(tmp_path / "moe" / "metrics.jsonl")
    assert len(rows) == 2 and rows[0]["aux_loss"] > 0 and rows[0]["expert_max_over_mean"] >= 1.0
    assert rows[-1]["eval_loss"] > 0
    assert json.loads((tmp_path / "moe" / "final" / "config.json").read_text())["model_type"] == "deepseek_v2"


def test_init_from_for_long_context(straight, tok_dir, corpus_dir, tmp_path):
    """v1 §3.6: same command from a checkpoint, longer sequences, RoPE x4 and theta 1e5."""
    out = tmp_path / "long"
    args = ["pretrain", "--preset", "tiny", "--init-from", str(straight / "final"), "--tokenizer", str(tok_dir),
            "--data", str(corpus_dir), "--out", str(out), "--steps", "1", "--seq-len", "160", "--batch-size", "1",
            "--rope-scaling-factor", "4", "--rope-theta", "100000", "--save-every", "0", "--threads", "1"]
    assert cli_main(args) == 0
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert cfg["rope_parameters"]["factor"] == 4.0 and cfg["rope_theta"] == 100000.0
    before, after = weights(straight / "final"), weights(out / "final")
    # started from the checkpoint: one small step away from it, not a fresh init
    assert all((before[k] - after[k]).abs().max() < 0.05 for k in before)
