"""Single-line infilling (HumanEval-FIM), the FIM benchmark of DeepSeek-Coder 2401.14196 §3.1.2/§4 and V2 §4
(reference §1.7, §2.7), built the way SantaCoder's was: from each HumanEval canonical solution, mask one non-empty
line at a time.

For line i of a solution: prefix = prompt + lines before i (each with its newline), middle = line i without its
newline, suffix = that newline + the lines after. The model gets the PSM prompt
`<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>` and its FIRST generated line is compared with the
masked line by exact match after stripping surrounding whitespace (V2 §4 scores the first line; generation may stop
at the first newline). Task ids: `HumanEval/0/line3`. No code runs, so no sandbox is involved.
"""
from __future__ import annotations

import os

from dscoder.eval.runners import Verdict
from dscoder.eval.tasks.base import Prompt, Task, read_jsonl, require_fields, resolve_data


def single_line_problems(row: dict) -> list[dict]:
    """One infilling problem per non-empty line of `row`'s canonical solution."""
    lines = row["canonical_solution"].splitlines(keepends=True)
    out = []
    for i, line in enumerate(lines):
        middle = line.rstrip("\r\n")
        if not middle.strip():
            continue
        out.append({"task_id": f"{row['task_id']}/line{i}", "source_task": row["task_id"],
                    "prefix": row["prompt"] + "".join(lines[:i]), "middle": middle,
                    "suffix": line[len(middle):] + "".join(lines[i + 1:])})
    return out


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


class SingleLineFIM(Task):
    name = "fim"
    data_file = "humaneval/HumanEval.jsonl.gz"
    timeout = 1.0

    def load(self, path: str | os.PathLike | None = None) -> list[dict]:
        p = resolve_data(self.data_file, path)
        rows = read_jsonl(p)
        require_fields(rows, ("task_id", "prompt", "canonical_solution"), p)
        return [prob for r in rows for prob in single_line_problems(r)]

    def prompt(self, problem: dict) -> Prompt:
        return Prompt("fim", prefix=problem["prefix"], suffix=problem["suffix"], stop=("\n",), max_new_tokens=64)

    def postprocess(self, problem: dict, text: str) -> str:
        return first_line(text)

    def score(self, problem: dict, completion: str) -> Verdict:
        got, want = first_line(completion).strip(), problem["middle"].strip()
        if got == want:
            return Verdict(True, "passed")
        return Verdict(False, "failed", f"expected {want!r:.120}, got {got!r:.120}")
