"""The fastText page classifier of the recall iterations (DeepSeekMath §2.1; DeepSeek-Coder-V2 §2).

Defaults are DeepSeekMath's: "vector dimension 256, learning rate 0.1, the maximum length of word n-gram 3, the
minimum number of word occurrences 3, and the number of training epochs 3". A page becomes one fastText line,
`__label__pos` or `__label__neg` followed by its tokens. With a tokenizer (`--tokenizer DIR`, the project's BPE),
tokens are BPE ids: Coder-V2 tokenizes with DeepSeek-V2's BPE "which significantly improves the recall accuracy of
fastText" for text that spaces do not split (Chinese). Without one, tokens are words and single punctuation marks
(`\\w+|[^\\w\\s]`), so code's `(`, `:`, `->`, `{` count.

Training runs on one thread with a fixed seed: fastText's multi-threaded SGD is not reproducible, and a rerun of
`data web` after a crash must score every page as the first run did. fastText's own `predict` fails under numpy 2
(`np.array(copy=False)`), so scores come from the underlying `multilinePredict`, asked for the top label only
(asked for two, fastText-wheel 0.9.2 returns the top probability twice).
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import UserError

POS, NEG = "__label__pos", "__label__neg"
MAX_TOKENS = 4096        # tokens of a page kept for fastText: the page's opening is what classifies it
_WORDS = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class FastTextParams:
    dim: int = 256
    lr: float = 0.1
    word_ngrams: int = 3
    min_count: int = 3
    epoch: int = 3
    buckets: int = 2_000_000      # fastText's default hash buckets for word n-grams: 2M x dim floats (2 GB at 256)
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.dim, self.word_ngrams, self.min_count, self.epoch, self.buckets) < 1 or not self.lr > 0:
            raise UserError(f"fastText parameters must be positive: {self}")


Tokenize = Callable[[Sequence[str]], list[str]]


def word_tokenize(texts: Sequence[str]) -> list[str]:
    """Pages -> fastText lines of words and punctuation marks, at most MAX_TOKENS each."""
    return [" ".join(_WORDS.findall(t)[:MAX_TOKENS]) for t in texts]


def bpe_tokenizer(folder: str | os.PathLike) -> Tokenize:
    """Pages -> fastText lines of BPE token ids (`t123`), from a tokenizer folder (`dscoder tokenizer train`)."""
    from ...tokenizer.bpe import load_tokenizer

    backend = load_tokenizer(folder).backend_tokenizer

    def tokenize(texts: Sequence[str]) -> list[str]:
        encs = backend.encode_batch(list(texts), add_special_tokens=False)
        return [" ".join(f"t{i}" for i in e.ids[:MAX_TOKENS]) for e in encs]
    return tokenize


def write_training_file(path: Path, positives: Sequence[str], negatives: Sequence[str]) -> None:
    """fastText's supervised format, positives then negatives (fastText shuffles nothing itself: SGD follows the
    file, so the lines alternate to keep either class from ending an epoch)."""
    lines = [(POS, x) for x in positives]
    neg = [(NEG, x) for x in negatives]
    merged: list[tuple[str, str]] = []
    i = j = 0
    while i < len(lines) or j < len(neg):      # interleave in proportion to the class sizes
        if j >= len(neg) or (i < len(lines) and i * max(len(neg), 1) <= j * max(len(lines), 1)):
            merged.append(lines[i])
            i += 1
        else:
            merged.append(neg[j])
            j += 1
    with open(path, "w", encoding="utf-8") as f:
        for label, tokens in merged:
            f.write(f"{label} {tokens}\n")


def train(path: Path, params: FastTextParams):
    """A fastText supervised model from a training file (see `write_training_file`)."""
    import fasttext

    return fasttext.train_supervised(str(path), dim=params.dim, lr=params.lr, wordNgrams=params.word_ngrams,
                                     minCount=params.min_count, epoch=params.epoch, bucket=params.buckets,
                                     seed=params.seed, thread=1, verbose=0)


def scores(model, lines: Sequence[str], batch: int = 4096) -> np.ndarray:
    """P(positive) of each tokenized page, shape (N,) float32."""
    out = np.zeros(len(lines), np.float32)
    for a in range(0, len(lines), batch):
        labels, probs = model.f.multilinePredict(list(lines[a:a + batch]), 1, 0.0, "strict")
        for k, (ls, ps) in enumerate(zip(labels, probs)):
            p = float(ps[0])                    # two labels: P(pos) = 1 - P(neg)
            out[a + k] = p if ls[0] == POS else 1.0 - p
    return out
