"""The recall iterations of DeepSeekMath §2.1, used by DeepSeek-Coder-V2 §2 for code- and math-related web text.

Each iteration:
1. train fastText on the seed (positives) against a sample of the pool (negatives): as many pool pages as seed
   pages (the paper's first iteration: 500K and 500K), drawn with a fixed seed from pool pages that are neither
   in the seed nor recalled by the previous iteration (so that pages already found are not taught as negatives);
2. score every pool page; a page scoring at least `min_score` (P(positive), default 0.5) is recalled (the paper
   ranks pages by score and keeps the top ones; a probability threshold needs no corpus-wide ranking);
3. group the pool by domain: a domain where more than `domain_threshold` (10%) of its pages were recalled is a
   code- (or math-) related domain;
4. annotate URLs automatically where the paper did it by hand (e.g. `mathoverflow.net/questions`): inside a
   related domain, a URL path prefix (`path_prefix`: the first path segment) where more than `domain_threshold` of
   the pages were recalled is annotated;
5. the pool pages under annotated prefixes that the classifier did not recall join the seed of the next
   iteration.

Iterations stop after `iterations`, or earlier when one adds nothing to the seed (the next classifier would learn
from the same positives). The pages the last classifier recalls are selected (as in the paper, annotation only
feeds the seed); a page's `iteration` is the first whose classifier recalled it.
"""
from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .classify import FastTextParams, scores, train, write_training_file
from .extract import path_prefix


@dataclass(frozen=True)
class RecallConfig:
    iterations: int = 3
    domain_threshold: float = 0.1       # DeepSeekMath: "over 10% of the web pages have been collected"
    min_score: float = 0.5
    fasttext: FastTextParams = field(default_factory=FastTextParams)


@dataclass
class RecallResult:
    scores: np.ndarray                  # (N,) last classifier's P(positive) per pool page
    selected: np.ndarray                # (N,) bool, recalled by the last classifier
    iteration: np.ndarray               # (N,) int32, first iteration whose classifier recalled the page; 0 = never
    per_iteration: list[dict]           # counts per iteration, for stats.json and the report
    extra_scores: list[np.ndarray]      # per iteration, the scores of `extra` lines (held-out evaluation)


def related_domains(domains: Sequence[str], recalled: np.ndarray, threshold: float
                    ) -> dict[str, tuple[int, int]]:
    """domain -> (pages, recalled pages) for each domain with recalled / pages > threshold."""
    total: dict[str, int] = defaultdict(int)
    hits: dict[str, int] = defaultdict(int)
    for d, r in zip(domains, recalled.tolist()):
        total[d] += 1
        hits[d] += r
    return {d: (total[d], hits[d]) for d in sorted(total) if hits[d] > threshold * total[d]}


def annotate(urls: Sequence[str], domains: Sequence[str], recalled: np.ndarray, related: set[str] | dict,
             threshold: float) -> dict[tuple[str, str], tuple[int, int]]:
    """(domain, path prefix) -> (pages, recalled) for the prefixes of related domains with recalled share above
    `threshold`: the URL annotation the paper did by hand."""
    total: dict[tuple[str, str], int] = defaultdict(int)
    hits: dict[tuple[str, str], int] = defaultdict(int)
    for u, d, r in zip(urls, domains, recalled.tolist()):
        if d in related:
            key = (d, path_prefix(u))
            total[key] += 1
            hits[key] += r
    return {k: (total[k], hits[k]) for k in sorted(total) if hits[k] > threshold * total[k]}


def _negatives(rng: np.random.Generator, excluded: np.ndarray, n: int) -> np.ndarray:
    cand = np.flatnonzero(~excluded)
    if len(cand) <= n:
        return cand
    return np.sort(rng.choice(cand, size=n, replace=False))


def run_recall(seed_lines: Sequence[str], pool_lines: Sequence[str], urls: Sequence[str], domains: Sequence[str],
               cfg: RecallConfig, seed_in_pool: np.ndarray | None = None, extra: Sequence[str] = (),
               log=None) -> RecallResult:
    """The iterations over tokenized pages (`classify.word_tokenize` or `bpe_tokenizer`); see the module
    docstring. `seed_in_pool[i]` marks pool pages whose URL is a seed page's (never a negative)."""
    n = len(pool_lines)
    rng = np.random.default_rng(cfg.fasttext.seed)
    in_seed = np.zeros(n, bool) if seed_in_pool is None else np.asarray(seed_in_pool, bool)
    positive = in_seed.copy()           # pool pages that are positives: the seed's own, then annotated ones
    first = np.zeros(n, np.int32)
    prev_recalled = np.zeros(n, bool)
    per_iteration, extra_scores = [], []
    s = np.zeros(n, np.float32)
    recalled = prev_recalled
    with tempfile.TemporaryDirectory(prefix="dscoder-fasttext-") as tmp:
        for it in range(1, cfg.iterations + 1):
            t0 = time.monotonic()
            added_idx = np.flatnonzero(positive & ~in_seed)
            pos_lines = list(seed_lines) + [pool_lines[i] for i in added_idx]
            neg_idx = _negatives(rng, positive | prev_recalled, len(pos_lines))
            path = Path(tmp) / f"train-{it}.txt"
            write_training_file(path, pos_lines, [pool_lines[i] for i in neg_idx])
            model = train(path, cfg.fasttext)
            s = scores(model, pool_lines)
            if len(extra):
                extra_scores.append(scores(model, extra))
            del model
            recalled = s >= cfg.min_score
            first[(first == 0) & recalled] = it
            related = related_domains(domains, recalled, cfg.domain_threshold)
            prefixes = annotate(urls, domains, recalled, related, cfg.domain_threshold)
            under = np.array([(d, path_prefix(u)) in prefixes for u, d in zip(urls, domains)], bool)
            new = under & ~recalled & ~positive
            positive |= new
            row = {"iteration": it, "positives": len(pos_lines), "negatives": int(len(neg_idx)),
                   "recalled": int(recalled.sum()), "recalled_new": int((recalled & ~prev_recalled).sum()),
                   "domains_marked": len(related), "prefixes_annotated": len(prefixes),
                   "added_to_seed": int(new.sum()), "seed_next": len(pos_lines) + int(new.sum()),
                   "seconds": round(time.monotonic() - t0, 3),
                   "domains": {d: {"pages": p, "recalled": r} for d, (p, r) in related.items()},
                   "annotated": [f"{d}{p}" for d, p in prefixes]}
            per_iteration.append(row)
            if log is not None:
                log(f"iteration {it}: {row['positives']} seed pages, {row['recalled']} recalled "
                    f"({row['recalled_new']} new), {row['domains_marked']} domain(s) marked, "
                    f"{row['added_to_seed']} page(s) added to the seed")
            prev_recalled = prev_recalled | recalled
            if not new.any():
                break
    return RecallResult(s, recalled, np.where(recalled, first, 0).astype(np.int32), per_iteration, extra_scores)
