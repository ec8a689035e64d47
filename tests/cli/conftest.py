"""Shared pieces of the CLI tables: one tiny tokenizer + random checkpoint built once per session, and `check`, which
runs one table row as a real `python -m dscoder.cli` subprocess and asserts the promise every verb makes: exit
status as expected, no traceback, an error is exactly one `dscoder VERB: error: ...` line, and nothing is left
behind where the row says nothing may be written.

A row is `Row(argv, code, message, files=..., stdin=..., absent=...)`. argv items and file names may hold
`{ckpt}`, `{badckpt}`, `{tok}`, `{corpus}`, `{bench}`, `{run}` (the session fixtures) and `{tmp}` (the row's own
folder); an argv item given as bytes is passed as raw bytes (how a shell passes a non-UTF-8 argument).
`prepare(env, tmp)` runs before the row, for inputs that are made rather than written (a damaged run folder).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tests" / "fixtures" / "benchmarks"      # the benchmark files the eval tests use


def _train_conftest():
    """tests/train/conftest.py (its `make_corpus` writes the small synthetic Python corpus the training tests use)."""
    folder = ROOT / "tests" / "train"
    spec = importlib.util.spec_from_file_location("train_conftest", folder / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))         # it imports its neighbours as pytest would let it
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(folder))
    return mod


@dataclass
class Row:
    argv: list
    code: int
    message: str = ""                               # a substring of the one error line (code != 0)
    files: dict = field(default_factory=dict)       # name -> bytes or str, created under {tmp} before the run
    stdin: bytes = b""
    absent: tuple = ()                              # paths that must not exist afterwards
    progress: bool = False                          # lines before the error may be progress reports
    prepare: Callable | None = None                 # prepare(env, tmp), before the run
    id: str = ""


@dataclass
class Env:
    corpus: Path
    tok: Path
    ckpt: Path
    badckpt: Path
    run: Path | None = None                         # set by the `pretrained_run` fixture

    def fill(self, text: str, tmp: Path) -> str:
        return text.format(ckpt=self.ckpt, badckpt=self.badckpt, tok=self.tok, corpus=self.corpus, tmp=tmp,
                           bench=BENCH, run=self.run)


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> Env:
    """A synthetic corpus, a 300-token BPE tokenizer trained on it, and a tiny random Llama checkpoint (context 64)
    holding that tokenizer, and a copy of it whose weights file is cut in half: built once."""
    import torch

    from dscoder.models.hf import build_model, save_pretrained
    from dscoder.models.presets import get_preset
    from dscoder.tokenizer.bpe import train_tokenizer

    base = tmp_path_factory.mktemp("cli")
    corpus = _train_conftest().make_corpus(base / "corpus", n_files=16)
    tok = base / "tok"
    texts = [p.read_text() for p in sorted(corpus.glob("*.py"))]
    train_tokenizer(texts, 300, tok)
    ckpt = base / "ckpt"
    shutil.copytree(tok, ckpt)
    torch.manual_seed(0)
    cfg = get_preset("tiny", vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    save_pretrained(build_model(cfg), ckpt)
    bad = base / "badckpt"
    shutil.copytree(ckpt, bad)
    weights = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    return Env(corpus=corpus, tok=tok, ckpt=ckpt, badckpt=bad)


# a pretraining run small enough for seconds on a CPU: 2 steps, a checkpoint after each, then OUT/final
PRETRAIN = ["pretrain", "--preset", "tiny", "--tokenizer", "{tok}", "{corpus}", "--steps", "2", "--seq-len", "32",
            "--batch-size", "2", "--heldout-every", "4", "--eval-batches", "1", "--workers", "1",
            "--set", "num_hidden_layers=1", "--set", "hidden_size=32", "--set", "intermediate_size=64",
            "--set", "num_attention_heads=2", "--set", "num_key_value_heads=1"]


@pytest.fixture(scope="session")
def pretrained_run(cli_env, tmp_path_factory) -> Path:
    """OUT of a finished 2-step run (checkpoints/step-1, step-2, final/); `{run}` in rows. Rows copy it first."""
    base = tmp_path_factory.mktemp("run")
    r = run_cli([cli_env.fill(a, base) for a in PRETRAIN] + ["--save-every", "1", "--out", str(base / "run")], base)
    assert r.returncode == 0, r.stderr.decode()
    cli_env.run = base / "run"
    return cli_env.run


def copy_run(env: Env, tmp: Path) -> Path:
    """A private copy of the finished run at {tmp}/run."""
    shutil.copytree(env.run, tmp / "run")
    return tmp / "run"


def flip_byte(path: Path, at: float = 0.75) -> None:
    """Change one byte well inside `path` (its size and any header stay as they were)."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def run_cli(argv: list, cwd: Path, stdin: bytes = b"", timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("DSCODER_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dscoder.cli", *argv], input=stdin, capture_output=True, cwd=cwd,
                          env=env, timeout=timeout)


def check(row: Row, env: Env, tmp: Path) -> subprocess.CompletedProcess:
    """Run `row`; assert its exit status, the single error line and the files that must not exist."""
    if row.prepare is not None:
        row.prepare(env, tmp)
    for name, content in row.files.items():
        path = Path(env.fill(name, tmp))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    argv = [a if isinstance(a, bytes) else env.fill(a, tmp) for a in row.argv]
    r = run_cli(argv, tmp, row.stdin)
    err = r.stderr.decode("utf-8", "replace")
    verb = " ".join(argv[:2]) if argv[0] in ("data", "tokenizer") else argv[0]
    assert "Traceback" not in err, err
    assert r.returncode == row.code, f"exit {r.returncode}, expected {row.code}; stderr:\n{err}"
    if row.code:
        lines = [line for line in err.splitlines() if line.strip()]
        if row.progress:        # a verb that reports progress before it finds the input empty
            assert lines and not any("error" in line for line in lines[:-1]), err
            lines = lines[-1:]
        assert len(lines) == 1, f"expected one error line, got:\n{err}"
        assert lines[0].startswith(f"dscoder {verb}: error: "), lines[0]
        message = env.fill(row.message, tmp)
        assert message in lines[0], f"{message!r} not in {lines[0]!r}"
    for name in row.absent:
        path = Path(env.fill(name, tmp))
        assert not path.exists(), f"{path} was written"
    return r


def ids(rows: list[Row]) -> list[str]:
    return [r.id or " ".join(str(a) for a in r.argv)[:60] for r in rows]
