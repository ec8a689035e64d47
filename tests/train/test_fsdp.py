"""`pretrain --fsdp` under torchrun with 2 processes (gloo on CPU): it matches one process, resumes exactly after a
SIGKILL of the whole job, and its final folder loads with `dscoder.load_model`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pretrain_runs import ENV, pretrain_args, weights

from dscoder.cli import main as cli_main
from dscoder.train.metrics import read_metrics

# 8 steps, gradient accumulation over 2 micro-batches, checkpoints at 4 and 8; activation checkpointing on, so the
# whole documented order (checkpointing, then FSDP2) runs
EXTRA = ["--grad-accum", "2", "--activation-checkpointing"]


def _torchrun(tok, data, out, extra=()):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "dscoder.cli", *pretrain_args(tok, data, out, steps=8, extra=[*EXTRA, "--fsdp", *extra])]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, tok_dir, corpus_dir) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    r = subprocess.run(_torchrun(tok_dir, corpus_dir, out), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_fsdp_two_processes_match_one_process(fsdp_run, tok_dir, corpus_dir, tmp_path):
    single = tmp_path / "single"
    # the one-process reference runs in this process (the same `dscoder pretrain`, one thread, no second import)
    assert cli_main(pretrain_args(tok_dir, corpus_dir, single, steps=8, extra=["--grad-accum", "2"])) == 0
    ref, got = read_metrics(single / "metrics.jsonl"), read_metrics(fsdp_run / "metrics.jsonl")
    assert [x["step"] for x in got] == list(range(1, 9))
    for a, b in zip(ref, got):
        # fp32 sums in another order: losses agree to ~1e-7, the grad norm (a sum over every parameter) to ~1e-4
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] / b["grad_norm"] - 1) < 5e-4, a["step"]
        assert a.get("eval_loss") is None or abs(a["eval_loss"] - b["eval_loss"]) < 1e-5
    import dscoder
    model = dscoder.load_model(fsdp_run / "final")
    w_single = weights(single / "final")
    assert all(torch.allclose(w_single[k], v, atol=1e-4) for k, v in model.state_dict().items() if k in w_single)
    assert sorted(p.name for p in (fsdp_run / "checkpoints").iterdir()) == ["step-00000004", "step-00000008"]


@pytest.mark.slow
def test_fsdp_resume_after_sigkill_is_exact(fsdp_run, tok_dir, corpus_dir, tmp_path):
    out = tmp_path / "killed"
    job = subprocess.Popen(_torchrun(tok_dir, corpus_dir, out), env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    metrics, deadline = out / "metrics.jsonl", time.time() + 240
    try:
        while time.time() < deadline and job.poll() is None:
            if metrics.exists() and any(r["step"] >= 5 for r in read_metrics(metrics)):
                break
            time.sleep(0.02)
        assert job.poll() is None, "the job ended before it could be killed"
    finally:
        os.killpg(job.pid, signal.SIGKILL)      # the launcher and both ranks at once
        job.wait()
    assert not (out / "final").exists()
    r = subprocess.run(_torchrun(tok_dir, corpus_dir, out, extra=["--resume"]), env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = read_metrics(fsdp_run / "metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert [(x["step"], x["loss"], x["grad_norm"], x.get("eval_loss")) for x in got] == \
        [(x["step"], x["loss"], x["grad_norm"], x.get("eval_loss")) for x in ref]
    a, b = weights(fsdp_run / "final"), weights(out / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
