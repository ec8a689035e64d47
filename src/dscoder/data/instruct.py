"""Instruction data: reading it for `dscoder sft`, and making it without a hub (`dscoder data instruct`).

Reading (`read_conversations`): the layouts `dscoder sft` takes, each as JSONL (one object a line) or Parquet
(one row a record):
* DeepSeek-Coder's finetune format, `{"instruction": ..., "output": ...}` (deepseek-ai/DeepSeek-Coder
  finetune/README: the Evol-Instruct-Code
  layout its finetune script reads); the instruction is stripped as that script does, the output is kept as is;
* chat, `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`, multi-turn, ending with an
  assistant turn.
A bad record (not JSON, not an object, a missing field, a wrong type, an empty output, a conversation that does not
end with the assistant) is skipped and counted by reason, with its FILE:LINE (JSONL) or FILE:row N (Parquet).

Making (`main`, `dscoder data instruct`), with no hub: pairs mined from code (`mine_python`: every top-level
Python function and class with a docstring; the instruction is built from its signature and docstring, the output
is its code in a fenced block), plus MBPP's train split (task_ids 601–974, read through the eval package's
benchmark lookup) with its asserts in a `tests` field, so the same file feeds GRPO. Every pair then passes the data
pipeline's decontamination (`decontam.py`, v1 paper §2.4) against the evaluation problems of HumanEval, MBPP
(task_ids 1–510: prompt, few-shot and test splits) and CRUXEval.
"""
from __future__ import annotations

import ast
import json
import os
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserError

MAX_EXAMPLES = 5          # bad records named one by one in the summary; the rest are only counted


@dataclass
class ReadStats:
    records: int = 0
    used: int = 0
    truncated: int = 0                                   # samples cut to --seq-len (kept)
    bad: Counter = field(default_factory=Counter)        # reason -> count
    examples: list[str] = field(default_factory=list)    # "FILE:LINE (reason)", the first MAX_EXAMPLES

    def skip(self, where: str, reason: str) -> None:
        self.bad[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where} ({reason})")

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "used": self.used, "truncated": self.truncated, "bad": dict(self.bad),
                "bad_examples": self.examples}


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, parsed record or an Exception describing why it is unreadable) for each record of a file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as e:          # pyarrow raises ArrowInvalid / OSError on a damaged file
            raise UserError(f"{path}: not a readable Parquet file ({e})") from e
        for i, row in enumerate(table.to_pylist(), 1):
            yield f"{path}:row {i}", row
        return
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield f"{path}:{n}", ValueError("not UTF-8")
            except ValueError:
                yield f"{path}:{n}", ValueError("not JSON")


def to_messages(rec: Any) -> list[dict[str, str]] | str:
    """A record as a conversation, or the reason it is not usable."""
    from ..tokenizer.chat import validate_messages

    if isinstance(rec, Exception):
        return str(rec)
    if not isinstance(rec, dict):
        return "not an object"
    if "messages" in rec:
        try:
            msgs = validate_messages(rec["messages"])
        except UserError as e:
            return f"bad messages: {e}"
        if msgs[-1]["role"] != "assistant":
            return "the last message is not the assistant's"
        if any(m["role"] == "assistant" and not m["content"].strip() for m in msgs):
            return "empty assistant message"
        return msgs
    for key in ("instruction", "output"):
        if key not in rec:
            return f"missing field {key!r} (or 'messages')"
        if not isinstance(rec[key], str):
            return f"field {key!r} is not a string"
    if not rec["instruction"].strip():
        return "empty instruction"
    if not rec["output"].strip():
        return "empty output"
    return [{"role": "user", "content": rec["instruction"].strip()}, {"role": "assistant", "content": rec["output"]}]


def read_conversations(paths: list[str | Path]) -> tuple[list[tuple[str, list[dict[str, str]]]], ReadStats]:
    """[(where, messages)] of every usable record in `paths` (JSONL or .parquet), and what was skipped and why.
    A missing file is a UserError."""
    stats, out = ReadStats(), []
    for p in map(Path, paths):
        if not p.is_file():
            raise UserError(f"data file {p}: no such file")
        for where, rec in _rows(p):
            stats.records += 1
            msgs = to_messages(rec)
            if isinstance(msgs, str):
                stats.skip(where, msgs)
            else:
                out.append((where, msgs))
    stats.used = len(out)
    return out, stats


# ------------------------------------------------------------------------------------------- making pairs
MBPP_TRAIN = range(601, 975)          # MBPP's train split (Austin et al. 2021 §2.1: 601–974)
MBPP_EVAL = range(1, 511)             # prompt (1–10), test (11–510): what `dscoder eval` reads
DECONTAM_BENCHMARKS = ("humaneval", "mbpp", "cruxeval-o")


def _pair(kind: str, header: str, doc: str, code: str, language: str = "Python", fence: str = "python"
          ) -> dict[str, str]:
    signature = " ".join(header.split())
    return {"instruction": f"Write a {language} {kind} with the signature `{signature}`.\n\n{doc}",
            "output": f"```{fence}\n{code}\n```"}


def mine_python(source: str, max_lines: int = 100) -> list[dict[str, Any]]:
    """Instruction pairs from the top-level functions and classes of a Python file that have a docstring of 3+
    words and at most `max_lines` lines (decorators included); `line` is where each starts. Unparsable: []."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    out = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        doc = ast.get_docstring(node)
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        if not doc or len(doc.split()) < 3 or node.end_lineno - start + 1 > max_lines:
            continue
        header = "\n".join(lines[node.lineno - 1:node.body[0].lineno - 1])    # the def/class line(s)
        code = "\n".join(lines[start - 1:node.end_lineno])
        kind = "class" if isinstance(node, ast.ClassDef) else "function"
        out.append(dict(_pair(kind, header, doc, code), line=start))
    return out


# language -> (name in the instruction, fence, doc comment style, {item node type: kind}); the conventions:
# JSDoc (jsdoc.app: a /** */ block right before the function or class), Javadoc (javadoc's "Documentation
# Comments": /** */ right before the method or class), Rust's /// outer doc comments (the Rust Reference,
# "Doc comments"), Go's // comments right before a func that start with its name (go.dev/doc/comment).
_JS_ITEMS = {"function_declaration": "function", "generator_function_declaration": "function",
             "class_declaration": "class"}
DOC_COMMENTS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "javascript": ("JavaScript", "javascript", "/**", _JS_ITEMS),
    "typescript": ("TypeScript", "typescript", "/**", _JS_ITEMS),
    "java": ("Java", "java", "/**", {"method_declaration": "method", "class_declaration": "class"}),
    "rust": ("Rust", "rust", "///", {"function_item": "function"}),
    "go": ("Go", "go", "//", {"function_declaration": "function", "method_declaration": "method"}),
}
_ANNOTATIONS = re.compile(r"^(@\w+(\([^)]*\))?\s+)+")


def _last_row(node) -> int:
    """The last line a node covers (a line comment's range ends at column 0 of the next line)."""
    return node.end_point.row - (node.end_point.column == 0 and node.end_point.row > node.start_point.row)


def _doc_text(comments: list[str], style: str) -> str:
    """The text of a doc comment without its markers (/** * */, /// or //)."""
    if style == "/**":
        body = comments[-1][3:-2]
        lines = [re.sub(r"^\s*\*? ?", "", x, count=1) for x in body.splitlines()]
    else:
        lines = [c.strip()[len(style):].removeprefix(" ") for c in comments]
    return "\n".join(lines).strip()


def _doc_before(node, style: str, name: str) -> tuple[str | None, int]:
    """(the doc comment right before `node` (attributes in between are skipped), or None; the first line of the
    code: the first attribute's, else node's)."""
    first, prev = node.start_point.row, node.prev_named_sibling
    while prev is not None and prev.type == "attribute_item":                  # Rust #[...]
        first, prev = prev.start_point.row, prev.prev_named_sibling
    found: list[str] = []
    row = first
    while prev is not None and "comment" in prev.type and _last_row(prev) == row - 1:
        text = prev.text.decode("utf-8", "replace")
        if style == "/**":
            if text.startswith("/**") and not text.startswith("/**/"):
                found = [text]
            break
        if not text.startswith(style) or text.startswith(style + "/") or text.startswith("//go:"):
            break
        found.insert(0, text)
        row, prev = prev.start_point.row, prev.prev_named_sibling
    if not found or (style == "//" and not _doc_text(found, style).startswith(name + " ")):
        return None, first
    return _doc_text(found, style), first


def mine_doc_comments(source: str, language: str, path: str = "", max_lines: int = 100) -> list[dict[str, Any]]:
    """Instruction pairs from the functions, methods and classes of a JavaScript, TypeScript, Java, Rust or Go
    file that have a doc comment by their language's convention (`DOC_COMMENTS`) of 3+ words and at most
    `max_lines` lines; as `mine_python`: the signature and doc comment make the instruction, the code (attributes
    included, dedented) the output. Unparsable: []."""
    import textwrap

    from .quality import parser_for

    if language not in DOC_COMMENTS:
        return []
    shown, fence, style, items = DOC_COMMENTS[language]
    parser = parser_for("tsx" if language == "typescript" and path.lower().endswith(".tsx") else language)
    if parser is None:
        return []
    tree = parser.parse(source.encode("utf-8", "surrogatepass"))
    if tree.root_node.has_error:
        return []
    lines = [x.removesuffix("\r") for x in source.split("\n")]          # tree-sitter's rows: split on \n
    out, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        stack.extend(reversed(node.named_children))
        kind, body, name = items.get(node.type), node.child_by_field_name("body"), node.child_by_field_name("name")
        if kind is None or body is None or name is None:
            continue
        anchor = node.parent if node.parent is not None and node.parent.type == "export_statement" else node
        doc, first = _doc_before(anchor, style, name.text.decode("utf-8", "replace"))
        last = node.end_point.row
        if doc is None or len(doc.split()) < 3 or last - first + 1 > max_lines:
            continue
        if lines[anchor.start_point.row][:anchor.start_point.column].strip():
            continue                                     # something else starts the line: no clean cut
        header = source.encode("utf-8", "surrogatepass")[node.start_byte:body.start_byte].decode("utf-8", "replace")
        code = textwrap.dedent("\n".join(lines[first:last + 1]))
        out.append(dict(_pair(kind, _ANNOTATIONS.sub("", " ".join(header.split())), doc, code, shown, fence),
                        line=first + 1))
    return sorted(out, key=lambda p: p["line"])


def mbpp_train_pairs(data: str | None) -> list[dict[str, Any]]:
    """MBPP train rows (task_ids 601–974) as pairs with `tests`; the rows come from eval's lookup (`--data`,
    $DSCODER_BENCHMARKS, the hub)."""
    from ..eval.tasks.mbpp import FIELDS, MBPP, clean_code

    out = []
    for r in sorted(MBPP().rows(data, FIELDS), key=lambda r: int(r["task_id"])):
        if int(r["task_id"]) not in MBPP_TRAIN:
            continue
        tests = "\n".join(r["test_list"])
        setup = (r.get("test_setup_code") or "").strip()
        out.append({"instruction": f"{r['text']}\nYour code should pass these tests:\n\n{tests}",
                    "output": f"```python\n{clean_code(r['code'])}\n```",
                    "tests": f"{setup}\n{tests}" if setup else tests, "task_id": f"MBPP/{r['task_id']}"})
    return out


def benchmark_index(data: str | None):
    """The decontamination index of the evaluation problems (`DECONTAM_BENCHMARKS`, MBPP task_ids 1–510)."""
    from ..eval.tasks import get_task
    from ..eval.tasks.mbpp import FIELDS, MBPP
    from .decontam import build_index

    with tempfile.TemporaryDirectory(prefix="dscoder-decontam-") as tmp:
        paths = []
        for name in DECONTAM_BENCHMARKS:
            rows = ([r for r in MBPP().rows(data, FIELDS) if int(r["task_id"]) in MBPP_EVAL] if name == "mbpp"
                    else get_task(name).load(data))
            p = Path(tmp) / f"{name}.jsonl"
            p.write_text("".join(json.dumps(r) + "\n" for r in rows))
            paths.append(p)
        return build_index(paths)


def _mine_sources(sources: list[str], max_lines: int, stats: dict) -> list[dict[str, Any]]:
    from .readers import iter_repos

    pairs = []
    for repo, _drops in iter_repos(sources, languages=["python", *DOC_COMMENTS]):
        for f in repo.files:
            stats["files"] += 1
            found = mine_python(f.content, max_lines) if f.language == "python" else \
                mine_doc_comments(f.content, f.language, f.path, max_lines)
            stats["unparsable_or_empty_files"] += not found
            stats[f"pairs_{f.language}"] += len(found)
            pairs += [{"instruction": p["instruction"], "output": p["output"], "source": "mined",
                       "language": f.language, "origin": f"{repo.repo}/{f.path}:{p['line']}"} for p in found]
    return pairs


def main(argv: list[str] | None = None) -> int:
    """Make instruction data with no hub: pairs mined from Python code, plus MBPP's train split; decontaminated.

    dscoder data instruct SRC... --out pairs.jsonl [--data BENCHMARKS] [--no-mbpp] [--max-lines N]
Then:    dscoder sft --model BASE pairs.jsonl --out runs/sft

SRC: repositories, folders, archives, JSONL/Parquet corpora (what `dscoder data build` reads); every top-level
Python function or class with a docstring becomes {"instruction": "Write a Python function with the signature
`def f(x):`.\n\n<docstring>", "output": "```python\n<its code>\n```"}. MBPP task_ids 601–974 are added with
their asserts in "tests" (task_id "MBPP/N"), from --data (a benchmarks root or mbpp.jsonl, as `dscoder eval`),
else $DSCODER_BENCHMARKS, else the hub. Exact duplicates are written once. Every pair is checked against the
evaluation problems of HumanEval, MBPP (1–510) and CRUXEval (10-grams and test lines, as `dscoder data build`);
a match is dropped. Counts per source go to FILE.stats.json beside --out."""
    from ..args import Parser, out_file, positive_int

    p = Parser("dscoder data instruct", main.__doc__)
    p.add_inputs("sources", "SRC", "code to mine: folders, repositories, archives, corpora", required=False)
    p.add_argument("--out", required=True, type=out_file, metavar="FILE", help="the pairs, JSONL")
    p.add_argument("--data", metavar="PATH", default=None, help="benchmarks root or mbpp.jsonl (as dscoder eval)")
    p.add_argument("--no-mbpp", action="store_true", help="leave out MBPP's train split")
    p.add_argument("--max-lines", type=positive_int, default=100, help="longest function or class mined, in lines")
    args = p.parse_args(argv)
    if not args.sources and args.no_mbpp:
        raise UserError("nothing to make: give SRC folders to mine, or leave out --no-mbpp")
    stats: dict[str, Any] = {"mined": Counter(), "mbpp-train": Counter()}
    pairs = _mine_sources(args.sources, args.max_lines, stats["mined"]) if args.sources else []
    stats["mined"]["pairs"] = len(pairs)
    if not args.no_mbpp:
        mbpp = [dict(r, source="mbpp-train") for r in mbpp_train_pairs(args.data)]
        stats["mbpp-train"]["pairs"] = len(mbpp)
        pairs += mbpp
    index = benchmark_index(args.data)
    kept, seen, dropped = [], set(), []
    for r in pairs:
        key = (r["instruction"], r["output"])
        if key in seen:
            stats[r["source"]]["duplicates"] += 1
            continue
        seen.add(key)
        hit = index.match(r["instruction"] + "\n" + r["output"])
        if hit is not None:
            stats[r["source"]]["decontaminated"] += 1
            dropped.append({"source": r["source"], "where": r.get("origin") or r.get("task_id"), "match": hit})
            continue
        stats[r["source"]]["kept"] += 1
        kept.append(r)
    if not kept:
        raise UserError("no pair left to write (nothing mined, or every pair was dropped)")
    _write(Path(args.out), kept, {"total": len(kept), **{k: dict(v) for k, v in stats.items()},
                                   "benchmarks": list(DECONTAM_BENCHMARKS), "decontaminated": dropped})
    print(f"dscoder data instruct: {len(kept)} pairs ({stats['mined']['kept']} mined, "
          f"{stats['mbpp-train']['kept']} MBPP train) in {args.out}", file=sys.stderr)
    return 0


def _write(out: Path, rows: list[dict], stats: dict) -> None:
    """The pairs and FILE.stats.json, each written to a temporary name and renamed into place."""
    from ..durable import replace_durably

    out.parent.mkdir(parents=True, exist_ok=True)
    stats_file = out.with_name(out.name.removesuffix(".jsonl") + ".stats.json")
    for path, text in ((out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)),
                       (stats_file, json.dumps(stats, indent=2) + "\n")):
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        replace_durably(tmp, path)
