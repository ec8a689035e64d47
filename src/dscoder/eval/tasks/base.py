"""What every benchmark task shares (DeepSeek-Coder 2401.14196 §4, V2 2406.11931 §4; DeepSeek-Coder's Evaluation/):
problems, prompts, post-processing, and scoring through the sandbox (`eval/runners.py`).

A task is a short class (nanochat-style): `load(path)` reads its problems (dicts with at least "task_id"),
`prompt(problem)` says what to ask the model, `postprocess(problem, text)` turns the model's raw text into the
completion that is stored and scored, `score(problem, completion)` runs it and returns a `runners.Verdict`.
The mode ("base" or "instruct") is fixed when the task is built, because scoring depends on it too.

Data (`load_rows`): `--data PATH` (the file itself, the folder holding it, or a benchmarks root laid out as
`tests/fixtures/benchmarks`), else `$DSCODER_BENCHMARKS` (such a root), else the Hugging Face hub through `datasets`
when it is reachable (HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1 restrict that to the local `datasets` cache), else
one UserError saying where to put the files. Evaluation only: none of these files may reach training data.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from dscoder.errors import UserError
from dscoder.eval.runners import Verdict

ENV_VAR = "DSCODER_BENCHMARKS"
HUB_PROBE_S = 3.0  # seconds to wait for the hub before falling through to the error

# DeepSeek's Python post-processing cuts a base completion at the first of these (Evaluation/HumanEval utils).
PY_STOPS = ("\ndef", "\nclass", "\nif", "\n#", "\nprint")

# DeepSeek prepends common imports to Python programs (deepseek-ai/DeepSeek-Coder Evaluation/). Importing all of them
# costs ~90 ms per sandboxed run (numpy alone ~100 ms more), so `with_py_imports` adds a module only when the
# program names it: the same programs run, minus the import time.
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


@dataclass(frozen=True)
class HubSource:
    """Where the same rows live on the Hugging Face hub: `datasets.load_dataset(repo, config, split=split)`."""
    repo: str
    config: str | None = None
    split: str = "test"


def _candidates(base: Path, rel: Path) -> list[Path]:
    alt = rel.name[:-3] if rel.name.endswith(".gz") else rel.name + ".gz"  # compressed or not
    return [base / rel.name, base / alt, base / rel, base / rel.parent / alt]


def find_data(rel: str, path: str | os.PathLike | None) -> Path | None:
    """The local file `rel` (e.g. "humaneval/HumanEval.jsonl.gz"): `path` as a file, or looked up under `path`,
    else under $DSCODER_BENCHMARKS; None when neither is given or the env folder lacks it. A `path` that does not
    exist or lacks the file is a UserError (an explicit path never falls through)."""
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise UserError(f"benchmark data {str(p)!r} does not exist")
        cands = [p] if p.is_file() else _candidates(p, Path(rel))
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise UserError(f"cannot find {Path(rel).name} under {p} (looked at {', '.join(map(str, cands))})")
        return found
    env = os.environ.get(ENV_VAR)
    if env:
        return next((c for c in _candidates(Path(env), Path(rel)) if c.is_file()), None)
    return None


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_rows(src: HubSource) -> tuple[list[dict] | None, str]:
    """(rows, "") from the hub, or (None, why not). Unreachable hosts fail within HUB_PROBE_S seconds instead of
    the hub client's minutes of retries; offline mode reads only the local `datasets` cache."""
    if not _offline():
        url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        host = url.hostname or "huggingface.co"
        try:
            socket.create_connection((host, url.port or (80 if url.scheme == "http" else 443)),
                                     timeout=HUB_PROBE_S).close()
        except OSError as e:
            return None, f"{host} is not reachable ({e.strerror or e})"
    try:
        import datasets
    except ImportError:
        return None, "the `datasets` package is not installed"
    try:
        ds = datasets.load_dataset(src.repo, src.config, split=src.split)
    except Exception as e:  # noqa: BLE001 -- any hub/cache failure means: not available from the hub
        return None, f"{type(e).__name__}: {str(e)[:200]}"
    return [dict(r) for r in ds], ""


def load_rows(rel: str, path: str | os.PathLike | None, hub: HubSource | None) -> tuple[list[dict], str]:
    """(rows, where they came from) for the benchmark file `rel`; see the module docstring for the order."""
    local = find_data(rel, path)
    if local is not None:
        return read_jsonl(local), str(local)
    why = "no hub source is known for it"
    if hub is not None:
        rows, why = hub_rows(hub)
        if rows is not None:
            return rows, f"hf://{hub.repo}" + (f"/{hub.config}" if hub.config else "")
    env = os.environ.get(ENV_VAR)
    looked = f"${ENV_VAR}={env} lacks it" if env else f"${ENV_VAR} is not set"
    raise UserError(f"benchmark data {rel} not found: no --data given, {looked}, and the Hugging Face hub "
                    f"{'(' + hub.repo + ') ' if hub else ''}failed: {why}. Put the file at DIR/{rel} and pass "
                    f"--data DIR or set {ENV_VAR}=DIR")


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
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    return rows


def require_fields(rows: Sequence[dict], fields: Sequence[str], path: Path | str) -> None:
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
    hub: HubSource | None = None  # the same rows on the Hugging Face hub
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

    def rows(self, path: str | os.PathLike | None, fields: Sequence[str]) -> list[dict]:
        """The rows of `data_file` (see `load_rows`), each checked to have `fields`."""
        rows, source = load_rows(self.data_file, path, self.hub)
        require_fields(rows, fields, source)
        return rows

    def prompt(self, problem: dict) -> Prompt:
        raise NotImplementedError

    def postprocess(self, problem: dict, text: str) -> str:
        raise NotImplementedError

    def score(self, problem: dict, completion: str) -> Verdict:
        raise NotImplementedError

    def exact_match(self, problem: dict, completion: str) -> bool | None:
        """Whether `completion` matches the reference text, for benchmarks that report it (else None)."""
        return None

    def language(self, problem: dict) -> str:
        """The language of a problem, for per-language tables and toolchain skips."""
        return "py"

    def skip_reason(self, problem: dict) -> str | None:
        """Why this problem cannot be scored on this host (e.g. a missing toolchain), or None."""
        return None
