"""Instruction data: reading it for `dscoder sft`, and making it without a hub (`dscoder data instruct`).

Reading (`read_conversations`): the layouts `dscoder sft` takes, each as JSONL (one object a line) or Parquet
(one row a record):
* DeepSeek-Coder's finetune format, `{"instruction": ..., "output": ...}` (reference §1.4: the Evol-Instruct-Code
  layout its finetune script reads); the instruction is stripped as that script does, the output is kept as is;
* chat, `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`, multi-turn, ending with an
  assistant turn.
A bad record (not JSON, not an object, a missing field, a wrong type, an empty output, a conversation that does not
end with the assistant) is skipped and counted by reason, with its FILE:LINE (JSONL) or FILE:row N (Parquet).

Making (`main`, `dscoder data instruct`): see `mine.py`'s neighbour functions below and the verb's docstring.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserError

MAX_EXAMPLES = 5          # bad records named one by one in the summary; the rest are only counted


@dataclass
class ReadStats:
    records: int = 0
    used: int = 0
    truncated: int = 0                                   # samples cut to --seq-len (kept)
    bad: Counter = field(default_factory=Counter)        # reason -> count
    examples: list[str] = field(default_factory=list)    # "FILE:LINE (reason)", the first MAX_EXAMPLES

    def skip(self, where: str, reason: str) -> None:
        self.bad[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where} ({reason})")

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "used": self.used, "truncated": self.truncated, "bad": dict(self.bad), "bad_examples": self.examples}


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, parsed record or an Exception describing why it is unreadable) for each record of a file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as e:          # pyarrow raises ArrowInvalid / OSError on a damaged file
            raise UserError(f"{path}: not a readable Parquet file ({e})") from e
        for i, row in enumerate(table.to_pylist(), 1):
            yield f"{path}:row {i}", row
        return
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield f"{path}:{n}", ValueError("not UTF-8")
            except ValueError:
                yield f"{path}:{n}", ValueError("not JSON")


def to_messages(rec: Any) -> list[dict[str, str]] | str:
    """A record as a conversation, or the reason it is not usable."""
    from ..tokenizer.chat import validate_messages

    if isinstance(rec, Exception):
        return str(rec)
    if not isinstance(rec, dict):
        return "not an object"
    if "messages" in rec:
        try:
            msgs = validate_messages(rec["messages"])
        except UserError as e:
            return f"bad messages: {e}"
        if msgs[-1]["role"] != "assistant":
            return "the last message is not the assistant's"
        if any(m["role"] == "assistant" and not m["content"].strip() for m in msgs):
            return "empty assistant message"
        return msgs
    for key in ("instruction", "output"):
        if key not in rec:
            return f"missing field {key!r} (or 'messages')"
        if not isinstance(rec[key], str):
            return f"field {key!r} is not a string"
    if not rec["instruction"].strip():
        return "empty instruction"
    if not rec["output"].strip():
        return "empty output"
    return [{"role": "user", "content": rec["instruction"].strip()}, {"role": "assistant", "content": rec["output"]}]


def read_conversations(paths: list[str | Path]) -> tuple[list[tuple[str, list[dict[str, str]]]], ReadStats]:
    """[(where, messages)] of every usable record in `paths` (JSONL or .parquet), and what was skipped and why.
    A missing file is a UserError."""
    stats, out = ReadStats(), []
    for p in map(Path, paths):
        if not p.is_file():
            raise UserError(f"data file {p}: no such file")
        for where, rec in _rows(p):
            stats.records += 1
            msgs = to_messages(rec)
            if isinstance(msgs, str):
                stats.skip(where, msgs)
            else:
                out.append((where, msgs))
    stats.used = len(out)
    return out, stats
