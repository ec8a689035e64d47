"""The benchmarks `dscoder eval --benchmark NAME` knows, each a short `Task` class (see `tasks/base.py`).

    task = get_task("humaneval-instruct")   # or mbpp, multipl-e (languages=[...]), fim-single-line, cruxeval-i/-o
    problems = task.load()                         # or task.load("/path/to/HumanEval.jsonl.gz")
"""
from __future__ import annotations

from typing import Sequence

from dscoder.errors import UserError
from dscoder.eval.tasks.base import Prompt, Task
from dscoder.eval.tasks.cruxeval import CRUXEval
from dscoder.eval.tasks.fim import SUBSETS, HumanEvalInfilling
from dscoder.eval.tasks.humaneval import HumanEval
from dscoder.eval.tasks.mbpp import MBPP
from dscoder.eval.tasks.multipl_e import MultiPLE

BENCHMARKS = ("humaneval", "humaneval-instruct", "mbpp", "mbpp-instruct", "multipl-e", *SUBSETS, "cruxeval-i",
              "cruxeval-o")


def get_task(benchmark: str, *, languages: Sequence[str] | None = None, timeout: float | None = None) -> Task:
    """The task behind a `--benchmark` name; `languages` only for multipl-e."""
    if languages and benchmark != "multipl-e":
        raise UserError(f"--languages applies to multipl-e only, not {benchmark}")
    if benchmark in ("humaneval", "humaneval-instruct"):
        return HumanEval("instruct" if benchmark.endswith("instruct") else "base", timeout)
    if benchmark in ("mbpp", "mbpp-instruct"):
        return MBPP("instruct" if benchmark.endswith("instruct") else "base", timeout)
    if benchmark == "multipl-e":
        return MultiPLE("base", timeout, languages)
    if benchmark in SUBSETS:
        return HumanEvalInfilling("base", timeout, subset=benchmark)
    if benchmark in ("cruxeval-i", "cruxeval-o"):
        return CRUXEval("base", timeout, target="input" if benchmark.endswith("i") else "output")
    raise UserError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")


__all__ = ["BENCHMARKS", "Prompt", "Task", "get_task"]
