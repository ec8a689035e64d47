"""The work units of `dscoder data build` and the functions workers run on them (v1 paper §2).

A source unit (one repository, archive or table) is first listed (`stage_scan`), then cut into chunks of at
most CHUNK_BYTES / CHUNK_FILES of files in path order, so one large repository keeps every worker busy instead of
one. The cut depends only on the file list, never on the worker count, and every per-file result is a function
of the file alone, so the output is the same for any number of workers. Archives and tables can only be read
whole: each is one chunk.

`stage_process` runs the per-file stages over a chunk: read (bad input costs only itself), rule filters [§2.1], quality
[§2.4], decontamination [§2.4] (each file's verdict), then for every file read its exact-dedup key, its
dependency facts [§2.2] and the MinHash signature [§2.3] of its block (`# path` line + content, what a sample
concatenates). The blocks' words are hashed once, in one numpy pass per chunk, for both decontamination (the
content's words) and MinHash (the block's). A component's
signature is the element-wise minimum of its files' signatures: the MinHash of the union of their shingle sets,
i.e. of the concatenated sample without the few shingles that straddle two files, whatever the chunking.
`stage_order` runs Algorithm 1 over one whole repository from those facts (paths and imports only).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .decontam import BenchmarkIndex, build_index, decontaminate
from .document import Drop, RepoFiles
from .filters import apply_filters, content_hash
from .minhash import MinHashParams, Words, signature_matrix, text_words
from .quality import apply_quality
from .readers import DEFAULT_MAX_FILE_BYTES, FileRef, SourceUnit, is_failure, read_refs, read_unit, scan_unit
from .repo_order import FileFacts, concat_files, file_facts, order_facts, path_comment

CHUNK_BYTES = 1 << 20      # file bytes per work unit: ~0.2 CPU-s of stages, small next to a big repository
CHUNK_FILES = 1000


@dataclass(frozen=True)
class BuildConfig:
    """Everything a worker needs; picklable, and its fields are the build's settings in stats.json."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    languages: tuple[str, ...] | None = None
    benchmarks: tuple[str, ...] = ()
    check_syntax: bool = True
    minhash: MinHashParams = field(default_factory=MinHashParams)
    shard_size: int = 10_000
    max_sample_bytes: int | None = None     # split huge dependency components at file boundaries
    chunk_bytes: int = CHUNK_BYTES          # work-unit size: changes the schedule, never the output


@dataclass(frozen=True)
class Chunk:
    """One work unit: listed files of one tree or bare repository, or a whole archive or table (refs None)."""
    unit: SourceUnit
    refs: tuple[FileRef, ...] | None
    last: bool                              # the unit's last chunk: its repositories are complete after it


@dataclass
class RepoPart:
    """The files of one repository that a chunk read, in path order, with what later stages need of them."""
    repo: str
    facts: list[FileFacts]
    nbytes: list[int]                       # content bytes per file
    hashes: list[str]                       # exact-dedup keys
    passed: list[bool]                      # passed the rule filters, quality screen and decontamination
    blocks: list[bytes]                     # UTF-8 `# path\n` + content (+ newline): the sample's pieces
    sigs: np.ndarray                        # (n_files, num_perm) uint32, MinHash of each block
    failed: bool = False                    # the repository is unreliable (broken git store, damaged archive)


@dataclass
class ChunkResult:
    parts: list[RepoPart]
    drops: list[Drop]
    counts: Counter                         # stage -> files entering it
    read_bytes: int
    last: bool                              # the chunk's unit is complete


def chunk_refs(unit: SourceUnit, refs: list[FileRef], chunk_bytes: int = CHUNK_BYTES) -> list[Chunk]:
    """Consecutive runs of `refs` (path order) of at most `chunk_bytes` (a bigger file alone) or CHUNK_FILES."""
    chunks: list[tuple[FileRef, ...]] = []
    cur: list[FileRef] = []
    size = 0
    for r in refs:
        if cur and (size + r.size > chunk_bytes or len(cur) == CHUNK_FILES):
            chunks.append(tuple(cur))
            cur, size = [], 0
        cur.append(r)
        size += r.size
    chunks.append(tuple(cur))                  # a repository with no file still completes (as one empty chunk)
    return [Chunk(unit, c, i == len(chunks) - 1) for i, c in enumerate(chunks)]


def stage_scan(task: tuple[SourceUnit, BuildConfig]) -> tuple[list[Chunk], list[Drop]]:
    """List one source unit: its chunks and the files refused by path or size (stage "read")."""
    unit, cfg = task
    refs, drops = scan_unit(unit, cfg.max_file_bytes, _languages(cfg))
    if refs is None:
        return [Chunk(unit, None, True)], []
    if any(is_failure(d) for d in drops):
        refs = []
    return chunk_refs(unit, refs, cfg.chunk_bytes), drops


_INDEX_CACHE: dict[tuple[str, ...], BenchmarkIndex] = {}


def benchmark_index(paths: tuple[str, ...]) -> BenchmarkIndex:
    """Built once per process and reused for every chunk it screens."""
    if paths not in _INDEX_CACHE:
        _INDEX_CACHE[paths] = build_index(paths)
    return _INDEX_CACHE[paths]


def _languages(cfg: BuildConfig) -> frozenset[str] | None:
    return frozenset(cfg.languages) if cfg.languages is not None else None


def stage_process(task: tuple[Chunk, BuildConfig]) -> ChunkResult:
    """The per-file stages over one chunk (see the module docstring)."""
    chunk, cfg = task
    if chunk.refs is None:
        items = list(read_unit(chunk.unit, cfg.max_file_bytes, _languages(cfg)))
    else:
        items = [read_refs(chunk.unit, chunk.refs, cfg.max_file_bytes, _languages(cfg))]
    counts: Counter = Counter()
    all_drops: list[Drop] = []
    parts, read_bytes = [], 0
    for read, drops in items:
        counts["read"] += len(chunk.refs) if chunk.refs is not None else len(read.files) + len(drops)
        failed = any(is_failure(d) for d in drops)
        read_bytes += sum(f.nbytes for f in read.files)
        counts["filter"] += len(read.files)
        repo, more = apply_filters(read)
        drops += more
        counts["quality"] += len(repo.files)
        repo, more = apply_quality(repo, cfg.check_syntax)
        drops += more
        blocks = [concat_files([f]) for f in read.files]      # what a sample concatenates, file by file
        words = text_words(blocks)                             # hashed once: decontamination and MinHash
        counts["decontam"] += len(repo.files)
        repo, more = decontaminate(repo, benchmark_index(cfg.benchmarks), words, _content_spans(read, repo, words))
        drops += more
        all_drops += drops
        parts.append(_part(read, {f.path for f in repo.files}, blocks, words, cfg, failed))
    return ChunkResult(parts, all_drops, counts, read_bytes, chunk.last)


def _content_spans(read: RepoFiles, kept: RepoFiles, words: Words) -> list[tuple[int, int]]:
    """The words of each kept file's content within `words` (of all read files' blocks): its block's words
    after those of the path comment line."""
    where = {f.path: i for i, f in enumerate(read.files)}
    first = words.first.tolist()
    spans = []
    for f in kept.files:
        i = where[f.path]
        spans.append((first[i] + len(path_comment(f.path, f.language).split()), first[i + 1]))
    return spans


def _part(read: RepoFiles, passed: set[str], blocks: list[str], words: Words, cfg: BuildConfig,
          failed: bool) -> RepoPart:
    """Every file read, screened out or not: a screened-out file still shapes its repository's components and
    signatures, and leaves the samples only after near-dedup (see `data.pipeline`)."""
    return RepoPart(read.repo, [file_facts(f) for f in read.files], [f.nbytes for f in read.files],
                    [content_hash(f.content) for f in read.files], [f.path in passed for f in read.files],
                    [t.encode("utf-8", "surrogatepass") for t in blocks],
                    signature_matrix(blocks, cfg.minhash, words), failed)


def stage_order(facts: list[FileFacts]) -> list[list[int]]:
    """Algorithm 1 over one repository: groups of indices into `facts`, each in dependency order."""
    where = {f.path: i for i, f in enumerate(facts)}
    return [[where[p] for p in group] for group in order_facts(facts)]
