"""Request bodies of the OpenAI-compatible and llama.cpp-compatible routes, checked field by field.

Every problem is an `ApiError` that becomes OpenAI's error envelope `{"error": {"message", "type", "param",
"code"}}` with its HTTP status; bad input is always a 4xx that names the field. A field the server does not
implement (`best_of`, `logit_bias`, `tools`, penalties other than 0, ...) is refused by name, never ignored,
except the llama.cpp hints in `INFILL_HINTS`, which change only how llama.cpp itself schedules or reports.
llama.cpp's `cache_prompt` (default true) is honoured on every route: false prefills the whole prompt instead of
reusing a kept prefix.

Field meanings and ranges follow the OpenAI API reference (openai-openapi `openapi.json`: /v1/completions,
/v1/chat/completions) and llama.cpp's `tools/server/README.md` (/infill).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

SEED_RANGE = (-2**63, 2**64 - 1)      # OpenAI's seed is an int64; torch takes 0 ... 2**64-1 (we use seed mod 2**64)
MAX_STOP = 4                          # OpenAI: up to 4 stop sequences
MAX_STOP_CHARS = 1000                 # each is checked against the last tokens every step: keep that bounded
MAX_PROMPTS = 64                      # prompts in one /v1/completions request
MAX_LOGPROBS = 5                      # OpenAI /v1/completions: logprobs 0-5


class ApiError(Exception):
    """An HTTP error answered with OpenAI's envelope."""

    def __init__(self, status: int, message: str, param: str | None = None, type_: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str | None, message: str) -> ApiError:
    return ApiError(400, message, param)


def _no_constants(name: str):
    raise bad(None, f"the request body is not valid JSON: {name} is not a JSON number")


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body (strict: UTF-8, no NaN/Infinity, an object at the top)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(None, f"the request body is not UTF-8 (byte {e.start})") from None
    try:
        body = json.loads(text, parse_constant=_no_constants)
    except ApiError:
        raise
    except (ValueError, RecursionError) as e:
        raise bad(None, f"the request body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise bad(None, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


# --- typed fields ---------------------------------------------------------------------------------------------


def text(value: Any, param: str, empty: bool = True) -> str:
    """A JSON string that the tokenizer can take: lone surrogates (\\ud800 escapes) are refused, not mangled."""
    if not isinstance(value, str):
        raise bad(param, f"{param} must be a string, got {_kind(value)}")
    if not empty and not value:
        raise bad(param, f"{param} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad(param, f"{param} holds an unpaired UTF-16 surrogate at character {e.start}") from None
    return value


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


class Fields:
    """Typed reads of one request object; `done()` refuses every field that was not read."""

    def __init__(self, body: dict, where: str = ""):
        self.body, self.where, self.seen = body, where, set()

    def get(self, name: str) -> Any:
        self.seen.add(name)
        return self.body.get(name)

    def p(self, name: str) -> str:
        return f"{self.where}{name}"

    def integer(self, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
        v = self.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad(self.p(name), f"{self.p(name)} must be an integer, got {_kind(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise bad(self.p(name), f"{self.p(name)} must be {rng}, got {v}")
        return v

    def number(self, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
        v = self.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(self.p(name), f"{self.p(name)} must be a finite number, got {_kind(v)}")
        if v < lo or v > hi or (lo_open and v == lo):
            raise bad(self.p(name), f"{self.p(name)} must be {'>' if lo_open else '>='} {lo} and <= {hi}, got {v}")
        return float(v)

    def boolean(self, name: str, default: bool = False) -> bool:
        v = self.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise bad(self.p(name), f"{self.p(name)} must be true or false, got {_kind(v)}")
        return v

    def string(self, name: str, default: str | None = None) -> str | None:
        v = self.get(name)
        return default if v is None else text(v, self.p(name))

    def obj(self, name: str) -> dict:
        v = self.get(name)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise bad(self.p(name), f"{self.p(name)} must be an object, got {_kind(v)}")
        return v

    def stop(self) -> tuple[str, ...]:
        v = self.get("stop")
        if v is None:
            return ()
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or len(items) > MAX_STOP:
            raise bad("stop", f"stop must be a string or an array of at most {MAX_STOP} strings")
        for s in items:
            text(s, "stop", empty=False)
            if len(s) > MAX_STOP_CHARS:
                raise bad("stop", f"a stop string may be at most {MAX_STOP_CHARS} characters, got {len(s)}")
        return tuple(items)

    def accept_noops(self, noops: dict[str, tuple]) -> None:
        """Fields accepted only at the value(s) that change nothing (penalties 0, an empty logit_bias, ...)."""
        for name, ok in noops.items():
            v = self.get(name)
            if v is not None and v not in ok:
                raise bad(name, f"{name} is not supported by this server (only {ok[0]!r} or null)")

    def done(self) -> None:
        extra = [self.p(k) for k, v in self.body.items() if k not in self.seen and v is not None]
        if extra:
            raise bad(extra[0], f"{', '.join(extra)}: not supported by this server")


NOOPS = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({},), "best_of": (1,)}
CHAT_NOOPS = {**NOOPS, "tools": ([],), "tool_choice": ("none",), "parallel_tool_calls": (False, True),
              "response_format": ({"type": "text"},), "logprobs": (False,), "store": (False,)}


@dataclass
class Sampling:
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    cache_prompt: bool = True          # llama.cpp's field: reuse a kept prompt prefix (false: prefill it all)


def sampling(f: Fields, max_tokens: int | None, temperature: float = 1.0, top_p: float = 1.0) -> Sampling:
    seed = f.integer("seed", None, *SEED_RANGE)
    stream = f.boolean("stream")
    opts = Fields(f.obj("stream_options"), "stream_options.")
    include_usage = opts.boolean("include_usage")
    opts.done()
    if include_usage and not stream:
        raise bad("stream_options", "stream_options is only allowed with stream: true")
    return Sampling(max_tokens=max_tokens, temperature=f.number("temperature", temperature, 0.0, 2.0),
                    top_p=f.number("top_p", top_p, 0.0, 1.0, lo_open=True),
                    seed=None if seed is None else seed % 2**64, stop=f.stop(), stream=stream,
                    include_usage=include_usage, cache_prompt=f.boolean("cache_prompt", True))


# --- the three request kinds ----------------------------------------------------------------------------------


@dataclass
class CompletionRequest:
    model: str
    prompts: list[str | list[int]]
    suffix: str | None
    sampling: Sampling
    n: int
    echo: bool
    logprobs: int | None
    extra_files: list[tuple[str, str]] = field(default_factory=list)
    max_context_tokens: int | None = None


def model_name(f: Fields) -> str:
    v = f.get("model")
    if v is None:
        raise bad("model", "model is required (GET /v1/models lists the served model)")
    return text(v, "model", empty=False)


def _prompts(v: Any) -> list[str | list[int]]:
    """prompt: a string, an array of strings, an array of token ids, or an array of such arrays."""
    if isinstance(v, str):
        return [text(v, "prompt", empty=False)]
    if not isinstance(v, list) or not v:
        raise bad("prompt", "prompt must be a non-empty string, array of strings, or array of token ids")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        return [list(v)]
    if len(v) > MAX_PROMPTS:
        raise bad("prompt", f"at most {MAX_PROMPTS} prompts per request, got {len(v)}")
    out: list[str | list[int]] = []
    for p in v:
        if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            out.append(list(p))
        elif isinstance(p, str):
            out.append(text(p, "prompt", empty=False))
        else:
            raise bad("prompt", "each prompt must be a non-empty string or a non-empty array of token ids")
    return out


def extra_files(v: Any, param: str, name_key: str = "filename", text_key: str = "text") -> list[tuple[str, str]]:
    """[{filename, text}, ...] -> [(path, text)], as llama.cpp's input_extra."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise bad(param, f"{param} must be an array of {{{name_key}, {text_key}}} objects")
    out = []
    for i, item in enumerate(v):
        if not isinstance(item, dict):
            raise bad(param, f"{param}[{i}] must be an object with {name_key} and {text_key}")
        f = Fields(item, f"{param}[{i}].")
        path, body = f.string(name_key, ""), f.string(text_key, "")
        f.done()
        out.append((path.replace("\n", " "), body))
    return out


def completion_request(body: dict) -> CompletionRequest:
    f = Fields(body)
    model = model_name(f)
    if f.get("prompt") is None:
        raise bad("prompt", "prompt is required")
    prompts = _prompts(body["prompt"])
    suffix = f.string("suffix")
    if suffix is not None and any(not isinstance(p, str) for p in prompts):
        raise bad("suffix", "suffix needs a text prompt (fill-in-the-middle is built from text)")
    s = sampling(f, f.integer("max_tokens", 16, 1))
    n, echo = f.integer("n", 1, 1, 128), f.boolean("echo")
    logprobs = f.integer("logprobs", None, 0, MAX_LOGPROBS)
    if echo and suffix is not None:
        raise bad("echo", "echo cannot be combined with suffix")
    if echo and logprobs is not None:
        raise bad("logprobs", "logprobs of the prompt (echo with logprobs) are not supported by this server")
    extra = extra_files(f.get("extra_files"), "extra_files", "filename", "text")
    budget = f.integer("max_context_tokens", None, 1)
    if (extra or budget) and suffix is None:
        raise bad("extra_files" if extra else "max_context_tokens",
                  "extra_files and max_context_tokens shape the fill-in-the-middle prompt: give a suffix too")
    f.get("user")
    f.accept_noops(NOOPS)
    f.done()
    return CompletionRequest(model, prompts, suffix, s, n, echo, logprobs, extra, budget)


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    sampling: Sampling
    n: int


def _content(v: Any, i: int) -> str:
    """A message's content: a string, or an array of {"type": "text", "text"} parts (joined)."""
    param = f"messages[{i}].content"
    if isinstance(v, list):
        parts = []
        for part in v:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad(param, f"{param}: only text parts are supported")
            parts.append(text(part.get("text"), param))
        return "".join(parts)
    return text(v, param)


def chat_request(body: dict) -> ChatRequest:
    f = Fields(body)
    model = model_name(f)
    msgs = f.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("messages", "messages must be a non-empty array of {role, content} objects")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad("messages", f"messages[{i}] must be an object with role and content")
        g = Fields(m, f"messages[{i}].")
        role = g.string("role")
        role = "system" if role == "developer" else role       # OpenAI's newer name for the system role
        if role not in ("system", "user", "assistant"):
            raise bad(f"messages[{i}].role", f"messages[{i}].role must be system, developer, user or assistant, "
                                             f"got {role!r}")
        out.append({"role": role, "content": _content(g.get("content"), i)})
        g.get("name")
        g.done()
    a, b = f.integer("max_tokens", None, 1), f.integer("max_completion_tokens", None, 1)
    if a is not None and b is not None and a != b:
        raise bad("max_completion_tokens", "give max_completion_tokens or max_tokens, not two different values")
    s = sampling(f, b if b is not None else a)
    n = f.integer("n", 1, 1, 128)
    f.get("user")
    f.accept_noops(CHAT_NOOPS)
    f.done()
    return ChatRequest(model, out, s, n)


# llama.cpp /infill fields that steer only llama.cpp's own slot choice, prompt-time limit, sampler order or response
# trimming: accepted so llama.vim / llama.vscode work unchanged, and documented as having no effect here
INFILL_HINTS = ("id_slot", "t_max_prompt_ms", "samplers", "response_fields", "n_indent")


@dataclass
class InfillRequest:
    prefix: str
    suffix: str
    prompt: str
    extra: list[tuple[str, str]]
    sampling: Sampling
    n_predict: int                     # -1: up to the context; 0: nothing (editors use it to warm a cache)
    time_limit: float | None           # seconds (t_max_predict_ms)


def infill_request(body: dict) -> InfillRequest:
    """llama.cpp's /infill: defaults are llama.cpp's (temperature 0.8, top_k 40, top_p 0.95, n_predict -1)."""
    f = Fields(body)
    prefix, suffix = f.string("input_prefix", ""), f.string("input_suffix", "")
    prompt = f.string("prompt", "")
    extra = extra_files(f.get("input_extra"), "input_extra")
    n_predict = f.integer("n_predict", -1, -1)
    s = sampling(f, None, temperature=0.8, top_p=0.95)
    s.top_k = f.integer("top_k", 40, 0)
    t_ms = f.integer("t_max_predict_ms", 0, 0)
    f.get("model")
    for name in INFILL_HINTS:
        f.get(name)
    f.done()
    if not (prefix or suffix or prompt):
        raise bad("input_prefix", "infill needs input_prefix, input_suffix or prompt")
    return InfillRequest(prefix, suffix, prompt, extra, s, n_predict, t_ms / 1000 if t_ms else None)
