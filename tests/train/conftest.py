"""Shared fixtures for the training tests: a small synthetic Python corpus and a tokenizer trained on it."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from pretrain_runs import pretrain_args, run_cli

NAMES = ["alpha", "beta", "gamma", "delta", "total", "count", "items", "value", "index", "result", "buffer", "node"]
OPS = ["+", "-", "*", "//", "%"]


def make_corpus(root: Path, n_files: int = 40, seed: int = 0) -> Path:
    """Small, varied, learnable Python files (deterministic)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        lines = [f'"""Module {i}: helpers for {rng.choice(NAMES)} handling."""', "import math", ""]
        for j in range(rng.randint(2, 4)):
            a, b = rng.sample(NAMES, 2)
            lines += [f"def {a}_{b}_{j}({a}, {b}):",
                      f'    """Combine {a} and {b}."""',
                      f"    {a} = {a} {rng.choice(OPS)} {rng.randint(1, 9)}",
                      f"    for _ in range({rng.randint(2, 5)}):",
                      f"        {b} = {b} {rng.choice(OPS)} {a}",
                      f"    return {a} {rng.choice(OPS)} {b}", ""]
        (root / f"mod_{i:03d}.py").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "src")


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory, corpus_dir) -> Path:
    """A byte-level BPE tokenizer (DeepSeek special tokens) trained on the corpus: a few hundred tokens."""
    from dscoder.tokenizer.bpe import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    texts = [p.read_text() for p in sorted(corpus_dir.glob("*.py"))]
    train_tokenizer(texts, 400, out)
    return out


@pytest.fixture(scope="session")
def straight(tmp_path_factory, tok_dir, corpus_dir) -> Path:
    """One uninterrupted 12-step `pretrain_args` run: the reference for the resume, signal and torchrun tests.
    Tests that write into a run folder work on a copy (`pretrain_runs.copy_run`)."""
    out = tmp_path_factory.mktemp("straight")
    r = run_cli(pretrain_args(tok_dir, corpus_dir, out))
    assert r.returncode == 0, r.stderr
    return out
