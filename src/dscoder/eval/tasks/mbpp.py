"""MBPP, 3-shot, with DeepSeek-Coder's prompts (2401.14196 §4.1; deepseek-ai/DeepSeek-Coder Evaluation/MBPP).

Which rows: DeepSeek's scripts index the lines of mbpp.jsonl from 0 — shots are lines 1..3 and the test problems
lines 10..509. mbpp.jsonl is ordered by task_id starting at 1, so the shots are **task_ids 2, 3, 4** and the 500
test problems **task_ids 11..510**: the standard MBPP test split (the original paper's prompt split is 1..10 and
uses 2, 3, 4 as its few-shot examples too). We select by task_id, not by line, so a reordered file still works.

base: each shot is `You are an expert Python programmer, and here is your task: {text} Your code should pass these
tests:\\n\\n{tests}\\n[BEGIN]\\n{code}\\n[DONE]\\n` (code with \\r removed and tabs as 4 spaces); the query is the
same up to `[BEGIN]`; generation stops at `[DONE]` and is stripped.
instruct: `>>> Problem:` / `>>> Test Cases:` / `>>> Code:` examples under "Please refer the given examples...";
the first ```python block of the reply is the program (the whole reply if there is none); 512 new tokens.
Scoring: program = completion, tests = the row's asserts, through `check_python`; the entry points are the
reference solution's top-level names that the asserts call. Timeout 10 s (DeepSeek's).

Benchmark-broken rows: none. All 500 reference solutions pass their asserts through this scorer (checked by
running them all, ~110 s with 2 workers); the one trap is task 367, whose `test_setup_code` builds trees of the
solution's own `Node` class and so must run after the completion, not before.
"""
from __future__ import annotations

import ast
import builtins
import os

from dscoder.errors import UserError
from dscoder.eval.runners import Verdict, check_python
from dscoder.eval.tasks.base import HubSource, Prompt, Task, first_code_block, py_import_header, with_py_imports

SHOT_IDS = (2, 3, 4)
TEST_IDS = range(11, 511)
FIELDS = ("task_id", "text", "code", "test_list")
BASE_SHOT = ("You are an expert Python programmer, and here is your task: {text} Your code should pass these "
             "tests:\n\n{tests}\n[BEGIN]")
INSTRUCT = ("Please refer the given examples and generate a python function for my problem.\n"
            "Examples are listed as follows:\n{shots}\n\nHere is my problem:\n{problem}")


def clean_code(code: str) -> str:
    return code.replace("\r", "").replace("\t", "    ")


def instruct_example(row: dict, with_code: bool) -> str:
    s = ">>> Problem:\n{}\n>>> Test Cases:\n{}\n".format(row["text"].strip(), "\n".join(row["test_list"]))
    return s + ("\n>>> Code:\n```python\n{}\n```".format(clean_code(row["code"])) if with_code else "")


def entry_points(reference: str, tests: list[str]) -> list[str]:
    """Names the asserts call that the reference solution defines at top level (else: every non-builtin call)."""
    called = []
    for t in tests:
        for node in ast.walk(ast.parse(t)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in called:
                called.append(node.func.id)
    try:
        tree = ast.parse(clean_code(reference))
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    except SyntaxError:
        defined = set()
    names = [c for c in called if c in defined] or [c for c in called if not hasattr(builtins, c)]
    if not names:
        raise UserError(f"MBPP: cannot find the function the asserts call in {tests[0]!r:.120}")
    return names


class MBPP(Task):
    name = "mbpp"
    modes = ("base", "instruct")
    data_file = "mbpp/mbpp.jsonl"
    hub = HubSource("google-research-datasets/mbpp", "full", "train+test+validation+prompt")
    timeout = 10.0

    def load(self, path: str | os.PathLike | None = None) -> list[dict]:
        rows = self.rows(path, FIELDS)
        by_id = {int(r["task_id"]): r for r in rows}
        missing = [i for i in SHOT_IDS if i not in by_id]
        if missing:
            raise UserError(f"MBPP data: the few-shot rows (task_ids {missing}) are missing; give the full mbpp.jsonl")
        self.shots = [by_id[i] for i in SHOT_IDS]
        return [by_id[i] for i in TEST_IDS if i in by_id]

    def _shots(self) -> list[dict]:
        if not hasattr(self, "shots"):
            raise UserError("MBPP: call load() before prompt()")
        return self.shots

    def prompt(self, problem: dict) -> Prompt:
        if self.mode == "instruct":
            shots = "\n\n".join(f"- Example {i}:\n{instruct_example(r, True)}" for i, r in enumerate(self._shots(), 1))
            return Prompt("chat", INSTRUCT.format(shots=shots, problem=instruct_example(problem, False)),
                          max_new_tokens=512)
        shot_text = "".join(BASE_SHOT.format(text=r["text"], tests="\n".join(r["test_list"]))
                            + f"\n{clean_code(r['code'])}\n[DONE]\n" for r in self._shots())
        query = BASE_SHOT.format(text=problem["text"], tests="\n".join(problem["test_list"]))
        return Prompt("completion", shot_text + query, stop=("[DONE]",), max_new_tokens=512)

    def postprocess(self, problem: dict, text: str) -> str:
        if self.mode == "instruct":
            block = first_code_block(text, "python")
            return block if block is not None else text
        return text.split("[DONE]")[0].strip()

    def score(self, problem: dict, completion: str) -> Verdict:
        # test_setup_code may use the solution's own classes (task 367 builds trees of its `Node`), so it runs
        # after the completion; the checker gets the trusted reference for those classes, its names then rebound.
        setup = clean_code(problem.get("test_setup_code") or "")
        names = entry_points(problem["code"], problem["test_list"])
        tests = "\n".join(problem["test_list"]) + "\n"
        trusted = clean_code(problem["code"]) + "\n" + setup if setup else ""
        return check_python(with_py_imports(completion + "\n" + setup), tests, names,
                            prelude=py_import_header(tests + trusted) + trusted, timeout=self.timeout)
