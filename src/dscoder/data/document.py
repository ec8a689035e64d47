"""Records that flow through the data pipeline (v1 paper §2).

A source yields `RepoFiles` (one repository's files, already safely read and decoded) and `Drop`s (files it
refused, with the reason). Stages are plain functions over these records; nothing here does I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property


@dataclass
class FileRecord:
    repo: str            # repository name, unique within a build
    path: str            # POSIX path relative to the repo root
    content: str         # decoded text
    language: str | None = None   # canonical language name from data.languages, None if unknown

    @property
    def nbytes(self) -> int:
        return len(self.content.encode("utf-8", "surrogatepass"))

    @cached_property
    def line_lengths(self) -> list[int]:
        """Characters in each line (the content split on "\\n"), computed once for the line-length filter and
        the readability screen."""
        return list(map(len, self.content.split("\n")))


@dataclass
class RepoFiles:
    repo: str
    files: list[FileRecord] = field(default_factory=list)


@dataclass
class Drop:
    repo: str
    path: str
    stage: str           # which stage dropped it: read | filter | dedup | quality | decontam | near_dedup
    reason: str          # short machine-friendly reason, e.g. "binary", "max_line_length>1000"
    detail: str = ""     # free text for the report (e.g. which benchmark task matched)


@dataclass
class Sample:
    """One training sample: a dependency-ordered group of files from one repo, concatenated with path comments."""
    repo: str
    id: str
    text: str
    paths: list[str]
    languages: list[str]

    @property
    def nbytes(self) -> int:
        return len(self.text.encode("utf-8", "surrogatepass"))
