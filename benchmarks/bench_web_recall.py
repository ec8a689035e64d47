"""Quality and speed of the web recall (`dscoder data web`) on the embedded default crawl.

Trains the recall iterations on the default crawl (generator seed 0) and scores a held-out crawl from another
generator seed (pages no classifier saw) with every iteration's classifier. Prints, per iteration: precision and
recall of "code" (python, rust-book, rust-std pages) on the held-out split at --min-score, and recall per group,
so the domain that iteration 1 misses and iteration 2 recovers is visible. Speed, in pages per CPU-second of this
process (per core; process CPU time, so other load on the machine does not inflate it): reading (warcio + charset
+ Resiliparse main text), tokenizing, fastText training per iteration, fastText scoring.

    .venv/bin/python benchmarks/bench_web_recall.py [--scale 1] [--tokens words|bpe] [--buckets 200000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from dscoder.data.web.classify import FastTextParams, bpe_tokenizer, word_tokenize
from dscoder.data.web.default_corpus import CODE_GROUPS, write_default_corpus
from dscoder.data.web.pages import plan_inputs, read_pages
from dscoder.data.web.recall import RecallConfig, run_recall


def _cpu(fn, *a):
    t = time.process_time()
    out = fn(*a)
    return out, time.process_time() - t


def _read(path: Path):
    (unit,) = plan_inputs([path], "pool")
    return read_pages(unit)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=1, help="pool pages = scale x the default corpus's 1080")
    ap.add_argument("--tokens", choices=("words", "bpe"), default="words")
    ap.add_argument("--buckets", type=int, default=200_000, help="fastText n-gram buckets (default of the verb: 2M)")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--min-score", type=float, default=0.5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train_c = write_default_corpus(Path(tmp) / "train", seed=0, scale=args.scale)
        held_c = write_default_corpus(Path(tmp) / "held", seed=1, scale=args.scale)
        seed, _ = _cpu(_read, train_c["seed"])
        pool, read_s = _cpu(_read, train_c["pool"])
        held = _read(held_c["pool"])
        if args.tokens == "bpe":
            from dscoder.tokenizer.bpe import train_tokenizer
            train_tokenizer([p.text for p in seed + pool[:300]], 1000, Path(tmp) / "tok")
            tokenize = bpe_tokenizer(Path(tmp) / "tok")
        else:
            tokenize = word_tokenize
        pool_lines, tok_s = _cpu(tokenize, [p.text for p in pool])
        cfg = RecallConfig(iterations=args.iterations, min_score=args.min_score,
                           fasttext=FastTextParams(buckets=args.buckets))
        t0 = time.process_time()
        res = run_recall(tokenize([p.text for p in seed]), pool_lines, [p.url for p in pool], [p.domain for p in pool],
                         cfg, extra=tokenize([p.text for p in held]))
        recall_s = time.process_time() - t0
    groups = np.array([held_c["labels"][p.url] for p in held])
    truth = np.isin(groups, CODE_GROUPS)
    print(f"default crawl x{args.scale}: {len(seed)} seed pages, {len(pool)} pool pages, {len(held)} held-out pages "
          f"({int(truth.sum())} code); tokens: {args.tokens}; fastText dim 256, lr 0.1, wordNgrams 3, minCount 3, "
          f"epoch 3, buckets {args.buckets}")
    names = sorted(set(groups))
    print(f"{'iter':>4} {'precision':>9} {'recall':>6}  " + " ".join(f"{g:>9}" for g in names))
    for k, s in enumerate(res.extra_scores, 1):
        pred = s >= args.min_score
        tp = int((pred & truth).sum())
        prec = tp / max(int(pred.sum()), 1)
        rec = tp / max(int(truth.sum()), 1)
        print(f"{k:>4} {prec:>9.3f} {rec:>6.3f}  " + " ".join(f"{pred[groups == g].mean():>9.2f}" for g in names))
    print("pool per iteration: " + "; ".join(f"it{r['iteration']} recalled {r['recalled']}, added {r['added_to_seed']}"
                                             for r in res.per_iteration))
    n_it = len(res.per_iteration)
    print(f"speed (pages per CPU-second, one core): read+extract {len(pool) / read_s:.0f}, tokenize "
          f"{len(pool) / tok_s:.0f}, one recall iteration (train + score {len(pool) + len(held)} pages) "
          f"{recall_s / n_it:.2f} s")


if __name__ == "__main__":
    main()
