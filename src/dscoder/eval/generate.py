"""Where `dscoder eval` gets its samples: a dscoder model (the `Engine`) or any OpenAI-compatible server.

Both turn a task's `Prompt`s into raw model text, n samples each; the task's `postprocess` does the rest.
  * `EngineGenerator(engine_or_model, tokenizer)`: DeepSeek's formats (DeepSeek-Coder's README and Evaluation/),
    built by the one
    prompt builder in `infer.text` — completion = BOS + text, fim = BOS + PSM prompt (stop at EOS), chat = the
    tokenizer's chat template (stop at `<|EOT|>` or EOS). Prompts are batched (same kind, stop strings and length
    per batch). Each prompt gets `max_new_tokens` or the context left after it, whichever is smaller (as
    transformers' `generate` with `max_length` does); a prompt that fills the whole context is an error, raised
    before anything is generated.
  * `EndpointGenerator(url, model)`: `POST {url}/v1/completions` for completion and FIM prompts (the PSM prompt is
    sent as text; servers such as vLLM map the sentinel strings to their ids), `/v1/chat/completions` for chat.
    Standard library only (urllib); 5xx, 429 and connection errors are retried with backoff; the API key comes from
    `OPENAI_API_KEY` when it is set. At most 4 stop strings are sent (OpenAI's limit); post-processing applies
    them all anyway.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

from dscoder.errors import UserError
from dscoder.eval.tasks.base import Prompt

# (index of the prompt, its n raw texts)
Batch = list[tuple[int, list[str]]]


class EngineGenerator:
    """Samples from a loaded model: an `Engine`, or a model (wrapped in one), with its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, chat_style: str | None = None):
        from dscoder.infer.engine import Engine
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.engine = model if isinstance(model, Engine) else Engine(model)
        self.tok, self.batch_size, self.chat_style = tokenizer, batch_size, chat_style
        self.clamped = 0  # prompts whose max_new_tokens was cut to the context left after them

    def prompt_ids(self, p: Prompt) -> list[int]:
        from dscoder.infer.text import chat_ids, completion_ids, infill_ids
        if p.kind == "chat":
            return chat_ids(self.tok, [{"role": "user", "content": p.text}], self.chat_style)
        if p.kind == "fim":
            return infill_ids(self.tok, p.prefix, p.suffix)
        return completion_ids(self.tok, p.text)

    def _fit(self, prompts: Sequence[Prompt], ids: list[list[int]], override: int | None) -> list[int]:
        """max_new_tokens per prompt: the wanted number, cut to the context left after the prompt."""
        ctx = self.engine.max_len
        too_long = [i for i, x in enumerate(ids) if len(x) >= ctx]
        if too_long:
            worst = max(too_long, key=lambda i: len(ids[i]))
            raise UserError(f"{len(too_long)} of {len(ids)} prompts do not fit the model's context of {ctx} tokens "
                            f"(the longest is {len(ids[worst])} tokens); use a model with a longer context")
        want = [override or p.max_new_tokens for p in prompts]
        room = [min(w, ctx - len(x)) for w, x in zip(want, ids)]
        self.clamped = sum(r < w for r, w in zip(room, want))
        return room

    def check(self, prompts: Sequence[Prompt], max_new_tokens: int | None = None) -> None:
        """Raise the UserError `generate` would raise for these prompts (one too long for the context), now."""
        self._fit(prompts, [self.prompt_ids(p) for p in prompts], max_new_tokens)

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0,
                 max_new_tokens: int | None = None, seed: int = 0) -> Iterator[Batch]:
        """Yield batches of (prompt index, n raw texts) as they finish."""
        from dscoder.infer.text import decoder, stop_ids
        ids = [self.prompt_ids(p) for p in prompts]
        max_new = self._fit(prompts, ids, max_new_tokens)
        decode = decoder(self.tok)
        rows = [(i, s) for i in range(len(prompts)) for s in range(n)]
        pending: dict[int, list[str]] = {}
        for start in range(0, len(rows), self.batch_size):
            groups: dict[tuple, list[int]] = {}
            for i, _ in rows[start:start + self.batch_size]:
                groups.setdefault((prompts[i].kind, prompts[i].stop, max_new[i]), []).append(i)
            for (kind, stop, new), members in groups.items():
                outs = self.engine.generate([ids[i] for i in members], max_new_tokens=new, temperature=temperature,
                                            stop_ids=stop_ids(self.tok, kind, self.chat_style),
                                            stop_strings=list(stop), decode=decode, seed=(seed + start) % 2**64)
                for i, o in zip(members, outs):
                    pending.setdefault(i, []).append(o.text or "")
            done = [(i, pending.pop(i)) for i in sorted(pending) if len(pending[i]) == n]
            if done:
                yield done


class EndpointGenerator:
    """Samples from an OpenAI-compatible server (vLLM, SGLang, TGI, `dscoder serve`, ...)."""

    def __init__(self, url: str, model: str, workers: int = 4, request_timeout: float = 600.0, retries: int = 5):
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--endpoint must be an http(s) URL, got {url!r}")
        if not model:
            raise UserError("--endpoint needs --model NAME (the model name the server serves)")
        self.base = url.rstrip("/").removesuffix("/v1")
        self.model, self.workers = model, max(1, workers)
        self.request_timeout, self.retries = request_timeout, retries
        self.api_key = os.environ.get("OPENAI_API_KEY")

    def check(self, prompts: Sequence[Prompt], max_new_tokens: int | None = None) -> None:
        """Nothing to check locally: the server knows its context and answers HTTP 400 for a prompt too long."""

    def _post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.base + path, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.request_timeout) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                msg = e.read()[:500].decode("utf-8", "replace")
                if e.code < 500 and e.code != 429:
                    raise UserError(f"{self.base + path} answered HTTP {e.code}: {msg}") from None
                err = f"HTTP {e.code}: {msg}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                err = str(e)
            except ValueError as e:
                raise UserError(f"{self.base + path} did not answer JSON: {e}") from None
            if attempt < self.retries:
                time.sleep(min(0.25 * 2 ** attempt, 8.0))
        raise UserError(f"{self.base + path} failed after {self.retries + 1} tries: {err}")

    def _one(self, p: Prompt, n: int, temperature: float, max_new: int, seed: int) -> list[str]:
        from dscoder.tokenizer.fim import psm_prompt
        body = {"model": self.model, "max_tokens": max_new, "temperature": temperature, "n": n, "seed": seed}
        if p.stop:
            body["stop"] = list(p.stop[:4])
        if p.kind == "chat":
            body["messages"] = [{"role": "user", "content": p.text}]
            path, field = "/v1/chat/completions", "message"
        else:
            body["prompt"] = psm_prompt(p.prefix, p.suffix) if p.kind == "fim" else p.text
            path, field = "/v1/completions", "text"
        texts: list[str] = []
        while len(texts) < n:  # some servers ignore n > 1: ask again for the rest
            body["n"] = n - len(texts)
            choices = sorted(self._post(path, body).get("choices") or [], key=lambda c: c.get("index", 0))
            if not choices:
                raise UserError(f"{self.base + path} answered without choices")
            for c in choices:
                text = (c.get("message") or {}).get("content") if field == "message" else c.get("text")
                texts.append(text or "")
            body["seed"] = (seed + len(texts)) % 2**64
        return texts[:n]

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0,
                 max_new_tokens: int | None = None, seed: int = 0) -> Iterator[Batch]:
        with ThreadPoolExecutor(self.workers) as ex:
            futs = [ex.submit(self._one, p, n, temperature, max_new_tokens or p.max_new_tokens, (seed + i) % 2**64)
                    for i, p in enumerate(prompts)]
            for i, f in enumerate(futs):
                yield [(i, f.result())]
