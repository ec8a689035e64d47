"""Training documents from disk: text files under folders, and `.jsonl[.gz]` / `.parquet` shards with a `text`
column (what `dscoder data build` writes). Shared by tokenizer training and pretraining; no torch here.

A folder holding any shard is read for its shards only (so a build's report and stats never become training text);
any other folder is walked in sorted order for source/text files (binary, non-UTF-8, huge or blank files skipped,
symlinks never followed). A bad record costs only that record; a truncated or corrupt shard is an error.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Iterator

from ..errors import UserError

MAX_FILE_BYTES = 1 << 20        # larger files are data dumps or minified bundles, not code to learn from
SHARD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
SOURCE_SUFFIXES = frozenset("""
    .py .pyi .ipynb .java .c .h .cc .cpp .cxx .hpp .hh .cs .js .jsx .mjs .ts .tsx .go .rs .rb .php .swift .kt .kts
    .scala .sc .m .mm .r .jl .lua .pl .pm .sh .bash .zsh .fish .ps1 .sql .hs .ml .mli .ex .exs .erl .clj .dart .d
    .f .f90 .v .sv .vhd .zig .nim .cmake .mk .gradle .groovy .tex .md .rst .txt .json .yaml .yml .toml .ini .cfg
    .xml .html .htm .css .scss .less .vue .svelte .proto .graphql .el .lisp .scm .rkt .asm .s .bat .dockerfile
""".split())
SOURCE_NAMES = frozenset({"Makefile", "Dockerfile", "CMakeLists.txt", "Rakefile", "Gemfile", "BUILD", "WORKSPACE"})


# ----------------------------------------------------------------------------------------------- reading
def read_text_file(path: Path) -> str | None:
    """The file's text, or None when it is huge, binary (a NUL byte), not UTF-8, or blank."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        raw = path.read_bytes()
    except OSError:
        return None
    if b"\x00" in raw[:8192]:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.strip() else None


def _is_source(path: Path) -> bool:
    return path.suffix.lower() in SOURCE_SUFFIXES or path.name in SOURCE_NAMES


def _is_shard(path: Path) -> bool:
    return path.name.endswith(SHARD_SUFFIXES)


def _iter_jsonl(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for line in f:
                try:
                    text = json.loads(line.decode("utf-8")).get("text")
                except (ValueError, AttributeError):
                    continue             # one bad record (bad JSON, not UTF-8) costs that record, not the shard
                if isinstance(text, str) and text.strip():
                    yield text
    except (EOFError, OSError) as e:     # truncated or corrupt gzip: an error, never a silently short epoch
        raise UserError(f"{path}: cannot read ({e})") from e


def _iter_parquet(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise UserError(f"{path}: not a readable parquet file ({e})") from e
    if "text" not in pf.schema_arrow.names:
        raise UserError(f"{path}: parquet file has no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=["text"], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text


def _walk(root: Path) -> Iterator[Path]:
    # followlinks=False: a symlink loop or a link out of the corpus is never followed
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not p.is_symlink():
                yield p


def iter_documents(paths: list[str | Path]) -> Iterator[str]:
    """Every usable document under `paths`, in a deterministic order.

    A folder that holds any .jsonl/.jsonl.gz/.parquet shard is read as a shard folder (the data pipeline's
    output: only the shards, so its reports and stats files never become training text); any other folder is
    walked for source/text files. A file given directly is read by its suffix (any other suffix: as text)."""
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise UserError(f"{root}: no such file or directory")
        files = list(_walk(root)) if root.is_dir() else [root]
        if root.is_dir() and any(_is_shard(p) for p in files):
            files = [p for p in files if _is_shard(p)]
        for p in files:
            if p.name.endswith((".jsonl", ".jsonl.gz")):
                yield from _iter_jsonl(p)
            elif p.suffix == ".parquet":
                yield from _iter_parquet(p)
            elif not root.is_dir() or _is_source(p):
                text = read_text_file(p)
                if text is not None:
                    yield text
