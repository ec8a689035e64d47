"""CRUXEval-I and CRUXEval-O (800 short Python functions; DeepSeek-Coder-V2 2406.11931 §4):
predict a function's output from its input (-O) or an input that produces a given output (-I).

Data: `cruxeval/cruxeval.jsonl` with fields code, input, output, id. Prompts follow CRUXEval's direct-prediction
format: two worked examples in `[PYTHON]...[/PYTHON]` / `[ANSWER]...[/ANSWER]` tags, generation stops at
`[/ANSWER]`. The completion stored is just the predicted output literal (-O) or the argument list (-I), taken
from the `assert f(...) == ...` the model writes.

Scoring executes the assertion `assert f(<input>) == <output>` through `check_python`, so the model's text only
ever runs in the untrusted candidate process: the prediction is wrapped in a function `__answer` whose plain
return value crosses to the checker, which holds the trusted code and data. -O: `__answer()` returns the
predicted literal and the checker runs `assert f(input) == __answer()`; -I: `__answer()` returns
`f(<predicted args>)` and the checker runs `assert __answer() == output`.
"""
from __future__ import annotations

import ast
import os

from dscoder.errors import UserError
from dscoder.eval.runners import Verdict, check_python
from dscoder.eval.tasks.base import HubSource, Prompt, Task

HEAD_O = ("You are given a Python function and an assertion containing an input to the function. Complete the "
          "assertion with a literal (no unsimplified expressions, no function calls) containing the output when "
          "executing the provided code on the given input, even if the function is incorrect or incomplete. Do NOT "
          "output any extra information. Provide the full assertion with the correct output in [ANSWER] and "
          "[/ANSWER] tags, following the examples.\n\n")
SHOTS_O = (("def f(n):\n    return n", "17", "17"), ('def f(s):\n    return s + "a"', '"x9j"', '"x9ja"'))
HEAD_I = ("You will be given a function f and an output in the form f(??) == output. Find any input such that "
          "executing f on the input leads to the given output. There may be multiple answers, but you should only "
          "output one. In [ANSWER] and [/ANSWER] tags, complete the assertion with one such input that will produce "
          "the output when executing the function.\n\n")
SHOTS_I = (("def f(my_list):\n    count = 0\n    for i in my_list:\n        if len(i) % 2 == 0:\n"
            "            count += 1\n    return count", '["mq", "px", "zy"]', "3"),
           ("def f(s1, s2):\n    return s1 + s2", '"ba", "nana"', '"banana"'))


def _example(code: str, inp: str, out: str, target: str, answer: bool) -> str:
    question = f"assert f({inp}) == ??" if target == "output" else f"assert f(??) == {out}"
    s = f"[PYTHON]\n{code}\n{question}\n[/PYTHON]\n[ANSWER]\n"
    return s + (f"assert f({inp}) == {out}\n[/ANSWER]\n\n" if answer else "")


def parse_answer(text: str, target: str) -> str:
    """The predicted output literal (target "output") or argument list ("input") in the model's answer."""
    text = text.split("[/ANSWER]")[0].strip()
    line = next((x.strip() for x in text.splitlines() if x.strip().startswith("assert")), text.strip())
    try:
        node = ast.parse(line).body[0]
        cmp = node.test if isinstance(node, ast.Assert) else None
        if isinstance(cmp, ast.Compare) and isinstance(cmp.left, ast.Call) and len(cmp.comparators) == 1:
            if target == "output":
                return ast.get_source_segment(line, cmp.comparators[0]) or ""
            call = ast.get_source_segment(line, cmp.left) or ""
            return call[call.index("(") + 1:-1].strip()
    except (SyntaxError, IndexError, ValueError):
        pass
    if target == "output" and "==" in line:
        return line.split("==", 1)[1].strip()
    return line


class CRUXEval(Task):
    name = "cruxeval"
    data_file = "cruxeval/cruxeval.jsonl"
    hub = HubSource("cruxeval-org/cruxeval")
    timeout = 5.0

    def __init__(self, mode: str = "base", timeout: float | None = None, target: str = "output"):
        super().__init__(mode, timeout)
        if target not in ("input", "output"):
            raise UserError(f"CRUXEval predicts 'input' or 'output', got {target!r}")
        self.target = target
        self.name = "cruxeval-" + target[0]

    def load(self, path: str | os.PathLike | None = None) -> list[dict]:
        rows = self.rows(path, ("id", "code", "input", "output"))
        return [{**r, "task_id": r["id"]} for r in rows]

    def prompt(self, problem: dict) -> Prompt:
        head, shots = (HEAD_O, SHOTS_O) if self.target == "output" else (HEAD_I, SHOTS_I)
        text = head + "".join(_example(c, i, o, self.target, True) for c, i, o in shots)
        text += _example(problem["code"], problem["input"], problem["output"], self.target, False)
        return Prompt("completion", text, stop=("[/ANSWER]",), max_new_tokens=256)

    def postprocess(self, problem: dict, text: str) -> str:
        return parse_answer(text, self.target)

    def score(self, problem: dict, completion: str) -> Verdict:
        code = problem["code"]
        if self.target == "output":
            if not completion.strip():  # (for -I an empty argument list is a real answer: sample_135 is f())
                return Verdict(False, "failed", "empty answer")
            program = f"{code}\n\ndef __answer():\n    return (\n{completion}\n    )\n"
            return check_python(program, f"assert f({problem['input']}) == __answer()\n", "__answer",
                                prelude=code, timeout=self.timeout)
        program = f"{code}\n\ndef __answer():\n    return f(\n{completion}\n    )\n"
        return check_python(program, f"assert __answer() == {problem['output']}\n", "__answer",
                            timeout=self.timeout)
