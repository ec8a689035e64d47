"""Sources read whole: archives (.tar[.gz|.bz2|.xz], .tgz, .zip) and tables (.jsonl[.gz], .parquet), by the
rules in `data.readers` (which dispatches here), plus the one JSONL/Parquet row reader that `data.corpus` uses too.

An archive's or table's file is held in memory one source file at a time; a truncated or corrupt one yields no
partial repository. Tables need columns `repo` (or `repo_name`/`max_stars_repo_name`), `path` (or
`max_stars_repo_path`) and `content`; a bad line costs only its record.
"""
from __future__ import annotations

import gzip
import json
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import UserError
from .document import Drop, RepoFiles
from .readers import STAGE, SourceUnit, _Repo, safe_member_path

ARCHIVE_MAX_RATIO = 100            # source archives expand ~5-10x; far beyond that is a bomb
ARCHIVE_SLACK_BYTES = 32 << 20
REPO_COLUMNS = ("repo", "repo_name", "max_stars_repo_name")
PATH_COLUMNS = ("path", "max_stars_repo_path")


# ---------------------------------------------------------------- archives

def _expansion_budget(path: Path) -> int:
    """Most uncompressed bytes an archive may declare: beyond this it is treated as a decompression bomb."""
    return ARCHIVE_MAX_RATIO * path.stat().st_size + ARCHIVE_SLACK_BYTES


_Entries = list[tuple[str, int, "bytes | None", str]]


def _tar_entries(path: Path, cap: int) -> tuple[_Entries, tuple[str, str] | None]:
    """(name, size, data or None, refusal) per member, or (reason, detail) when the archive is damaged."""
    out: _Entries = []
    total, budget = 0, _expansion_budget(path)
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                total += m.size
                if total > budget:    # even skipped members cost decompression time
                    return out, ("archive_bomb", f"declares > {budget} bytes uncompressed")
                if m.isdir():
                    continue
                if m.issym() or m.islnk():
                    out.append((m.name, m.size, None, "symlink"))
                elif not m.isfile():
                    out.append((m.name, m.size, None, "not_regular"))
                elif m.size > cap:
                    out.append((m.name, m.size, None, ""))      # admit() records too_large without reading
                else:
                    f = tf.extractfile(m)
                    data = f.read() if f is not None else b""
                    if len(data) != m.size:
                        return out, ("truncated_archive", f"member {m.name!r} ends early")
                    out.append((m.name, m.size, data, ""))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        return out, ("truncated_archive", f"{type(e).__name__}: {e}")
    return out, None


def _zip_entries(path: Path, cap: int) -> tuple[_Entries, tuple[str, str] | None]:
    out: _Entries = []
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if sum(i.file_size for i in infos) > (budget := _expansion_budget(path)):
                return out, ("archive_bomb", f"declares > {budget} bytes uncompressed")
            for info in infos:
                if info.is_dir():
                    continue
                if stat.S_ISLNK(info.external_attr >> 16):
                    out.append((info.filename, info.file_size, None, "symlink"))
                elif info.file_size > cap:
                    out.append((info.filename, info.file_size, None, ""))
                else:
                    with zf.open(info) as f:       # read at most cap+1: a lying header cannot balloon memory
                        out.append((info.filename, info.file_size, f.read(cap + 1), ""))
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, RuntimeError, NotImplementedError) as e:
        return out, ("truncated_archive", f"{type(e).__name__}: {e}")
    return out, None


def read_archive(unit: SourceUnit, max_bytes: int, languages: frozenset[str] | None
                  ) -> Iterator[tuple[RepoFiles, list[Drop]]]:
    path = Path(unit.path)
    entries, error = (_zip_entries if unit.kind == "zip" else _tar_entries)(path, max_bytes)
    if error is not None:
        repo = _Repo(unit.name, max_bytes, languages)
        repo.fail(error[0], error[1][:500])
        yield repo.result()
        return
    safe = [(safe_member_path(n), n, size, data, refusal) for n, size, data, refusal in entries]
    tops = {p.split("/", 1)[0] for p, *_ in safe if p}
    has_top_files = any(p and "/" not in p for p, *_ in safe)
    split = not has_top_files and len(tops) > 1
    repos: dict[str, _Repo] = {}
    for rel, raw, size, data, refusal in safe:
        top, _, rest = rel.partition("/") if rel else ("", "", "")
        if split:
            key, rel = f"{unit.name}/{top}", rest
        else:
            key = unit.name
            rel = rest if (rel and not has_top_files and len(tops) == 1) else rel
        repo = repos.setdefault(key, _Repo(key, max_bytes, languages))
        if not rel:
            repo.drop(raw, "path_traversal")
        elif refusal:
            repo.drop(rel, refusal)
        elif (lang := repo.admit(rel, size)) is not None and data is not None:
            repo.add_bytes(rel, lang, data)
    if not repos:
        repos[unit.name] = _Repo(unit.name, max_bytes, languages)
    for key in sorted(repos):
        yield repos[key].result()


# ---------------------------------------------------------------- tables (JSONL, Parquet)

def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | None, str]]:
    """(line number, row or None, reason) per non-blank line; a bad line costs only itself."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                yield lineno, None, "encoding"
                continue
            except ValueError:
                yield lineno, None, "bad_json"
                continue
            yield (lineno, row, "") if isinstance(row, dict) else (lineno, None, "bad_record")


def _parquet_rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict | None, str]]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=columns):
        for row in batch.to_pylist():
            n += 1
            yield n, row, ""


def iter_table_rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict | None, str]]:
    """(line or row number, row or None, reason) per record of a `.jsonl[.gz]` or `.parquet` file.

    JSONL: 1-based line numbers, blank lines skipped; a line that is not UTF-8 ("encoding"), not JSON
    ("bad_json") or not an object ("bad_record") costs only itself. Parquet: only `columns` are read. A
    truncated or damaged file raises one of `corrupt_table_errors()` mid-iteration."""
    return _parquet_rows(path, columns) if path.name.lower().endswith(".parquet") else _jsonl_rows(path)


def parquet_names(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_schema(path).names


def table_columns(path: Path, names: Iterable[str]) -> tuple[str, str, str]:
    names = list(names)
    repo = next((c for c in REPO_COLUMNS if c in names), None)
    pcol = next((c for c in PATH_COLUMNS if c in names), None)
    if repo is None or pcol is None or "content" not in names:
        raise UserError(f"{path}: needs columns repo (or {'/'.join(REPO_COLUMNS[1:])}), path (or "
                        f"{'/'.join(PATH_COLUMNS[1:])}) and content; it has {', '.join(names)}")
    return repo, pcol, "content"


def corrupt_table_errors() -> tuple[type[BaseException], ...]:
    from pyarrow.lib import ArrowException    # pyarrow's own errors for damaged files

    return (EOFError, OSError, zlib.error, ArrowException)


def _row_fields(row: dict) -> tuple[object, object, object]:
    repo = next((row[c] for c in REPO_COLUMNS if row.get(c) is not None), None)
    path = next((row[c] for c in PATH_COLUMNS if row.get(c) is not None), None)
    return repo, path, row.get("content")


def read_table(unit: SourceUnit, max_bytes: int, languages: frozenset[str] | None
                ) -> Iterator[tuple[RepoFiles, list[Drop]]]:
    path = Path(unit.path)
    repos: dict[str, _Repo] = {}
    source_drops: list[Drop] = []
    try:
        columns = list(table_columns(path, parquet_names(path))) if unit.kind == "parquet" else []
        for n, row, reason in iter_table_rows(path, columns):
            repo_name, rel, content = _row_fields(row) if row is not None else (None, None, None)
            if row is not None and not (isinstance(repo_name, str) and isinstance(rel, str)
                                        and isinstance(content, (str, bytes))):
                reason = "bad_record"
            if reason:
                source_drops.append(Drop(unit.name, f"{unit.name}:{n}", STAGE, reason))
                continue
            repo = repos.setdefault(repo_name, _Repo(repo_name, max_bytes, languages))
            _add_row(repo, rel, content)
    except corrupt_table_errors() as e:    # truncated .gz or damaged Parquet: nothing of it counts as complete
        detail = f"{type(e).__name__}: {e}"[:500]
        yield RepoFiles(unit.name, []), [Drop(unit.name, "", STAGE, "truncated_archive", detail)]
        return
    if not repos:
        yield RepoFiles(unit.name, []), source_drops
        return
    for i, key in enumerate(sorted(repos)):
        files, drops = repos[key].result()
        yield files, (source_drops + drops if i == 0 else drops)


def _add_row(repo: _Repo, raw_path: str, content: str | bytes) -> None:
    rel = safe_member_path(raw_path)
    if rel is None:
        repo.drop(raw_path, "path_traversal")
        return
    size = len(content) if isinstance(content, bytes) else min(len(content), repo.max_bytes + 1)
    lang = repo.admit(rel, size if content else 0)
    if lang is None:
        return
    if isinstance(content, bytes):
        repo.add_bytes(rel, lang, content)
    else:
        repo.add_text(rel, lang, content)
