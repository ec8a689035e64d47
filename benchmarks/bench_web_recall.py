"""Quality and speed of the web recall (`dscoder data web`) on the embedded default crawl.

Trains the recall iterations on the default crawl (generator seed 0) and scores a held-out crawl from another
generator seed (pages no classifier saw) with every iteration's classifier. Prints, per iteration: precision and
recall of "code" (python, rust-book, rust-std pages) on the held-out split at --min-score, and recall per group,
so the domain that iteration 1 misses and iteration 2 recovers is visible. Speed, in pages per CPU-second of this
process (per core; process CPU time, so other load on the machine does not inflate it): reading (warcio + charset
+ Resiliparse main text), tokenizing, fastText training per iteration, fastText scoring.

    .venv/bin/python benchmarks/bench_web_recall.py [--scale 1] [--tokens words|bpe] [--buckets 200000]
    .venv/bin/python benchmarks/bench_web_recall.py --html-dir DIR   # also: read speed on real HTML pages

`--html-dir` packs up to 1000 `*.html` files found under DIR (e.g. a rustup toolchain's share/doc/rust/html) into a
WARC.gz with warcio and times reading it back (warcio + charset + Resiliparse), in pages and MB per CPU-second.
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


def real_html_speed(folder: Path, limit: int = 1000) -> None:
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    files = sorted(folder.rglob("*.html"))[:limit]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "real.warc.gz"
        with open(path, "wb") as f:
            w = WARCWriter(f, gzip=True)
            for k, p in enumerate(files):
                http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
                w.write_record(w.create_warc_record(f"https://docs.test/{k}/{p.name}", "response",
                                                    payload=io.BytesIO(p.read_bytes()), http_headers=http))
        pages, cpu = _cpu(_read, path)
    mb = sum(p.stat().st_size for p in files) / 1e6
    print(f"real HTML: {len(files)} pages ({mb:.1f} MB) from {folder} -> {len(pages)} pages kept; read+extract "
          f"{len(files) / cpu:.0f} pages and {mb / cpu:.1f} MB per CPU-second")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=1, help="pool pages = scale x the default corpus's 1080")
    ap.add_argument("--tokens", choices=("words", "bpe"), default="words")
    ap.add_argument("--buckets", type=int, default=200_000, help="fastText n-gram buckets (default of the verb: 2M)")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--min-score", type=float, default=0.5)
    ap.add_argument("--html-dir", type=Path, default=None, help="also time reading real HTML pages from here")
    args = ap.parse_args()
    if args.html_dir:
        real_html_speed(args.html_dir)
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
