"""MultiPL-E HumanEval ("reworded" prompts) in the languages of DeepSeek-Coder 2401.14196 Table 3 — C++, Java,
JavaScript, TypeScript, PHP, C#, Bash, Python — plus Go and Rust where their toolchains exist
(deepseek-ai/DeepSeek-Coder Evaluation/).

Files: `multipl-e/humaneval-{lang}-reworded.jsonl.gz` with fields name, language, prompt, doctests, original,
prompt_terminology, tests, stop_tokens. Task ids are `{lang}/{name}`, e.g. `cpp/HumanEval_53_add`.
base: the model continues the prompt; its text is cut at the file's `stop_tokens` (TypeScript also at `\\nexport`,
`\\nimport`, `\\nexport default`, `\\nimport default`, `\\nconsole.log`, as DeepSeek's `cleanup_code` does).
program = prompt + completion + "\\n" + tests. Python goes through `check_python` (two processes, the strong
verdict); every other language through `check_program`, which requires exit status 0 AND a per-run nonce printed
after the last check (weaker: the program shares a process with its checks; see `runners.py`). A language whose
toolchain is missing is a reported skip, never a failure.

Data repair: in the shipped C# file (158 rows) every prompt's method signature is glued onto the last doc-comment
line (`    //     public static long Add(long x, long y) {`), so the function under completion does not exist and
even a correct body cannot compile. `repair_prompt` moves such a signature back onto its own line; nothing else
in any prompt or test is touched.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from dscoder.errors import UserError
from dscoder.eval.runners import ALIASES, LANGS, Verdict, check_program, check_python, toolchain_available
from dscoder.eval.tasks.base import HubSource, Prompt, Task, load_rows, require_fields, truncate_at

PAPER_LANGS = ("py", "cpp", "java", "php", "ts", "cs", "sh", "js")
DEFAULT_LANGS = PAPER_LANGS + ("go", "rs")
TS_STOPS = ("\nexport", "\nimport", "\nexport default", "\nimport default", "\nconsole.log")
FIELDS = ("name", "prompt", "tests", "stop_tokens")


def canonical_lang(lang: str) -> str:
    lang = ALIASES.get(lang.lower(), lang.lower())
    if lang != "py" and lang not in LANGS:
        raise UserError(f"unknown MultiPL-E language {lang!r}; known: py, {', '.join(LANGS)}")
    return lang


CS_GLUED_SIGNATURE = re.compile(r"^(\s*)//\s+((?:public|private|static|internal)\b.*\{)\s*$")


def repair_prompt(lang: str, prompt: str) -> str:
    """Un-comment a C# signature glued onto the doc comment's last line (see the module docstring)."""
    if lang != "cs":
        return prompt
    lines = prompt.rstrip("\n").split("\n")
    m = CS_GLUED_SIGNATURE.match(lines[-1])
    if not m:
        return prompt
    return "\n".join(lines[:-1] + [m.group(1) + m.group(2)]) + "\n"


def _lang_of_file(p: Path) -> str | None:
    m = re.match(r"humaneval-([a-z]+)-reworded\.jsonl(\.gz)?$", p.name)
    return m.group(1) if m else None


class MultiPLE(Task):
    name = "multipl-e"
    modes = ("base",)
    data_file = "multipl-e"
    timeout = 10.0

    def __init__(self, mode: str = "base", timeout: float | None = None, languages: Sequence[str] | None = None):
        super().__init__(mode, timeout)
        self.languages = [canonical_lang(x) for x in (languages or DEFAULT_LANGS)]

    def _sources(self, path: str | os.PathLike | None) -> list[tuple[str, str | os.PathLike | None]]:
        """(language, data path) pairs: a `path` naming one language's file selects that language alone."""
        if path is not None and Path(path).is_file():
            lang = _lang_of_file(Path(path))
            if lang is None:
                raise UserError(f"{path}: expected a file named humaneval-LANG-reworded.jsonl[.gz]")
            return [(canonical_lang(lang), path)]
        return [(lang, path) for lang in self.languages]

    def load(self, path: str | os.PathLike | None = None) -> list[dict]:
        problems = []
        for lang, src in self._sources(path):
            rel = f"{self.data_file}/humaneval-{lang}-reworded.jsonl.gz"
            rows, where = load_rows(rel, src, HubSource("nuprl/MultiPL-E", f"humaneval-{lang}"))
            require_fields(rows, FIELDS, where)
            for r in rows:
                problems.append({**r, "prompt": repair_prompt(lang, r["prompt"]), "task_id": f"{lang}/{r['name']}",
                                 "lang": lang})
        return problems

    def language(self, problem: dict) -> str:
        return problem["lang"]

    def skip_reason(self, problem: dict) -> str | None:
        lang = problem["lang"]
        if toolchain_available(lang):
            return None
        return f"toolchain for {lang} not installed ({LANGS[lang].package})"

    def stops(self, problem: dict) -> tuple[str, ...]:
        extra = TS_STOPS if problem["lang"] == "ts" else ()
        return tuple(problem["stop_tokens"]) + extra

    def prompt(self, problem: dict) -> Prompt:
        return Prompt("completion", problem["prompt"], stop=self.stops(problem), max_new_tokens=500)

    def postprocess(self, problem: dict, text: str) -> str:
        return truncate_at(text, self.stops(problem))

    def score(self, problem: dict, completion: str) -> Verdict:
        if problem["lang"] == "py":
            name = re.findall(r"^def\s+(\w+)\s*\(", problem["prompt"], re.M)
            if not name:
                raise UserError(f"{problem['task_id']}: no function definition in the prompt")
            return check_python(problem["prompt"] + completion, problem["tests"], name[-1],
                                prelude=problem["prompt"], timeout=self.timeout)
        return check_program(problem["lang"], problem["prompt"] + completion + "\n" + problem["tests"],
                             timeout=self.timeout)
