"""What every benchmark task shares (DeepSeek-Coder 2401.14196 §4; reference §1.7, §2.7): problems, prompts,
post-processing, and scoring through the sandbox (`eval/runners.py`).

A task is a short class (nanochat-style): `load(path)` reads its problems (dicts with at least "task_id"),
`prompt(problem)` says what to ask the model, `postprocess(problem, text)` turns the model's raw text into the
completion that is stored and scored, `score(problem, completion)` runs it and returns a `runners.Verdict`.
The mode ("base" or "instruct") is fixed when the task is built, because scoring depends on it too.

Data: each task names its file under the shared benchmarks folder (`$DSCODER_BENCHMARKS`, else
`../shared/benchmarks` beside the checkout); `--data PATH` may name the file itself, the folder holding it, or the
benchmarks root. Evaluation only: none of these files may reach training data.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from dscoder.errors import UserError
from dscoder.eval.runners import Verdict

ROOT = Path(__file__).resolve().parents[4]  # the checkout (src/dscoder/eval/tasks/base.py)

# DeepSeek's Python post-processing cuts a base completion at the first of these (Evaluation/HumanEval utils).
PY_STOPS = ("\ndef", "\nclass", "\nif", "\n#", "\nprint")

# DeepSeek prepends common imports to Python programs (reference §1.7). Importing all of them costs ~90 ms per
# sandboxed run (numpy alone ~100 ms more), so `with_py_imports` adds a module only when the program names it: the
# same programs run, minus the import time.
PY_MODULES = ("math", "re", "sys", "copy", "datetime", "itertools", "collections", "heapq", "statistics",
              "functools", "hashlib", "string", "numpy")
COLLECTIONS_NAMES = ("ChainMap", "Counter", "OrderedDict", "UserDict", "UserList", "UserString", "defaultdict",
                     "deque", "namedtuple")
PY_IMPORTS = "".join(f"import {m}\n" for m in PY_MODULES[:-1]) + "from typing import *\nfrom collections import *\n"


@dataclass(frozen=True)
class Prompt:
    """What to send to the model. kind "completion": `text` continues after BOS; "chat": `text` is the user
    message of an instruct conversation; "fim": the PSM prompt built from `prefix` and `suffix`."""
    kind: str
    text: str = ""
    prefix: str = ""
    suffix: str = ""
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 512


def benchmarks_root() -> Path:
    return Path(os.environ.get("DSCODER_BENCHMARKS", ROOT.parent / "shared" / "benchmarks"))


def resolve_data(default_rel: str, path: str | os.PathLike | None) -> Path:
    """The data file of a task: `path` as a file, `path/<basename>`, `path/<default_rel>`, or the shared default."""
    rel = Path(default_rel)
    if path is None:
        cands = [benchmarks_root() / rel]
    else:
        p = Path(path)
        alt = rel.name[:-3] if rel.name.endswith(".gz") else rel.name + ".gz"  # compressed or not
        cands = [p] if p.is_file() else [p / rel.name, p / alt, p / rel, p / rel.parent / alt]
        if not p.exists():
            raise UserError(f"benchmark data {str(p)!r} does not exist")
    for c in cands:
        if c.is_file():
            return c
    raise UserError(f"cannot find {rel.name} (looked at {', '.join(map(str, cands))}); pass --data PATH to the "
                    f"file or its folder, or set DSCODER_BENCHMARKS")


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a .jsonl or .jsonl.gz file; a malformed line is a UserError naming the line."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as e:
                        raise UserError(f"{path}:{i}: not valid JSON ({e})") from None
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    return rows


def require_fields(rows: Sequence[dict], fields: Sequence[str], path: Path) -> None:
    for i, r in enumerate(rows):
        missing = [f for f in fields if f not in r]
        if missing:
            raise UserError(f"{path}: record {i} lacks field(s) {', '.join(missing)}; is this the right file?")


def truncate_at(text: str, stops: Sequence[str]) -> str:
    """`text` cut before the earliest of `stops` (DeepSeek's `_truncate_code_at_stopwords`)."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if 0 <= i < cut:
            cut = i
    return text[:cut]


def first_code_block(text: str, lang: str = "python") -> str | None:
    """The body of the first ```{lang} fenced block (case-insensitive tag), or None if there is none."""
    m = re.search(rf"```{re.escape(lang)}[ \t]*\n(.*?)```", text, re.DOTALL | re.IGNORECASE)
    return m.group(1) if m else None


def py_import_header(code: str) -> str:
    """The imports of DeepSeek's list that `code` names (see PY_MODULES)."""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", code))
    head = [f"import {m}\n" for m in PY_MODULES if m in words]
    head += ["import numpy as np\n"] if "np" in words else []
    head += ["from typing import *\n"]
    head += ["from collections import *\n"] if words.intersection(COLLECTIONS_NAMES) else []
    return "".join(head)


def with_py_imports(program: str) -> str:
    return py_import_header(program) + program


class Task:
    """Base class; subclasses set the class attributes and implement the four methods."""
    name = "task"
    modes: tuple[str, ...] = ("base",)
    data_file = ""              # relative to the benchmarks root
    timeout = 10.0              # per-sample wall seconds (DeepSeek's values; --timeout overrides)

    def __init__(self, mode: str = "base", timeout: float | None = None):
        if mode not in self.modes:
            raise UserError(f"{self.name} has no {mode!r} mode (modes: {', '.join(self.modes)})")
        if timeout is not None and timeout <= 0:
            raise UserError(f"--timeout must be > 0, got {timeout}")
        self.mode = mode
        self.timeout = timeout or type(self).timeout

    def load(self, path: str | os.PathLike | None = None) -> list[dict]:
        raise NotImplementedError

    def prompt(self, problem: dict) -> Prompt:
        raise NotImplementedError

    def postprocess(self, problem: dict, text: str) -> str:
        raise NotImplementedError

    def score(self, problem: dict, completion: str) -> Verdict:
        raise NotImplementedError

    def language(self, problem: dict) -> str:
        """The language of a problem, for per-language tables and toolchain skips."""
        return "py"

    def skip_reason(self, problem: dict) -> str | None:
        """Why this problem cannot be scored on this host (e.g. a missing toolchain), or None."""
        return None
