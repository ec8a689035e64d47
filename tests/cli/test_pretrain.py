"""`dscoder pretrain` table, and the run-folder lock between two real processes."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import PRETRAIN, Row, check, copy_run, flip_byte, ids

BASE = [*PRETRAIN, "--save-every", "0"]
RUN = [*BASE, "--out", "{tmp}/run"]

ROWS = [
    Row([*RUN, "--lr", "nan"], 2, "argument --lr: expected a finite number, got 'nan'", absent=["{tmp}/run"],
        id="--lr nan"),
    Row([*RUN, "--warmup", "-1"], 2, "argument --warmup: must be >= 0, got '-1'", absent=["{tmp}/run"],
        id="--warmup -1"),
    Row([*RUN, "--set", "num_hidden_layers=two"], 2, "num_hidden_layers takes an integer, got 'two'",
        absent=["{tmp}/run"], id="string in --set"),
    Row([*RUN, "--set", "num_layers=2"], 2, "unknown field(s) num_layers", absent=["{tmp}/run"],
        id="unknown config field"),
    Row([*BASE, "--out", "{tmp}/afile"], 2, "'{tmp}/afile' exists and is not a folder", {"{tmp}/afile": "x"},
        id="--out is a file"),
    Row(["pretrain", "--preset", "tiny", "--tokenizer", "{tok}", "{tmp}/empty", "--out", "{tmp}/run", "--steps", "2",
         "--seq-len", "32", "--batch-size", "2"], 2, "no usable documents", {"{tmp}/empty/blob.py": b"\x00\xff"},
        absent=["{tmp}/run"], id="empty corpus"),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_pretrain(row, cli_env, tmp_path):
    check(row, cli_env, tmp_path)


def _damage_every_checkpoint(env, tmp):
    for weights in sorted(copy_run(env, tmp).glob("checkpoints/step-*/model.safetensors")):
        flip_byte(weights)


# rows on a finished 2-step run (copied first): refusals leave it as it was
RESUME_ROWS = [
    Row([*BASE, "--out", "{tmp}/run", "--resume", "--steps", "1"], 2, "would move the run backward",
        prepare=copy_run, id="resume backward"),
    Row([*BASE, "--out", "{tmp}/run", "--resume", "--steps", "3"], 2, "no usable checkpoint",
        prepare=_damage_every_checkpoint, absent=["{tmp}/run/checkpoints/step-3", "{tmp}/run/.lock"],
        id="resume with every checkpoint damaged"),
    Row([*BASE, "--out", "{tmp}/run"], 2, "already holds a run", prepare=copy_run, absent=["{tmp}/run/.lock"],
        id="a finished run without --resume"),
]


@pytest.mark.parametrize("row", RESUME_ROWS, ids=ids(RESUME_ROWS))
def test_pretrain_resume(row, cli_env, pretrained_run, tmp_path):
    check(row, cli_env, tmp_path)


def _spawn(argv: list[str], cwd) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "dscoder.cli", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_second_run_on_a_locked_folder_is_refused_and_sigkill_leaves_no_lock(cli_env, tmp_path):
    """A holds OUT (a long run); B on the same OUT exits 2 naming A's pid and writes nothing; once A is killed
    with SIGKILL its lock is gone with it: the next process takes the folder at once."""
    out = tmp_path / "run"
    argv = [cli_env.fill(a, tmp_path) for a in BASE] + ["--out", str(out)]
    steps = argv.index("--steps") + 1
    a = _spawn(argv[:steps] + ["100000"] + argv[steps + 1:], tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file():    # A holds the lock and has logged its first step
            assert a.poll() is None, a.stderr.read().decode()
            assert time.monotonic() < deadline, "the first run never started training"
            time.sleep(0.2)
        assert (out / ".lock").read_text().strip() == str(a.pid)
        before = sorted(p.name for p in out.iterdir())
        b = _spawn(argv, tmp_path)
        _, err = b.communicate(timeout=120)
        lines = [line for line in err.decode().splitlines() if line.strip()]
        assert b.returncode == 2 and len(lines) == 1, err.decode()
        assert lines[0].startswith("dscoder pretrain: error: ") and f"is in use by pid {a.pid}" in lines[0]
        assert sorted(p.name for p in out.iterdir()) == before
    finally:
        a.send_signal(signal.SIGKILL)
        a.communicate(timeout=60)
    # A's lock file is still there, naming a dead pid; the kernel dropped the lock itself with A
    assert (out / ".lock").read_text().strip() == str(a.pid)
    code = f"from dscoder.durable import lock_run_folder; lock_run_folder({str(out)!r}).release()"
    c = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert c.returncode == 0, c.stderr
    assert not (out / ".lock").exists()
