"""Shared pieces of every verb's command line: the parser class, argument types that reject bad numbers at parse
time, --device/--dtype, strict UTF-8 reading of user text, and the output-folder check.

Every error here is one line naming the flag or input and the offending value; argparse's own errors (an unknown
flag, a missing required one) come out the same way, as `dscoder VERB: error: ...` and exit status 2. torch is
imported only inside `resolve_device_dtype`, so a bad flag fails before any heavy import.
"""
from __future__ import annotations

import argparse
import inspect
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import UserError

SEED_MAX = 2**64 - 1     # torch.manual_seed and numpy's SeedSequence accept 0 ... 2**64-1


# --------------------------------------------------------------------------------------------- the parser

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description keeps its line breaks (it is the verb's docstring); an option's default is appended to its
    help as "(default: X)" unless the help already mentions a default or the default is None/False/empty."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        unset = d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, (list, str)) and not d)
        if "default" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `PROG: error: MESSAGE (see PROG --help)`, exit status 2, no usage block.

    `add_inputs` declares the verb's input paths as positionals that may also be given through a hidden, deprecated
    option spelling (e.g. `--data`)."""

    def __init__(self, prog: str, doc: str | None = None, **kw: Any) -> None:
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(prog=prog, description=inspect.cleandoc(doc) if doc else None, **kw)
        self._required_lists: list[tuple[str, str]] = []
        self._intermixed = False

    def error(self, message: str) -> None:   # type: ignore[override]
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def add_argument(self, *names: str, **kw: Any) -> argparse.Action:
        # an option parsed by one of the types below shows its kind: --steps N, --lr X, --out DIR
        if names and names[0].startswith("-") and "metavar" not in kw and "choices" not in kw:
            shown = getattr(kw.get("type"), "metavar", None)
            if shown:
                kw["metavar"] = shown
        return super().add_argument(*names, **kw)

    def add_inputs(self, dest: str, metavar: str, help: str, *, alias: str | None = None,
                   required: bool = True) -> None:
        """Positional input paths (`dest`, one or more), plus `alias` as a hidden, deprecated option spelling."""
        self.add_argument(dest, nargs="*", action="extend", metavar=metavar, help=help)
        self._intermixed = True     # `dscoder pretrain a/ --out o b/`: inputs may sit between options
        if alias:
            self.add_argument(alias, dest=dest, nargs="+", action="extend", help=argparse.SUPPRESS)
        if required:
            self._required_lists.append((dest, metavar))

    def add_alias(self, old: str, dest: str, **kw: Any) -> None:
        """A renamed option's old spelling, kept working but hidden from --help."""
        self.add_argument(old, dest=dest, help=argparse.SUPPRESS, **kw)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns = self.parse_intermixed_args(args, namespace) if self._intermixed else super().parse_args(args, namespace)
        for dest, metavar in self._required_lists:
            if not getattr(ns, dest, None):
                self.error(f"the following arguments are required: {metavar}")
        return ns


# ---------------------------------------------------------------------------------------- argument types

def _number(text: str, kind: Callable[[str], Any], what: str) -> Any:
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _bounds(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"<= {hi:g}"


def finite_float(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite float in [lo, hi] ((lo, hi] with lo_open); nan and inf are refused."""
    def parse(text: str) -> float:
        v = _number(text, float, "a number")
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {_bounds(lo, hi, lo_open)}, got {text!r}")
        return v
    parse.__name__, parse.metavar = "number", "X"
    return parse


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in [lo, hi] (either bound may be None)."""
    def parse(text: str) -> int:
        v = _number(text, int, "an integer")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {_bounds(lo, hi)}, got {text!r}")
        return v
    parse.__name__, parse.metavar = "integer", "N"
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)
positive_float = finite_float(0.0, lo_open=True)
non_negative_float = finite_float(0.0)
probability = finite_float(0.0, 1.0)


def seed(text: str) -> int:
    """argparse type: a random seed, 0 ... 2**64-1 (what torch.manual_seed accepts)."""
    v = _number(text, int, "an integer")
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64-1], got {text!r}")
    return v


seed.metavar = "N"  # type: ignore[attr-defined]

def comma_list(text: str) -> list[str]:
    """argparse type for `--flag a,b,c` (used with action="extend", so the flag may also repeat)."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


comma_list.metavar = "A,B"  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ device/dtype

DTYPES = ("auto", "float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
                  "float": "float32"}


def device_name(text: str) -> str:
    """argparse type for --device (also used to check a library caller's device name)."""
    t = text.strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", t):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return t


def dtype_name(text: str) -> str:
    """argparse type for --dtype; fp32/bf16/fp16 are accepted for float32/bfloat16/float16."""
    t = _DTYPE_ALIASES.get(text.strip().lower(), text.strip().lower())
    if t not in DTYPES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DTYPES)}, got {text!r}")
    return t


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--device auto|cpu|cuda|cuda:N and --dtype auto|float32|bfloat16|float16 (see `resolve_device_dtype`)."""
    parser.add_argument("--device", type=device_name, default="auto", metavar="auto|cpu|cuda|cuda:N",
                        help="where to run; auto: CUDA when available, else CPU")
    parser.add_argument("--dtype", type=dtype_name, default="auto", metavar="|".join(DTYPES),
                        help="compute dtype; auto: bfloat16 on CUDA, float32 on CPU")


def resolve_device_dtype(args: argparse.Namespace):
    """(torch.device, torch.dtype) from --device/--dtype; UserError when CUDA is asked for and absent."""
    import torch

    name = getattr(args, "device", "auto") or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available here (use --device cpu or auto)")
        index = int(name.split(":")[1]) if ":" in name else None
        if index is not None and index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    device = torch.device(name)
    dtype = getattr(args, "dtype", "auto") or "auto"
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    return device, getattr(torch, dtype)


# ------------------------------------------------------------------------------------------- user text

def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def read_text_arg(value: str, what: str) -> str:
    """A command-line string, refused if it came from bytes that are not UTF-8 (Python hands those over as lone
    surrogates, which no tokenizer or file can hold)."""
    for i, ch in enumerate(value):
        if "\ud800" <= ch <= "\udfff":
            raise UserError(f"{what} is not valid UTF-8 (undecodable byte or lone surrogate at character {i})")
    return value


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """The whole file as strict UTF-8; UserError naming `what` and the path when it cannot be read or decoded."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None
    return _utf8(data, f"{what} {str(path)!r}")


def read_stdin_text(what: str) -> str:
    """All of stdin as strict UTF-8."""
    return _utf8(sys.stdin.buffer.read(), what)


def stdin_lines(what: str) -> Iterator[str]:
    """stdin line by line (newline stripped), each strict UTF-8; a bad line is an error naming its number."""
    for n, raw in enumerate(iter(sys.stdin.buffer.readline, b""), 1):
        yield _utf8(raw, f"{what} (line {n})").rstrip("\r\n")


# ------------------------------------------------------------------------------------------ output folder

def _folder_problem(p: Path) -> str | None:
    """Why `p` cannot be used as an output folder, or None."""
    if p.exists() and not p.is_dir():
        return "exists and is not a folder"
    probe = p
    while not probe.exists():
        if probe.is_symlink():
            return f"cannot be created: {str(probe)!r} is a dangling symbolic link"
        probe = probe.parent
    if not probe.is_dir():
        return f"cannot be created: {str(probe)!r} is a file"
    if not os.access(probe, os.W_OK | os.X_OK):
        return "is not writable" if probe == p else f"cannot be created: {str(probe)!r} is not writable"
    return None


def output_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """Check, before anything is written, that `path` is or can become a writable folder; nothing is created.

    UserError naming the path when it is an existing file, when an ancestor is a file, or when the nearest
    existing ancestor is not writable."""
    p = Path(path)
    problem = _folder_problem(p)
    if problem:
        raise UserError(f"{what} {str(p)!r} {problem}")
    return p


def out_outside_inputs(out: Path, inputs: Iterable[str | os.PathLike], noun: str, consequence: str) -> None:
    """`out` must not be an input folder or lie inside one: a rerun would read its own output. UserError naming
    both, e.g. "--out OUT is inside the source SRC: <consequence>; put --out outside SRC"."""
    out_real = Path(out).resolve()
    for src in inputs:
        real = Path(src).resolve()
        if real.is_dir() and (out_real == real or real in out_real.parents):
            raise UserError(f"--out {out} is inside the {noun} {src}: {consequence}; put --out outside {src}")


def out_dir(text: str) -> Path:
    """argparse type for `--out DIR`: the `output_folder` check at parse time."""
    p = Path(text)
    problem = _folder_problem(p) if text else "is empty"
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r} {problem}")
    return p


out_dir.metavar = "DIR"  # type: ignore[attr-defined]


def out_file(text: str) -> Path:
    """argparse type for `--out FILE` (a verb that writes one file): not a folder, and its folder can be made."""
    p = Path(text)
    if not text:
        problem = "is empty"
    elif p.is_dir():
        problem = "is a folder"
    else:
        problem = _folder_problem(p.parent)
        problem = problem and f"cannot be written: its folder {str(p.parent)!r} {problem}"
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r} {problem}")
    return p


out_file.metavar = "FILE"  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ --set FIELD=VALUE

def typed_overrides(items: list[str], base: Any, flag: str = "--set") -> dict[str, Any]:
    """`FIELD=VALUE` strings -> {field: value} for `base` (a config dataclass). VALUE is JSON (a bare word is a
    string) and must have the type of the field's current value: an int field takes an integer, a float field a
    finite number, a bool field true/false. Unknown fields are left for the config's own check to name."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"{flag} {item!r}: expected FIELD=VALUE")
        try:
            val = json.loads(raw)
        except ValueError:
            val = raw
        cur = getattr(base, key, None)
        if isinstance(cur, bool):
            ok, kind = isinstance(val, bool), "true or false"
        elif isinstance(cur, int):
            ok, kind = isinstance(val, int) and not isinstance(val, bool), "an integer"
        elif isinstance(cur, float):
            ok, kind = isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val), \
                "a finite number"
            val = float(val) if ok else val
        elif isinstance(cur, str):
            ok, kind = isinstance(val, str), "a string"
        else:
            ok, kind = True, ""
        if not ok:
            raise UserError(f"{flag} {key}={raw}: {key} takes {kind}, got {raw!r}")
        out[key] = val
    return out
