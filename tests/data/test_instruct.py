"""Instruction data: the layouts `dscoder sft` reads (bad records counted by line), and `dscoder data instruct`
(pairs mined from docstrings, MBPP's train split with tests, decontamination, stats)."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dscoder.data.instruct import mine_doc_comments, mine_python, read_conversations
from dscoder.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "benchmarks"


def test_both_layouts_jsonl_and_parquet_with_bad_records_by_line(tmp_path):
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"}]
    lines = [json.dumps({"instruction": "  do it \n", "output": "done"}), "", json.dumps({"messages": chat}),
             "[1, 2]", json.dumps({"instruction": "x", "output": ""}), json.dumps({"output": "y"}),
             json.dumps({"messages": chat[:2]}), json.dumps({"messages": [{"role": "robot", "content": "x"}]})]
    f = tmp_path / "d.jsonl"
    f.write_bytes("\n".join(lines).encode("utf-8") + b"\n\xff\xfe\n")
    pq.write_table(pa.Table.from_pylist([{"instruction": "p", "output": "q"}, {"instruction": "p", "output": None}]),
                   tmp_path / "d.parquet")
    convs, stats = read_conversations([f, tmp_path / "d.parquet"])
    assert [m for _, m in convs] == [
        [{"role": "user", "content": "do it"}, {"role": "assistant", "content": "done"}], chat,
        [{"role": "user", "content": "p"}, {"role": "assistant", "content": "q"}]]
    assert stats.records == 10 and stats.used == 3 and sum(stats.bad.values()) == 7
    assert stats.bad["not an object"] == 1 and stats.bad["empty output"] == 1 and stats.bad["not UTF-8"] == 1
    assert stats.bad["the last message is not the assistant's"] == 1
    assert stats.bad["field 'output' is not a string"] == 1
    assert stats.examples[0] == f"{f}:4 (not an object)" and f"{f}:5 (empty output)" in stats.examples
    with pytest.raises(UserError, match="no such file"):
        read_conversations([tmp_path / "missing.jsonl"])


def test_mine_python_functions_and_classes_with_docstrings():
    src = '''import os

@cache
def area(w: int,
         h: int) -> int:
    """Area of a w by h rectangle."""
    return w * h


def bare(x):
    return x


def short(x):
    """Too short."""


class Stack:
    """A last-in first-out stack."""

    def push(self, x):
        self.items.append(x)
'''
    pairs = mine_python(src)
    assert [p["line"] for p in pairs] == [3, 18]
    assert pairs[0]["instruction"] == ("Write a Python function with the signature `def area(w: int, h: int) -> int:`"
                                       ".\n\nArea of a w by h rectangle.")
    assert pairs[0]["output"].startswith("```python\n@cache\ndef area(w: int,\n") and pairs[0]["output"].endswith(
        "return w * h\n```")
    assert pairs[1]["instruction"].startswith("Write a Python class with the signature `class Stack:`")
    assert mine_python("def broken(:\n") == [] and mine_python(src, max_lines=3) == []


DOC_SOURCES = {
    "javascript": ("/**\n * Add two numbers.\n * @param {number} a\n */\n"
                   "export function add(a, b) {\n  return a + b;\n}\n"
                   "/** too short */\nfunction f() {}\n// A plain comment, not JSDoc.\nfunction g() {}\n",
                   [(5, "function with the signature `function add(a, b)`.\n\nAdd two numbers.\n@param {number} a",
                     "export function add(a, b) {\n  return a + b;\n}")]),
    "typescript": ("/** Parse a number from text. */\nfunction parse(t: string): number {\n  return Number(t);\n}\n",
                   [(2, "function with the signature `function parse(t: string): number`.\n\n"
                        "Parse a number from text.",
                     "function parse(t: string): number {\n  return Number(t);\n}")]),
    "java": ("class M {\n    /**\n     * Returns the sum of a and b.\n     */\n    @Override\n"
             "    public int add(int a, int b) {\n        return a + b;\n    }\n\n"
             "    /** Abstract: no body to learn. */\n    abstract int h();\n}\n",
             [(5, "method with the signature `public int add(int a, int b)`.\n\nReturns the sum of a and b.",
               "@Override\npublic int add(int a, int b) {\n    return a + b;\n}")]),
    "rust": ("/// Adds two numbers, wrapping.\n#[inline]\n"
             "pub fn add(a: i32, b: i32) -> i32 {\n    a.wrapping_add(b)\n}\n"
             "//// Four slashes: not a doc comment.\nfn nope() {}\n",
             [(2, "function with the signature `pub fn add(a: i32, b: i32) -> i32`.\n\n"
                  "Adds two numbers, wrapping.",
               "#[inline]\npub fn add(a: i32, b: i32) -> i32 {\n    a.wrapping_add(b)\n}")]),
    "go": ("package m\n\n// Add returns the sum.\nfunc Add(a, b int) int {\n\treturn a + b\n}\n\n"
           "// Does not start with the name.\nfunc Sub(a, b int) int { return a - b }\n",
           [(4, "function with the signature `func Add(a, b int) int`.\n\nAdd returns the sum.",
             "func Add(a, b int) int {\n\treturn a + b\n}")]),
}
NAMES = {"javascript": "JavaScript", "typescript": "TypeScript", "java": "Java", "rust": "Rust", "go": "Go"}


@pytest.mark.parametrize("language", sorted(DOC_SOURCES))
def test_mine_doc_comments_by_each_languages_convention(language):
    """JSDoc and Javadoc /** */ blocks, Rust /// (attributes kept with the code), Go // comments that start with
    the function's name; a short, plain or misplaced comment, or an item without a body, gives nothing."""
    src, want = DOC_SOURCES[language]
    got = mine_doc_comments(src, language, "x.tsx" if language == "typescript" else "x")
    assert [(p["line"], p["instruction"], p["output"]) for p in got] == [
        (line, f"Write a {NAMES[language]} {instr}", f"```{language}\n{code}\n```") for line, instr, code in want]
    assert mine_doc_comments(src + "\n)(\n", language) == []                  # a syntax error: nothing


def _benchmarks_with_train_rows(tmp_path: Path) -> Path:
    """The fixture benchmarks plus three MBPP train-split rows (the fixture holds evaluation rows only); one
    repeats the code of evaluation task 11."""
    root = shutil.copytree(FIXTURES, tmp_path / "bench")
    rows = [json.loads(x) for x in (root / "mbpp" / "mbpp.jsonl").read_text().splitlines()]
    eleven = next(r for r in rows if r["task_id"] == 11)
    extra = [{"task_id": 601, "text": "Write a function to double n.", "code": "def double(n):\r\n\treturn 2 * n",
              "test_setup_code": "", "test_list": ["assert double(2) == 4", "assert double(0) == 0"],
              "challenge_test_list": []},
             {"task_id": 602, "text": "Write a function to negate n.", "code": "def neg(n):\n    return -n",
              "test_setup_code": "import math", "test_list": ["assert neg(1) == -1"], "challenge_test_list": []},
             dict(eleven, task_id=603)]
    with open(root / "mbpp" / "mbpp.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in extra)
    return root


def test_data_instruct_mines_adds_mbpp_train_and_decontaminates(tmp_path):
    src = tmp_path / "repo"
    src.mkdir()
    (src / "geometry.py").write_text('def area(w, h):\n    """Area of a w by h rectangle."""\n    return w * h\n')
    he = json.loads(gzip.open(FIXTURES / "humaneval" / "HumanEval.jsonl.gz").readline())
    (src / "copied.py").write_text(he["prompt"] + he["canonical_solution"])      # an evaluation problem
    (src / "stack.go").write_text(DOC_SOURCES["go"][0])
    out = tmp_path / "out" / "pairs.jsonl"
    r = subprocess.run([sys.executable, "-m", "dscoder.cli", "data", "instruct", str(src), "--out", str(out),
                        "--data", str(_benchmarks_with_train_rows(tmp_path))], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["source"], x.get("language"), x.get("task_id")) for x in rows] == [
        ("mined", "python", None), ("mined", "go", None), ("mbpp-train", None, "MBPP/601"),
        ("mbpp-train", None, "MBPP/602")]
    assert rows[0]["origin"] == "repo/geometry.py:1" and rows[1]["origin"] == "repo/stack.go:4"
    rows = [rows[0]] + rows[2:]
    assert rows[1]["tests"] == "assert double(2) == 4\nassert double(0) == 0"
    assert rows[1]["output"] == "```python\ndef double(n):\n    return 2 * n\n```"
    assert rows[2]["tests"] == "import math\nassert neg(1) == -1"
    assert rows[1]["instruction"].startswith("Write a function to double n.\nYour code should pass these tests:")
    stats = json.loads((out.parent / "pairs.stats.json").read_text())
    assert stats["total"] == 4 and stats["mined"]["kept"] == 2 and stats["mined"]["decontaminated"] == 1
    assert stats["mined"]["pairs_python"] == 2 and stats["mined"]["pairs_go"] == 1
    assert stats["mbpp-train"] == {"pairs": 3, "kept": 2, "decontaminated": 1}
    assert {tuple(d["match"]) for d in stats["decontaminated"]} == {("humaneval", he["task_id"]), ("mbpp", "11")}
    _, read = read_conversations([out])                                 # what `dscoder sft` reads
    assert read.used == 4


def test_data_instruct_bad_input(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dscoder.cli", "data", "instruct", "--no-mbpp", "--out",
                        str(tmp_path / "p.jsonl")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("dscoder data instruct: error: nothing to make")
    assert not (tmp_path / "p.jsonl").exists()
