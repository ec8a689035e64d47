"""Run control of `dscoder pretrain`, with real processes: SIGTERM checkpoints and resumes exactly; --resume never
moves backward and refuses damaged checkpoint sets; a finished run extends from its last checkpoint; leftovers of
killed saves are cleaned; one run per folder; bad input leaves no folder behind.

Runs that train are real processes (signals, torchrun, exact resume); refusals that stop before the first step call
`dscoder.cli.main` in this process (the same code path, without a second torch import per case)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pretrain_runs import ENV, copy_run, pretrain_args, run_cli, start_cli, wait_for_step, weights

from dscoder.cli import main as cli_main
from dscoder.train.checkpoint import verify
from dscoder.train.metrics import read_metrics


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file under a run folder, by relative path (checkpoints included: nothing may change)."""
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}



@pytest.mark.slow
def test_sigterm_checkpoints_then_resume_is_exact(straight, tok_dir, corpus_dir, tmp_path, capsys):
    out = tmp_path / "term"
    proc = start_cli(pretrain_args(tok_dir, corpus_dir, out), stderr=subprocess.PIPE)
    wait_for_step(proc, out / "metrics.jsonl", 5)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)          # a second signal while it winds down is ignored
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    step = read_metrics(out / "metrics.jsonl")[-1]["step"]
    assert 5 <= step < 12 and f"stopped by SIGTERM at step {step}/12" in err and "--resume" in err
    ck = out / "checkpoints" / f"step-{step:08d}"
    assert verify(ck) is None and not (out / "final").exists()
    # a checkpoint at step N: --steps below it would move the run backward
    before = _snapshot(out)
    assert cli_main(pretrain_args(tok_dir, corpus_dir, out, steps=step - 1, extra=["--resume"])) == 2
    msg = capsys.readouterr().err
    assert f"--steps {step - 1}" in msg and f"step {step}" in msg and _snapshot(out) == before
    r = run_cli(pretrain_args(tok_dir, corpus_dir, out, extra=["--resume"]))
    assert r.returncode == 0, r.stderr
    ref = read_metrics(straight / "metrics.jsonl")
    got = read_metrics(out / "metrics.jsonl")
    assert [(x["step"], x["loss"], x["grad_norm"]) for x in got] == [(x["step"], x["loss"], x["grad_norm"])
                                                                     for x in ref]
    a, b = weights(straight / "final"), weights(out / "final")
    assert all(a[k].equal(b[k]) for k in a)


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_once_for_all_ranks(tok_dir, corpus_dir, tmp_path):
    """What a scheduler does: SIGTERM to the launcher, which forwards it to both ranks; they agree on the step,
    write one complete checkpoint there, and exit."""
    out = tmp_path / "ddp"
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "dscoder.cli", *pretrain_args(tok_dir, corpus_dir, out, steps=200)],
                           env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_step(job, out / "metrics.jsonl", 3)
    job.send_signal(signal.SIGTERM)
    err = job.communicate(timeout=120)[1]
    assert job.returncode != 0                    # torchrun reports the signal it got
    step = read_metrics(out / "metrics.jsonl")[-1]["step"]
    assert f"stopped by SIGTERM at step {step}/200" in err, err[-3000:]
    assert verify(out / "checkpoints" / f"step-{step:08d}") is None and not (out / "final").exists()


def test_resume_below_a_finished_run_is_refused_and_touches_nothing(straight, tok_dir, corpus_dir, tmp_path, capsys):
    run = copy_run(straight, tmp_path / "run")
    before = _snapshot(run)
    for steps in (6, 11):                     # below the newest checkpoint and final/ (both step 12)
        assert cli_main(pretrain_args(tok_dir, corpus_dir, run, steps=steps, extra=["--resume"])) == 2
        err = capsys.readouterr().err
        assert f"--resume --steps {steps}" in err and "already holds step 12" in err and "backward" in err
        assert _snapshot(run) == before


@pytest.mark.slow
def test_finished_run_extends_from_its_last_checkpoint_and_cleans_leftovers(straight, tok_dir, corpus_dir, tmp_path):
    run = copy_run(straight, tmp_path / "run")
    # what killed saves and deletes leave behind
    (run / "checkpoints" / ".trash-step-00000002").mkdir()
    (run / "checkpoints" / ".trash-step-00000002" / "config.json").write_text("{}")
    (run / "checkpoints" / "step-00000016.tmp").mkdir()
    (run / "final.tmp").mkdir()
    r = run_cli(pretrain_args(tok_dir, corpus_dir, run, steps=14, extra=["--resume"]))
    assert r.returncode == 0, r.stderr
    assert "removed leftovers" in r.stderr and "final.tmp" in r.stderr
    assert not (run / "final.tmp").exists() and not (run / "checkpoints" / ".trash-step-00000002").exists()
    ref = (straight / "metrics.jsonl").read_text().splitlines()
    got = (run / "metrics.jsonl").read_text().splitlines()
    assert got[:12] == ref and [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 15))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000008", "step-00000012",
                                                                        "step-00000014"]
    import json
    assert json.loads((run / "summary.json").read_text())["steps"] == 14
    assert json.loads((run / "final" / "manifest.json").read_text())["step"] == 14


def test_resume_with_every_checkpoint_damaged_exits_2_and_touches_nothing(straight, tok_dir, corpus_dir, tmp_path,
                                                                         capsys):
    run = copy_run(straight, tmp_path / "run")
    ck = run / "checkpoints"
    w = ck / "step-00000012" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-64])                           # truncated
    raw = bytearray((ck / "step-00000008" / "train_state.pt").read_bytes())
    raw[-30] ^= 0xFF                                              # one flipped byte
    (ck / "step-00000008" / "train_state.pt").write_bytes(bytes(raw))
    (ck / "step-00000004" / "manifest.json").unlink()             # killed before the manifest
    before = _snapshot(run)
    assert cli_main(pretrain_args(tok_dir, corpus_dir, run, steps=16, extra=["--resume"])) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dscoder pretrain: error: --resume: no usable checkpoint under")
    assert "step-00000012: model.safetensors: size" in err
    assert "step-00000008: train_state.pt: sha256 mismatch" in err
    assert "step-00000004: no manifest.json" in err
    assert _snapshot(run) == before


@pytest.mark.slow
def test_second_run_into_the_same_folder_exits_2_naming_the_holder(tok_dir, corpus_dir, tmp_path, capsys):
    out = tmp_path / "busy"
    first = start_cli(pretrain_args(tok_dir, corpus_dir, out, steps=200), stderr=subprocess.PIPE)
    try:
        wait_for_step(first, out / "metrics.jsonl", 1)
        assert cli_main(pretrain_args(tok_dir, corpus_dir, out, steps=200, extra=["--resume"])) == 2
        err = capsys.readouterr().err
        assert f"in use by pid {first.pid}" in err and first.poll() is None, err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143


BAD_INPUTS = {
    "keep-last 0": ["--keep-last", "0"],
    "warmup -1": ["--warmup", "-1"],
    "lr nan": ["--lr", "nan"],
    "batch not divisible": ["--grad-accum", "3"],
    "unknown --set field": ["--set", "no_such_field=1"],
    "tokenizer missing": ["--tokenizer", "/nonexistent/tok"],
    "data missing": ["--data", "/nonexistent/corpus"],
}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dscoder pretrain: error: "), err
    return lines[0]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_leaves_no_folder(tok_dir, corpus_dir, tmp_path, case, capsys):
    out = tmp_path / "never"
    assert cli_main(pretrain_args(tok_dir, corpus_dir, out, extra=BAD_INPUTS[case])) == 2
    _one_error_line(capsys)
    assert not out.exists()


def test_error_after_the_folder_is_taken_removes_it(straight, tok_dir, corpus_dir, tmp_path, capsys):
    """--init-from weights that do not fit the model are found while the model is built (the folder is locked by
    then): the folder this run created is removed again."""
    out = tmp_path / "never"
    assert cli_main(pretrain_args(tok_dir, corpus_dir, out, extra=["--init-from", str(straight / "final"),
                                                               "--set", "intermediate_size=64"])) == 2
    assert "weights do not fit" in _one_error_line(capsys)
    assert not out.exists()
