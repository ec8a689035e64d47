"""Helpers for the tests that run `dscoder pretrain` as a real process (imported by conftest.py and the tests)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

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


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))
