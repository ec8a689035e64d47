"""GRPO tasks and their rewards: what `dscoder grpo` samples from and how a completion is scored.

A task is one JSONL record (DeepSeek-Coder-V2 §3.5: every code prompt of the RL set has test cases):
  {"prompt": "def add(a, b):\\n", "tests": "assert add(1, 2) == 3", "entry_point": "add", "task_id": "t1"}
      a completion task: the model continues BOS + prompt; the program is prompt + completion;
  {"instruction": "Write add(a, b).", "tests": "assert add(1, 2) == 3"}
      a chat task: rendered with the model's chat template; the program is the first ```python block of the answer
      (the whole answer when there is none).
`tests` is Python (a string, or a list of strings joined by newlines); `entry_point` (optional) appends
`check(entry_point)` as HumanEval's tests expect; `task_id` and `language` (only "python") are optional.
The default task set is MBPP's train split (task_ids 601-974), never an evaluation split. `task_at` says which
task each group of the run samples; `task_prompts` renders every task's prompt ids with the one prompt builder.

The reward is the verdict of `eval.runners.check_python`, the two-process check `dscoder eval` uses: the program
runs in one sandbox and the harness-owned tests are replayed in another, so `sys.exit(0)`, printed PASS lines and
always-equal objects earn 0 (the reward hacks human-eval#67 and others report). 1.0 = every test passed, 0.0 = not;
a sandbox failure (`infra_error`) is no verdict on the program: its reward is NaN and its advantage 0, as TRL
treats a reward function's None.
"""
from __future__ import annotations

import ast
import builtins
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..args import read_text_file
from ..errors import UserError

MBPP_TRAIN_IDS = range(601, 975)       # MBPP's train split (the test split is 11-510, evaluated by `dscoder eval`)


@dataclass(frozen=True)
class Task:
    """One GRPO task. Exactly one of `prompt` (completion) and `instruction` (chat) is set."""
    task_id: str
    tests: str
    entry_points: tuple[str, ...]          # the functions the tests call, recorded and replayed by the checker
    prompt: str | None = None
    instruction: str | None = None
    entry_point: str | None = None         # given: the tests end with `check(entry_point)`

    @property
    def prelude(self) -> str:
        """Trusted text the checker runs before the tests (helpers the tests use, as HumanEval's prompts hold):
        the prompt when it is valid Python on its own, else nothing."""
        if self.prompt is None:
            return ""
        try:
            ast.parse(self.prompt)
        except SyntaxError:
            return ""
        return self.prompt

    @property
    def test_code(self) -> str:
        return self.tests + (f"\ncheck({self.entry_point})\n" if self.entry_point else "\n")


def called_functions(tests: str) -> list[str]:
    """Names the tests call that neither Python's builtins nor the tests themselves define."""
    tree = ast.parse(tests)
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                  ast.ClassDef))}
    defined |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name not in names and name not in defined and not hasattr(builtins, name):
                names.append(name)
    return names


def make_task(rec: object, where: str) -> Task:
    """A `Task` from one JSON record; UserError naming `where` (FILE:LINE) when the record cannot be used."""
    if not isinstance(rec, dict):
        raise UserError(f"{where}: a task must be a JSON object")
    has_prompt, has_instr = isinstance(rec.get("prompt"), str), isinstance(rec.get("instruction"), str)
    if has_prompt == has_instr:
        raise UserError(f"{where}: a task needs exactly one of 'prompt' (completion) and 'instruction' (chat), "
                        "as a string")
    if (rec.get("prompt") or rec.get("instruction") or "").strip() == "":
        raise UserError(f"{where}: the prompt/instruction is empty")
    tests = rec.get("tests")
    if isinstance(tests, list) and all(isinstance(t, str) for t in tests):
        tests = "\n".join(tests)
    if not isinstance(tests, str) or not tests.strip():
        raise UserError(f"{where}: 'tests' must be Python code (a string or a list of strings)")
    language = rec.get("language", "python")
    if str(language).lower() not in ("python", "py"):
        raise UserError(f"{where}: language {language!r}: GRPO rewards run Python tests only")
    ep = rec.get("entry_point")
    if ep is not None and (not isinstance(ep, str) or not ep.isidentifier()):
        raise UserError(f"{where}: entry_point must be a Python identifier, got {ep!r}")
    try:
        names = [ep] if ep else called_functions(tests)
        ast.parse(tests + (f"\ncheck({ep})\n" if ep else ""))
    except SyntaxError as e:
        raise UserError(f"{where}: 'tests' is not valid Python ({e.msg}, line {e.lineno})") from None
    if not names:
        raise UserError(f"{where}: the tests call no function of the program; give 'entry_point'")
    return Task(task_id=str(rec.get("task_id", where)), tests=tests, entry_points=tuple(names),
                prompt=rec.get("prompt"), instruction=rec.get("instruction"), entry_point=ep)


def load_tasks(path: str | Path) -> list[Task]:
    """Every task of a JSONL file; the first bad record stops the run (UserError with FILE:LINE)."""
    text = read_text_file(path, "--tasks file")
    tasks = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise UserError(f"{path}:{n}: not JSON ({e})") from None
        tasks.append(make_task(rec, f"{path}:{n}"))
    if not tasks:
        raise UserError(f"--tasks file {str(path)!r} holds no task")
    ids = [t.task_id for t in tasks]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"--tasks file {str(path)!r}: task_id {dup!r} appears more than once")
    return tasks


def mbpp_train_tasks(path: str | Path | None = None) -> list[Task]:
    """MBPP's train split as chat tasks: the problem text and its asserts as the instruction (the MBPP prompt
    shows the tests too), the asserts as tests. `path`: an mbpp.jsonl (default: $DSCODER_BENCHMARKS, then the hub).
    Left out: rows with test_setup_code, and rows whose tests build the solution's own class (task 601), which
    the two-process check cannot replay."""
    from ..eval.tasks.base import load_rows
    from ..eval.tasks.mbpp import MBPP, entry_points

    rows, source = load_rows(MBPP.data_file, path, MBPP.hub)
    tasks = []
    for r in rows:
        if int(r["task_id"]) not in MBPP_TRAIN_IDS:
            continue
        if (r.get("test_setup_code") or "").strip():
            continue            # setup code that builds the solution's own classes cannot run in the checker
        names = entry_points(r["code"], r["test_list"])
        if set(called_functions("\n".join(r["test_list"]))) & _classes(r["code"]):
            continue            # the tests build the solution's own objects: not plain data the checker can replay
        tests = "\n".join(r["test_list"])
        instruction = f"{r['text'].strip()}\nYour code should pass these tests:\n\n{tests}"
        tasks.append(Task(task_id=f"mbpp/{r['task_id']}", tests=tests,
                          entry_points=tuple(names), instruction=instruction))
    if not tasks:
        raise UserError(f"{source}: no MBPP train-split rows (task_ids 601-974); give --tasks FILE")
    return tasks


def _classes(code: str) -> set[str]:
    try:
        return {n.name for n in ast.parse(code.replace("\t", "    ")).body if isinstance(n, ast.ClassDef)}
    except SyntaxError:
        return set()


def task_at(slot: int, n_tasks: int, seed: int) -> int:
    """The task of group slot `slot` (0, 1, 2, ... over the whole run): epochs of seeded permutations read in
    order, so every task comes once per epoch and a resumed run draws exactly what an uninterrupted one would."""
    epoch, i = divmod(slot, n_tasks)
    order = list(range(n_tasks))
    random.Random(f"grpo-tasks-{seed}-{epoch}").shuffle(order)
    return order[i]


def task_prompts(tasks, tokenizer, context: int, max_new_tokens: int) -> tuple[list[list[int]], list[str]]:
    """Every task's prompt ids (BOS + prompt, or the chat template's rendering) and kind, checked to fit."""
    from ..infer.text import chat_ids, completion_ids
    ids, kinds = [], []
    for t in tasks:
        if t.prompt is not None:
            ids.append(completion_ids(tokenizer, t.prompt))
            kinds.append("completion")
        else:
            ids.append(chat_ids(tokenizer, [{"role": "user", "content": t.instruction}]))
            kinds.append("chat")
        if len(ids[-1]) + max_new_tokens > context:
            raise UserError(f"task {t.task_id}: prompt of {len(ids[-1])} tokens + --max-new-tokens "
                            f"{max_new_tokens} exceeds the model's context of {context} tokens")
    return ids, kinds


def program_of(task: Task, answer: str) -> str:
    """The code under test: prompt + completion, or the first fenced Python block of a chat answer."""
    from ..eval.tasks.base import first_code_block

    if task.prompt is not None:
        return task.prompt + answer
    block = first_code_block(answer, "python")
    return block if block is not None else answer


def sandbox_reward(task: Task, answer: str, timeout: float) -> tuple[float, str]:
    """(reward, verdict status): 1.0 passed, 0.0 failed, NaN when the sandbox itself failed."""
    from ..eval.runners import check_python

    v = check_python(program_of(task, answer), task.test_code, task.entry_points,
                     prelude=task.prelude, timeout=timeout)
    if v.status == "infra_error":
        return math.nan, v.status
    return (1.0 if v.passed else 0.0), v.status


def score_all(tasks: Sequence[Task], answers: Sequence[str], timeout: float, workers: int,
              cache: dict | None = None) -> list[tuple[float, str]]:
    """`sandbox_reward` of each (task, answer) pair, `workers` sandbox runs at a time. `cache` maps (task_id, answer)
    to an earlier verdict (the same program and tests get the same verdict; sandbox failures are not kept)."""
    from concurrent.futures import ThreadPoolExecutor

    cache = {} if cache is None else cache
    keys = [(t.task_id, a) for t, a in zip(tasks, answers)]
    todo = {k: t for k, t in zip(keys, tasks) if k not in cache}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = dict(zip(todo, pool.map(lambda kt: sandbox_reward(kt[1], kt[0][1], timeout), todo.items())))
    for k, v in found.items():
        if v[1] != "infra_error":
            cache[k] = v
    return [cache.get(k) or found[k] for k in keys]
