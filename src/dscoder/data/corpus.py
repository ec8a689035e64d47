"""Training documents from disk, for tokenizer training and pretraining, by the rules `dscoder data build` reads
its sources with (data.readers, data.languages): one walker, one decoder, one JSONL/Parquet row reader.

- A folder with a `.jsonl`, `.jsonl.gz` or `.parquet` file at its top level is a shard folder (what `data build`
  writes): every shard under it is read, in sorted order, and nothing else (its stats.json and report.md never
  become training text). In a `data build` output (it has `_done/`) only its `part-*.parquet` shards are read:
  drops.jsonl lists what was dropped, not training text. Shard rows need a string `text`.
- Any other folder is read as `data build` reads a source: repositories (git working trees through
  `git ls-files`, so .gitignore'd files stay out; bare repositories at HEAD), vendored folders and minified files
  skipped, UTF-8 or BOM-marked UTF-16/32 decoded, binary, LFS-pointer, blank and over-cap files skipped, files of
  no known language skipped; files in path order, repository after repository.
- A file given directly: a shard by its suffix, an archive as `data build` reads one, anything else decoded by
  the same decoder whatever its language.

Nothing is skipped silently. A shard line that is not UTF-8, not JSON, not an object or has no string `text`
costs only itself, but is counted: once per file, stderr gets the count and the first line number, and the
caller's `CorpusStats` gets them too; above `max_bad_fraction` (default 1%) of a file's records, UserError.
Skipped source files are counted by reason in `CorpusStats`; a file named directly that is skipped is reported
on stderr. A truncated or corrupt shard is an error.

    stats = CorpusStats()
    for text in iter_documents(["corpus/"], stats=stats):
        ...
    stats.as_dict()      # {"records": ..., "bad_records": ..., "first_bad": ..., "files_skipped": {...}}
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .packed import corrupt_table_errors, iter_table_rows
from .shards import SHARD_GLOB
from .readers import DEFAULT_MAX_FILE_BYTES, SourceUnit, file_kind, iter_repos, read_file, read_unit

MAX_FILE_BYTES = DEFAULT_MAX_FILE_BYTES
MAX_BAD_FRACTION = 0.01


@dataclass
class CorpusStats:
    """What reading the corpus skipped. Keyed by file, so reading the corpus again (a second epoch, a resume)
    counts nothing twice. `shard_files`: path -> (records, bad records, first bad line, its reason);
    `skipped`: source file -> reason; `reported`: files already reported on stderr."""
    shard_files: dict[str, tuple[int, int, int, str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)

    @property
    def records(self) -> int:
        return sum(v[0] for v in self.shard_files.values())

    @property
    def bad_records(self) -> int:
        return sum(v[1] for v in self.shard_files.values())

    def as_dict(self) -> dict:
        """A JSON-ready summary: record counts, the first bad record, bad records per file, skipped files by
        reason."""
        bad = {p: {"records": n, "bad": b, "first_bad_line": line, "first_reason": why}
               for p, (n, b, line, why) in sorted(self.shard_files.items()) if b}
        first = next(iter(bad.items()), None)
        return {"records": self.records, "bad_records": self.bad_records,
                "first_bad": f"{first[0]}:{first[1]['first_bad_line']} ({first[1]['first_reason']})" if first else "",
                "bad_files": bad, "files_skipped": dict(sorted(Counter(self.skipped.values()).items()))}


def _is_shard(path: Path) -> bool:
    return file_kind(path) in ("jsonl", "parquet")


def _shards_under(root: Path) -> list[Path]:
    if (root / "_done").is_dir():     # a `data build` output: its shards only, never drops.jsonl or the report
        return sorted(p for p in root.glob(SHARD_GLOB) if p.is_file() and not p.is_symlink())
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / n for n in sorted(filenames) if _is_shard(Path(n))]
    return sorted((p for p in out if not p.is_symlink()), key=lambda p: p.relative_to(root).parts)


def _shard_texts(path: Path, stats: CorpusStats, max_bad_fraction: float) -> Iterator[str]:
    """The non-blank `text` of each valid record of one shard; bad records counted, reported, bounded."""
    if path.name.lower().endswith(".parquet"):
        import pyarrow.parquet as pq
        try:
            names = pq.read_schema(path).names
        except Exception as e:       # pyarrow raises several types for a corrupt file
            raise UserError(f"{path}: not a readable parquet file ({e})") from e
        if "text" not in names:
            raise UserError(f"{path}: parquet file has no 'text' column (columns: {', '.join(names)})")
    n = bad = first_line = 0
    first_reason = ""
    try:
        for lineno, row, reason in iter_table_rows(path, ["text"]):
            n += 1
            text = row.get("text") if row is not None else None
            if row is not None and not isinstance(text, str):
                reason = "no string 'text' field"
            if reason:
                bad += 1
                first_line, first_reason = (first_line, first_reason) if first_line else (lineno, reason)
                continue
            if text.strip():
                yield text
    except corrupt_table_errors() as e:    # truncated or corrupt: an error, never a silently short epoch
        raise UserError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    key = str(path)
    stats.shard_files[key] = (n, bad, first_line, first_reason)
    if bad and key not in stats.reported:
        stats.reported.add(key)
        print(f"warning: {path}: skipped {bad} of {n} records that are not valid rows with a string 'text' "
              f"(first at line {first_line}: {first_reason})", file=sys.stderr, flush=True)
    if bad > max_bad_fraction * n:
        raise UserError(f"{path}: {bad} of {n} records are not valid rows with a string 'text' (first at line "
                        f"{first_line}: {first_reason}), more than {max_bad_fraction * 100:g}%; fix or remove the file")


def _source_texts(units: Iterator, stats: CorpusStats) -> Iterator[str]:
    for repo, drops in units:
        for d in drops:
            stats.skipped[f"{d.repo}/{d.path}"] = d.reason
        for f in repo.files:
            yield f.content


def _file_texts(path: Path, stats: CorpusStats) -> Iterator[str]:
    """A file named directly: by the readers' decoder whatever its suffix; a skip is reported."""
    rec, drops = read_file(path, MAX_FILE_BYTES)
    for d in drops:
        stats.skipped[str(path)] = d.reason
        if str(path) not in stats.reported:
            stats.reported.add(str(path))
            why = d.detail if d.reason == "too_large" else d.reason + (f" ({d.detail})" if d.detail else "")
            print(f"warning: {path}: skipped, {why}", file=sys.stderr, flush=True)
    if rec is not None:
        yield rec.content


def iter_documents(paths: list[str | Path], stats: CorpusStats | None = None,
                   max_bad_fraction: float = MAX_BAD_FRACTION) -> Iterator[str]:
    """Every usable document under `paths`, in a deterministic order (see the module docstring).

    `stats` collects what was skipped; UserError for a missing path, a corrupt shard, or a shard with more than
    `max_bad_fraction` bad records."""
    stats = stats if stats is not None else CorpusStats()
    for root in map(Path, paths):
        if not root.exists():
            raise UserError(f"{root}: no such file or directory")
        if root.is_dir():
            top = sorted(os.listdir(root))
            if any(_is_shard(Path(n)) and (root / n).is_file() for n in top):
                for shard in _shards_under(root):
                    yield from _shard_texts(shard, stats, max_bad_fraction)
            else:
                yield from _source_texts(iter_repos([root], MAX_FILE_BYTES), stats)
        elif _is_shard(root):
            yield from _shard_texts(root, stats, max_bad_fraction)
        elif (kind := file_kind(root)) is not None:
            yield from _source_texts(read_unit(SourceUnit(kind, str(root), root.name), MAX_FILE_BYTES), stats)
        else:
            yield from _file_texts(root, stats)
