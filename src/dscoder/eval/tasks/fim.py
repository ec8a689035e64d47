"""HumanEval-Infilling (Bavarian et al. 2022, openai/human-eval-infilling): the fill-in-the-middle benchmarks of
DeepSeek-Coder 2401.14196 §4 and V2 §4 (DeepSeek-Coder's Evaluation/), read from OpenAI's official files.

Four sets, each a `--benchmark` name (upstream's `benchmark_name` after the dash):
  fim-single-line        HumanEval-SingleLineInfilling       1,033 tasks  `SingleLineInfilling/HumanEval/0/L0`
  fim-multi-line         HumanEval-MultiLineInfilling        5,815 tasks  `MultiLineInfilling/HumanEval/0/L0_L0`
  fim-random-span        HumanEval-RandomSpanInfilling       1,640 tasks  `RandomSpanInfilling/HumanEval/0/1`
  fim-random-span-light  HumanEval-RandomSpanInfillingLight    164 tasks
Each row has `prompt` (the prefix), `suffix`, `canonical_solution` (the middle), `test`, `entry_point`. In the
single-line set the middle is one whole line with its newline, and the suffix starts on the next line.

The model gets the PSM prompt `<｜fim▁begin｜>{prompt}<｜fim▁hole｜>{suffix}<｜fim▁end｜>` and writes the middle until
EOS. Single-line keeps the FIRST generated line, plus the newline the row's layout expects (V2 §4 scores the first
generated line); the other sets keep the whole generation.

Scoring, both as published:
* execution, as upstream's `human_eval_infilling/execution.py` does for every set: the program
  `prompt + completion + suffix`, then `test` and `check(entry_point)`; pass@k over samples. Here it runs through
  `check_python` (two sandboxed processes; the checker's prelude is the trusted reference program). Upstream's
  timeout is 3 s.
* line exact match, single-line only (the DeepSeek-Coder papers' FIM metric, after SantaCoder): the first
  generated line equals the masked line, surrounding whitespace ignored. Reported as `exact_match` beside pass@k.
"""
from __future__ import annotations

import os

from dscoder.eval.runners import Verdict, check_python
from dscoder.eval.tasks.base import HubSource, Prompt, Task

SUBSETS = {  # --benchmark name -> upstream file stem
    "fim-single-line": "HumanEval-SingleLineInfilling",
    "fim-multi-line": "HumanEval-MultiLineInfilling",
    "fim-random-span": "HumanEval-RandomSpanInfilling",
    "fim-random-span-light": "HumanEval-RandomSpanInfillingLight",
}
FIELDS = ("task_id", "prompt", "suffix", "canonical_solution", "test", "entry_point")


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def line_exact_match(completion: str, middle: str) -> bool:
    """The first line of `completion` equals the first line of `middle`, surrounding whitespace ignored."""
    return first_line(completion).strip() == first_line(middle).strip()


class HumanEvalInfilling(Task):
    name = "fim-single-line"
    timeout = 3.0

    def __init__(self, mode: str = "base", timeout: float | None = None, subset: str = "fim-single-line"):
        super().__init__(mode, timeout)
        stem = SUBSETS[subset]
        self.name, self.single_line = subset, subset == "fim-single-line"
        self.data_file = f"humaneval-infilling/{stem}.jsonl.gz"
        self.hub = HubSource("loubnabnl/humaneval_infilling", stem)

    def load(self, path: str | os.PathLike | None = None) -> list[dict]:
        return self.rows(path, FIELDS)

    def prompt(self, problem: dict) -> Prompt:
        if self.single_line:
            return Prompt("fim", prefix=problem["prompt"], suffix=problem["suffix"], stop=("\n",), max_new_tokens=128)
        return Prompt("fim", prefix=problem["prompt"], suffix=problem["suffix"], max_new_tokens=512)

    def postprocess(self, problem: dict, text: str) -> str:
        return first_line(text) + "\n" if self.single_line else text

    def exact_match(self, problem: dict, completion: str) -> bool | None:
        return line_exact_match(completion, problem["canonical_solution"]) if self.single_line else None

    def score(self, problem: dict, completion: str) -> Verdict:
        ep = problem["entry_point"]
        reference = problem["prompt"] + problem["canonical_solution"] + problem["suffix"]
        return check_python(problem["prompt"] + completion + problem["suffix"], f"{problem['test']}\ncheck({ep})\n",
                            ep, prelude=reference, timeout=self.timeout)
