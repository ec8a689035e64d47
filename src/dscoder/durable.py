"""Durable files: the fsync / rename / hash steps that shards, checkpoints and results share.

A write is crash-safe when the data is fsynced under a temporary name, renamed into place, and the directory entry
fsynced too (reliability reference §4, "Recipe"); a reader trusts a file only when its recorded sha256 matches.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames inside `path` durable (best effort: some filesystems refuse to fsync a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """fsync `tmp`, atomically rename it to `final`, fsync the parent directory."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)
