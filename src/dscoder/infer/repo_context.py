"""Repository-level completion: the FIM prompt at a cursor, with the current file's in-repo dependencies ahead of it.

DeepSeek-Coder was pretrained on repository-level samples: the files of a dependency component concatenated in
Algorithm 1 order, each under its path comment (v1 paper §2.2; `data.repo_order`). Completion at a cursor builds
the same layout from the same code: the data pipeline's import parser finds the current file's dependencies in the
repository (transitively), Algorithm 1 orders them, each is written as `# {path}` + its text, then the current file
under its own path comment, split at the cursor into the FIM prefix and suffix (PSM, v1 paper §3.1).

`fit_context` is the one budget rule, used here, by `dscoder serve` (/infill's input_extra, /v1/completions'
extra_files) and by `dscoder complete`. Over the token budget, the farthest dependencies give way first, then the
prefix is trimmed from the top and the suffix from the bottom, whole lines first; but the current file's window at
the cursor is first guaranteed a share of the budget (`local_share`, half by default), so that the dependencies are
not all dropped to keep lines of the current file far from the cursor. Dependencies fill the rest in three passes,
each farthest first (among equally far ones, first those whose definitions the current file uses farthest from the
cursor or not at all, then the earliest): a Python dependency is cut to its outline (function bodies replaced by
`...`, docstrings removed; signatures, class headers and other statements kept), then to its definitions of names
the current file uses, then dependencies are dropped. Hierarchical Context Pruning (Zhang et al. 2024, arXiv
2406.18294) found that keeping dependency files in topological order matters, that the first level of dependencies
matters most, and that pruning function implementations in them barely costs accuracy; RepoCoder (Zhang et al.
2023, arXiv 2303.12570) and CrossCodeEval (Ding et al. 2023, arXiv 2310.11248) likewise build the prompt from the
cursor's own window and cross-file context, each under a token budget of its own. The cursor window then takes
whatever the dependencies left.

Run it:
    dscoder complete --repo . --file src/app.py --line 42 --col 9 --model ckpt
    dscoder complete --repo . --file src/app.py --line 42 --col 9 --endpoint http://127.0.0.1:8000
"""
from __future__ import annotations

import ast
import json
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..args import (Parser, add_device_args, finite_float, non_negative_float, positive_int, read_text_arg,
                    resolve_device_dtype)
from ..args import seed as seed_int
from ..errors import UserError

Count = Callable[[str], int]       # text -> its number of tokens
FIM_OVERHEAD = 4                   # BOS and the three FIM sentinels


@dataclass(frozen=True)
class ContextFile:
    path: str
    text: str
    distance: int = 1              # import hops from the current file; larger is dropped first


def block(f: ContextFile) -> str:
    """A file as it appears in a repository-level sample: `# {path}` line, then its text ending in a newline."""
    from ..data.document import FileRecord
    from ..data.repo_order import concat_files
    return concat_files([FileRecord("", f.path, f.text)])


def _trim(text: str, count: Count, room: int, keep_end: bool) -> str:
    """The longest run of whole lines of `text` within `room` tokens: its last lines (keep_end) or its first."""
    if count(text) <= room:
        return text
    lines = text.splitlines(keepends=True)
    lo, hi = 0, len(lines)                      # binary search on the number of lines kept
    while lo < hi:
        mid = (lo + hi + 1) // 2
        part = "".join(lines[-mid:] if keep_end else lines[:mid])
        lo, hi = (mid, hi) if count(part) <= room else (lo, mid - 1)
    return "".join(lines[len(lines) - lo:] if keep_end else lines[:lo])


_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")      # the line breaks `ast` counts, and only those
_NAME = re.compile(r"[A-Za-z_]\w*")


def _pieces(text: str) -> list[tuple[frozenset[str], str]] | None:
    """The top-level statements of a Python file in outline form, each with the names it defines (functions,
    classes, assignment targets; none for imports and compound statements): function bodies become `...`,
    docstrings are removed, everything else stays as written. None when `text` does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    lines = _LINES.findall(text)

    def docstring(node: ast.stmt) -> bool:
        return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value,
                                                                                                   str)

    def short(node: ast.stmt) -> list[str]:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        inner = getattr(node, "body", None)
        if not (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and inner[0].lineno > node.lineno):                # a one-line def or class stays as it is
            return lines[start:node.end_lineno]
        out = lines[start:inner[0].lineno - 1]                      # decorators and signature
        body = [x for n in inner if not docstring(n) for x in short(n)] if isinstance(node, ast.ClassDef) else []
        return out + (body or [" " * inner[0].col_offset + "...\n"])

    def names(node: ast.stmt) -> frozenset[str]:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return frozenset([node.name])
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        return frozenset(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return [(names(n), "".join(x if x.endswith(("\n", "\r")) else x + "\n" for x in short(n)))
            for n in tree.body if not docstring(n)]


def outline(text: str, used: set[str] | None = None) -> str | None:
    """A Python file with every function body replaced by `...` and docstrings removed (signatures, decorators,
    class headers and other statements kept as written); with `used`, only its top-level definitions of those
    names. None when `text` does not parse as Python or nothing would be removed."""
    return _join(_pieces(text), text, used)


def _join(pieces: list[tuple[frozenset[str], str]] | None, text: str, used: set[str] | None) -> str | None:
    if pieces is None:
        return None
    short = "".join(t for names, t in pieces if used is None or names & used)
    return short if len(short) < len(text) else None


def _nearness(prefix: str, suffix: str) -> dict[str, int]:
    """Each identifier of the current file -> its distance in characters from the cursor at its nearest use."""
    near: dict[str, int] = {}
    for m in _NAME.finditer(prefix):
        near[m.group()] = len(prefix) - m.end()                     # later in the prefix is nearer
    for m in _NAME.finditer(suffix):
        near[m.group()] = min(near.get(m.group(), m.start()), m.start())
    return near


def fit_context(files: list[ContextFile], prefix: str, suffix: str, count: Count, budget: int,
                current: str | None = None, *, local_share: float = 0.5, prune: bool = True) -> tuple[str, str]:
    """(FIM prefix, suffix) within `budget` tokens: `files` (in prompt order) as path-comment blocks, then the
    current file's path comment (when `current` names it) and `prefix`; `suffix` after the hole.

    The rule: the cursor window keeps min(its size, `local_share` of the budget). Over what is left, dependencies
    give way farthest first -- among equally far ones, first those whose definitions the current file uses
    farthest from the cursor or not at all, then the earliest: with `prune`, each is first cut to its outline
    (`outline`), then, in a second pass, to its definitions of names the current file uses; then they are
    dropped. The cursor window takes the rest, trimming the prefix from the top and the suffix from the bottom,
    whole lines first. `local_share=1, prune=False` drops every dependency before the current file loses a line."""
    if not 0.0 <= local_share <= 1.0:
        raise ValueError(f"local_share must be within 0 ... 1, not {local_share}")
    head = f"# {current}\n" if current else ""
    room = budget - FIM_OVERHEAD - count(head)
    reserve = max(0, min(count(prefix) + count(suffix), int(room * local_share)))
    blocks = [block(f) for f in files]
    sizes = [count(b) for b in blocks]
    keep = [True] * len(files)
    over = lambda: sum(s for s, k in zip(sizes, keep) if k) > room - reserve     # noqa: E731
    near = _nearness(prefix, suffix) if over() else {}
    pieces = [_pieces(f.text) if prune and near else None for f in files]
    defined = [frozenset().union(*(n for n, _ in p)) if p else frozenset() for p in pieces]
    nearest = [min((near[n] for n in d if n in near), default=len(prefix) + len(suffix)) for d in defined]
    by_far = sorted(range(len(files)), key=lambda i: (-files[i].distance, -nearest[i], i))
    for used in (None, set(near)) if prune and near else ():
        for i in by_far:
            if not over():
                break
            short = _join(pieces[i], files[i].text, used)
            if short is not None and count(b := block(ContextFile(files[i].path, short))) < sizes[i]:
                blocks[i], sizes[i] = b, count(b)
                keep[i] = bool(short)
    for i in by_far:
        if not over():
            break
        keep[i] = False
    context = "".join(b for b, k in zip(blocks, keep) if k)
    room -= count(context)
    if count(prefix) + count(suffix) > room:
        suffix = _trim(suffix, count, max(room // 4, room - count(prefix)), keep_end=False)
        prefix = _trim(prefix, count, room - count(suffix), keep_end=True)
    return context + head + prefix, suffix


# --- a repository on disk ---------------------------------------------------------------------------------------


def read_repo(repo: str | os.PathLike):
    """The repository's files as the data pipeline reads them (`data.readers`: size caps, binaries skipped)."""
    from ..data.readers import SourceUnit, read_unit
    root = Path(repo)
    if not root.is_dir():
        raise UserError(f"--repo {repo}: not a folder")
    [(files, _)] = list(read_unit(SourceUnit("tree", str(root), root.resolve().name)))
    return files.files


def dependency_files(records, path: str) -> list[ContextFile]:
    """The in-repo files `path` depends on, transitively (import parser of `data.repo_order`), in Algorithm 1
    order, each with its distance in import hops."""
    from ..data.repo_order import dependency_order, resolve_dependencies
    deps = resolve_dependencies(records)
    dist, frontier = {path: 0}, [path]
    while frontier:
        nxt = []
        for p in frontier:
            for d in sorted(deps.get(p, ())):
                if d not in dist:
                    dist[d] = dist[p] + 1
                    nxt.append(d)
        frontier = nxt
    text = {r.path: r.content for r in records}
    order = [p for group in dependency_order(dist, deps) for p in group if p != path]
    return [ContextFile(p, text[p], dist[p]) for p in order]


def cursor_split(text: str, line: int, col: int) -> tuple[str, str]:
    """(text before, text after) the cursor at 1-based `line` and `col` (col may be one past the line's end)."""
    lines = text.splitlines(keepends=True) or [""]
    if not 1 <= line <= len(lines) + (text.endswith("\n")):
        raise UserError(f"--line {line} is outside the file (1 ... {len(lines)})")
    at = sum(len(x) for x in lines[:line - 1])
    body = lines[line - 1].rstrip("\r\n") if line <= len(lines) else ""
    if not 1 <= col <= len(body) + 1:
        raise UserError(f"--col {col} is outside line {line} (1 ... {len(body) + 1})")
    return text[:at + col - 1], text[at + col - 1:]


@dataclass
class Cursor:
    """A cursor in a repository file: the file's path, its dependencies in prompt order, the text around it."""
    path: str
    files: list[ContextFile]
    prefix: str
    suffix: str


def repo_cursor(repo: str, file: str, line: int, col: int) -> Cursor:
    """Read the repository, find `file` (relative to `repo`) and its dependencies, split it at the cursor."""
    records = read_repo(repo)
    path = Path(file).as_posix().removeprefix("./")
    current = next((r for r in records if r.path == path), None)
    if current is None:
        raise UserError(f"--file {file}: not a readable source file of the repository {repo} (give its path "
                        f"relative to --repo)")
    prefix, suffix = cursor_split(current.content, line, col)
    return Cursor(path, dependency_files(records, path), prefix, suffix)


# --- the verb ------------------------------------------------------------------------------------------------------


def _endpoint(url: str, body: dict) -> str:
    """The middle from a running `dscoder serve` (/v1/completions with suffix); the key from DSCODER_API_KEY."""
    key = os.environ.get("DSCODER_API_KEY")
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}

    def call(path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(url.rstrip("/") + path, json.dumps(body).encode() if body else None, headers)
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise UserError(f"{url}{path}: {e.code} {e.read().decode('utf-8', 'replace')[:300]}") from None
        except (urllib.error.URLError, OSError) as e:
            raise UserError(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None
    model = call("/v1/models")["data"][0]["id"]
    out = call("/v1/completions", {"model": model, **body})
    return out["choices"][0]["text"]


def main(argv: list[str]) -> int:
    """Complete the code at a cursor in a repository file, with the file's in-repo dependencies as context (the
    layout of DeepSeek-Coder's repository-level pretraining); prints only the completion.

    dscoder complete --repo PATH --file F --line L --col C [--max-context-tokens N] (--model DIR | --endpoint URL)
                     [--max-new-tokens N] [--temperature T] [--top-p P] [--seed N] [--stop S ...]
    (L and C count from 1; with --endpoint, a running `dscoder serve`, its key from DSCODER_API_KEY)"""
    p = Parser("dscoder complete", main.__doc__)
    p.add_argument("--repo", required=True, metavar="DIR", help="the repository folder")
    p.add_argument("--file", required=True, metavar="F", help="the file being edited, relative to --repo")
    p.add_argument("--line", type=positive_int, required=True, help="cursor line, from 1")
    p.add_argument("--col", type=positive_int, required=True, help="cursor column, from 1")
    p.add_argument("--max-context-tokens", type=positive_int, default=None, metavar="N",
                   help="prompt budget in tokens; default: the model's context minus --max-new-tokens")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="DIR", help="Hugging Face model folder to run here")
    src.add_argument("--endpoint", metavar="URL", help="a running dscoder serve, e.g. http://127.0.0.1:8000")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, metavar="N", help="tokens to generate at most")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=finite_float(0.0, 1.0, lo_open=True), default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=seed_int, default=None, help="makes sampling reproducible (0 ... 2**64-1)")
    p.add_argument("--stop", action="append", default=[], metavar="S", help="stop string (repeat for several)")
    add_device_args(p)
    args = p.parse_args(argv)
    args.stop = [read_text_arg(s, f"--stop {i + 1}") for i, s in enumerate(args.stop)]
    gen = dict(temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    cur = repo_cursor(args.repo, args.file, args.line, args.col)
    if args.endpoint:           # the server fits the same context to its own tokenizer and context length
        body = {**gen, "max_tokens": args.max_new_tokens, "prompt": f"# {cur.path}\n{cur.prefix}",
                "suffix": cur.suffix, "extra_files": [{"filename": f.path, "text": f.text} for f in cur.files],
                **({"stop": args.stop} if args.stop else {})}
        if args.max_context_tokens:
            body["max_context_tokens"] = args.max_context_tokens
        text = _endpoint(args.endpoint, body)
    else:
        from .text import encode, infill, load
        device, dtype = resolve_device_dtype(args)
        engine, tok = load(args.model, device, dtype)
        budget = args.max_context_tokens or engine.max_len - args.max_new_tokens
        prefix, suffix = fit_context(cur.files, cur.prefix, cur.suffix, lambda s: len(encode(tok, s)), budget,
                                     current=cur.path)
        text = infill(engine, tok, prefix, suffix, max_new_tokens=args.max_new_tokens, stop_strings=args.stop,
                      **gen)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
