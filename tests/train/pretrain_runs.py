"""Helpers for the tests that run `dscoder pretrain` as a real process (imported by conftest.py and the tests)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from dscoder.train.metrics import read_metrics

# the tiny preset as is (~3M params): a step takes ~50-100 ms on one thread, slow enough to signal mid-run
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def pretrain_args(tok, data, out, steps=12, extra=()) -> list[str]:
    """The reference run's command line: 12 steps, checkpoints every 4, eval every 6."""
    return ["pretrain", "--preset", "tiny", "--tokenizer", str(tok), "--data", str(data), "--out", str(out),
            "--steps", str(steps), "--seq-len", "64", "--batch-size", "4", "--save-every", "4", "--lr", "3e-3",
            "--warmup", "2", "--seed", "5", "--threads", "1", "--eval-every", "6", "--heldout-every", "8",
            *extra]


def run_cli(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dscoder.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=240, **kw)


def start_cli(args, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dscoder.cli", *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=stderr, text=True)


def wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float = 180) -> None:
    """Return once `metrics` logs `step`; fail if the process ends or stalls first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any(r["step"] >= step for r in read_metrics(metrics)):
            return
        time.sleep(0.02)
    raise AssertionError(f"the run ended (rc {proc.poll()}) or stalled before step {step}")


def kill_at_step(args, out: Path, step: int) -> None:
    """Run `dscoder ARGS` and SIGKILL it once OUT/metrics.jsonl logs `step`, while it is still training."""
    proc = start_cli(args)
    wait_for_step(proc, out / "metrics.jsonl", step)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))
