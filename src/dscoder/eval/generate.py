"""Where `dscoder eval` gets its samples: a dscoder checkpoint (the `Engine`) or any OpenAI-compatible server.

Both turn a task's `Prompt`s into raw model text, n samples each; the task's `postprocess` does the rest.
  * `EngineGenerator(model_dir)`: DeepSeek's formats (reference §1.3, §1.7) — completion = BOS + text; chat = the
    v1 instruct template, stop at `<|EOT|>` or EOS; fim = BOS + PSM prompt, stop at EOS. Prompts are batched
    (same stop strings and length per batch), too-long prompts keep their last tokens (as DeepSeek's scripts).
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
from typing import Iterator, Sequence

from dscoder.errors import UserError
from dscoder.eval.tasks.base import Prompt

# (index of the prompt, its n raw texts)
Batch = list[tuple[int, list[str]]]


class EngineGenerator:
    """Samples from a local dscoder / Hugging Face checkpoint folder."""

    def __init__(self, model_dir: str, batch_size: int = 8, chat_style: str = "v1"):
        from dscoder.infer.text import decoder, load
        from dscoder.tokenizer.special import special_ids
        if batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {batch_size}")
        self.engine, self.tok = load(model_dir)
        self.sp, self.decode = special_ids(self.tok), decoder(self.tok)
        self.batch_size, self.chat_style = batch_size, chat_style

    def _ids(self, p: Prompt) -> list[int]:
        from dscoder.infer.text import encode
        from dscoder.tokenizer.chat import render_chat
        from dscoder.tokenizer.fim import psm_prompt
        if p.kind == "chat":
            ids = encode(self.tok, render_chat([{"role": "user", "content": p.text}], style=self.chat_style))
            return ids if ids and ids[0] == self.sp.bos else [self.sp.bos, *ids]
        if p.kind == "fim":
            if not self.sp.has_fim:
                raise UserError("this tokenizer has no FIM sentinel tokens; the fim benchmark needs a base model "
                                "trained with FIM")
            return [self.sp.bos, *encode(self.tok, psm_prompt(p.prefix, p.suffix))]
        return [self.sp.bos, *encode(self.tok, p.text)]

    def _max_new(self, p: Prompt, override: int | None) -> int:
        want = override or p.max_new_tokens
        cap = max(1, self.engine.max_len // 2)  # keep room for the prompt in small test models
        return min(want, cap)

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0,
                 max_new_tokens: int | None = None, seed: int = 0) -> Iterator[Batch]:
        """Yield batches of (prompt index, n raw texts) as they finish."""
        rows = [(i, s) for i in range(len(prompts)) for s in range(n)]
        key = lambda i: (prompts[i].kind, prompts[i].stop, self._max_new(prompts[i], max_new_tokens))  # noqa: E731
        pending: dict[int, list[str]] = {}
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            groups: dict[tuple, list[tuple[int, int]]] = {}
            for i, s in chunk:
                groups.setdefault(key(i), []).append((i, s))
            for (kind, stop, max_new), members in groups.items():
                stop_ids = [self.sp.eos] + ([self.sp.eot] if kind == "chat" and self.sp.eot is not None else [])
                outs = self.engine.generate([self._ids(prompts[i]) for i, _ in members], max_new_tokens=max_new,
                                            temperature=temperature, stop_ids=stop_ids, stop_strings=list(stop),
                                            decode=self.decode, seed=seed + start, truncate="left")
                for (i, _), o in zip(members, outs):
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
            body["seed"] = seed + len(texts)
        return texts[:n]

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0,
                 max_new_tokens: int | None = None, seed: int = 0) -> Iterator[Batch]:
        with ThreadPoolExecutor(self.workers) as ex:
            futs = [ex.submit(self._one, p, n, temperature, max_new_tokens or p.max_new_tokens, seed + i)
                    for i, p in enumerate(prompts)]
            for i, f in enumerate(futs):
                yield [(i, f.result())]
