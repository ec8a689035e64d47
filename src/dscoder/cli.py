"""`dscoder VERB ...`: one table from verbs to the functions that implement them. Nothing imports this module.

Each entry point is `main(argv) -> int` in the module that owns the work, with its own parser whose
description is its docstring. Bad input raises `UserError`, printed here as one line, exit status 2. Any other
exception is printed as one `internal error` line, exit status 1; DSCODER_DEBUG=1 shows its traceback instead.

Command-line conventions (every verb follows them; the shared pieces are in `dscoder.args`):
* Parser: `args.Parser(prog, doc)`. Its errors (unknown option, bad value) are one line too, exit status 2.
* Inputs a verb consumes are positional: `data build SRC...`, `tokenizer train PATH...`, `pretrain DATA...`.
  Its output is `--out DIR` (a verb that writes one file: `--out FILE`), checked at parse time (`args.out_dir`,
  `args.out_file`); a run folder is also locked (`durable.lock_run_folder`) before anything is written.
  A checkpoint to run is `--model DIR`; every other path is a named option (`--tokenizer DIR`, `--init-from DIR`,
  `--samples FILE`, `--prefix-file FILE`, eval's `--data PATH`).
* Parallelism is `--workers N` (processes or CPU threads, whichever the verb uses).
* Lists are comma-separated and the option may repeat: `--languages python,java --languages go` (`args.comma_list`).
* Every verb that runs a model takes `--device auto|cpu|cuda|cuda:N` and `--dtype auto|float32|bfloat16|float16`
  (`args.add_device_args`); auto means CUDA when present, bfloat16 on CUDA and float32 on CPU.
* Numbers are range-checked at parse time through `args` types (`finite_float`, `int_range`, `positive_int`,
  `seed`): nan, inf, negative counts and seeds outside 0 ... 2**64-1 are refused with the option's name.
* Text from the user (argv, files, stdin) must be UTF-8 (`args.read_text_arg`, `read_text_file`, `read_stdin_text`).
* A stage that runs by default is turned off with `--no-STAGE`; an option that is off by default is a bare flag.
* Help: every option has a help string (lowercase, no final period); the formatter appends "(default: X)".
* A renamed option keeps its old spelling as a hidden alias (`Parser.add_alias`).
"""
from __future__ import annotations

import importlib
import os
import sys

from .errors import UserError

# verb (or "verb sub") -> "module:function"
VERBS: dict[str, tuple[str, str]] = {
    "data build": ("dscoder.data.pipeline:main", "turn repositories into dependency-ordered, deduplicated samples"),
    "data instruct": ("dscoder.data.instruct:main", "instruction pairs from code docstrings + MBPP's train split"),
    "data web": ("dscoder.data.web.pipeline:main", "recall code- or math-related web pages with fastText iterations"),
    "tokenizer train": ("dscoder.tokenizer.bpe:main", "train a byte-level BPE tokenizer with DeepSeek's special tokens"),
    "pretrain": ("dscoder.train.pretrain:main", "next-token + FIM pretraining (also long-context extension)"),
    "sft": ("dscoder.train.sft:main", "instruction-tune a checkpoint with its chat template (full or LoRA)"),
    "grpo": ("dscoder.train.grpo:main", "reinforcement learning against sandboxed unit tests (GRPO)"),
    "rm train": ("dscoder.train.reward_model:main", "train a reward model on test-labelled GRPO rollouts"),
    "generate": ("dscoder.infer.text:main_generate", "complete a prompt with a checkpoint"),
    "infill": ("dscoder.infer.text:main_infill", "fill in the middle between --prefix and --suffix"),
    "chat": ("dscoder.infer.text:main_chat", "chat with an instruct checkpoint (v1 or V2 template)"),
    "eval": ("dscoder.eval.harness:main", "run HumanEval / MBPP / MultiPL-E / FIM / CRUXEval in a sandbox"),
    "export gguf": ("dscoder.export.gguf:main", "write a checkpoint as one GGUF file for llama.cpp / Ollama"),
    "serve": ("dscoder.serve.openai_api:main", "OpenAI-compatible HTTP server (completions + FIM, chat, /infill)"),
    "complete": ("dscoder.infer.repo_context:main", "complete at a cursor, the file's repository dependencies as context"),
}


def _usage() -> str:
    width = max(map(len, VERBS))
    lines = ["usage: dscoder VERB [options]   (dscoder VERB --help for a verb's options)", "", "verbs:"]
    lines += [f"  {v:<{width}}  {help_}" for v, (_, help_) in VERBS.items()]
    return "\n".join(lines)


def _group_usage(group: str) -> str:
    subs = {v.split()[1]: help_ for v, (_, help_) in VERBS.items() if v.startswith(group + " ")}
    width = max(map(len, subs))
    lines = [f"usage: dscoder {group} {'|'.join(subs)} [options]   (dscoder {group} VERB --help for its options)",
             "", f"{group} verbs:"]
    return "\n".join(lines + [f"  {v:<{width}}  {h}" for v, h in subs.items()])


def _resolve(argv: list[str]) -> tuple[str, list[str]] | None:
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in VERBS:
        return f"{argv[0]} {argv[1]}", argv[2:]
    if argv and argv[0] in VERBS:
        return argv[0], argv[1:]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__
        print(f"dscoder {__version__}")
        return 0
    groups = {v.split()[0] for v in VERBS if " " in v}
    if argv[0] in groups and (len(argv) == 1 or argv[1] in ("-h", "--help", "help")):
        print(_group_usage(argv[0]))         # `dscoder data`: list its sub-verbs
        return 0
    found = _resolve(argv)
    if found is None:
        if argv[0] in groups:
            print(f"dscoder {argv[0]}: error: unknown verb {argv[1]!r}; one of: "
                  f"{', '.join(v.split()[1] for v in VERBS if v.startswith(argv[0] + ' '))}", file=sys.stderr)
        else:
            print(f"dscoder: error: unknown verb {argv[0]!r}; one of: {', '.join(VERBS)} (dscoder --help)",
                  file=sys.stderr)
        return 2
    verb, rest = found
    try:
        return _run(verb, rest)
    except Exception as e:      # last resort: a user sees one line, never a traceback, unless they ask for it
        if os.environ.get("DSCODER_DEBUG"):
            raise
        what = " ".join(f"{type(e).__name__}: {e}".split())
        print(f"dscoder {verb}: internal error: {what}  (re-run with DSCODER_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


def _run(verb: str, rest: list[str]) -> int:
    target, _ = VERBS[verb]
    mod, fn = target.split(":")
    try:
        return int(getattr(importlib.import_module(mod), fn)(rest) or 0)
    except UserError as e:
        print(f"dscoder {verb}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except SystemExit as e:     # the verb's parser: --help (0) or a usage error (2), already printed
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    except BrokenPipeError:     # stdout closed early (`dscoder generate ... | head -1`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"dscoder {verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
