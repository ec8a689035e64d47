"""`dscoder VERB ...`: one table from verbs to the functions that implement them. Nothing imports this module.

Each entry point is `main(argv) -> int` in the module that owns the work, with its own argparse whose
description is its docstring. Bad input raises `UserError`, printed here as one line, exit status 2.
"""
from __future__ import annotations

import importlib
import sys

from .errors import UserError

# verb (or "verb sub") -> "module:function"
VERBS: dict[str, tuple[str, str]] = {
    "data build": ("dscoder.data.pipeline:main", "turn repositories into dependency-ordered, deduplicated samples"),
    "tokenizer train": ("dscoder.tokenizer.bpe:main", "train a byte-level BPE tokenizer with DeepSeek's special tokens"),
    "pretrain": ("dscoder.train.pretrain:main", "next-token + FIM pretraining (also long-context extension)"),
    "generate": ("dscoder.infer.text:main_generate", "complete a prompt with a checkpoint"),
    "infill": ("dscoder.infer.text:main_infill", "fill in the middle between --prefix and --suffix"),
    "chat": ("dscoder.infer.text:main_chat", "chat with an instruct checkpoint (v1 or V2 template)"),
    "eval": ("dscoder.eval.harness:main", "run HumanEval / MBPP / MultiPL-E / FIM / CRUXEval in a sandbox"),
}


def _usage() -> str:
    width = max(map(len, VERBS))
    lines = ["usage: dscoder VERB [options]   (dscoder VERB --help for a verb's options)", "", "verbs:"]
    lines += [f"  {v:<{width}}  {help_}" for v, (_, help_) in VERBS.items()]
    return "\n".join(lines)


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
    found = _resolve(argv)
    if found is None:
        groups = sorted({v.split()[0] for v in VERBS if " " in v})
        hint = f" (did you mean `{argv[0]} {'|'.join(v.split()[1] for v in VERBS if v.startswith(argv[0] + ' '))}`?)" \
            if argv[0] in groups else ""
        print(f"dscoder: unknown verb {' '.join(argv[:2])!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    verb, rest = found
    target, _ = VERBS[verb]
    mod, fn = target.split(":")
    try:
        return int(getattr(importlib.import_module(mod), fn)(rest) or 0)
    except UserError as e:
        print(f"dscoder {verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dscoder {verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
