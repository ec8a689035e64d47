"""`dscoder serve`: a checkpoint behind the OpenAI API (completions with DeepSeek FIM, chat) and llama.cpp's /infill.

A Starlette app run by uvicorn. The model loads in the background (GET /health answers 503 until it is ready);
one `infer.scheduler.Scheduler` thread owns it and batches every request continuously: waiting prompts are prefilled
together (--max-prefill-tokens per forward, a longer prompt in chunks between decode steps), and the cache of
finished requests is kept (--prompt-cache-tokens) so that a prompt sharing a token prefix with one of them prefills
only the rest (`cache_prompt: false` on any route opts out; the reuse is reported as OpenAI's
`usage.prompt_tokens_details.cached_tokens` and llama.cpp's `tokens_cached` / `timings.cache_n`). `--quantize int8`
serves int8 Linear weights (`models.quant`). Prompts are built by the
one prompt builder, `infer.text` (`completion_ids`, `infill_ids`, `chat_ids`, `stop_ids`):
* POST /v1/completions: `prompt` is BOS + code; with `suffix` it is DeepSeek's PSM fill-in-the-middle prompt
  (v1 paper §3.1) and the text returned is only the middle. `extra_files` ([{filename, text}]) put repository
  context ahead of the prefix, as /infill's input_extra.
* POST /v1/chat/completions: `messages` rendered by the chat template saved with the tokenizer.
* POST /infill: llama.cpp's request and response (llama.vim, llama.vscode); each `input_extra` chunk becomes
  `# {filename}` + its text ahead of the current file inside the FIM prefix, the layout of DeepSeek-Coder's
  repository-level training samples, fitted to the context by `infer.repo_context.fit_context` (the rule
  `dscoder complete` uses): half the budget is kept for the current file at the cursor; chunks fill the rest,
  first-listed cut or dropped first (a Python chunk is first cut to its outline, then to the definitions the file
  uses); only then does the prefix lose its top lines and the suffix its bottom lines.
GET / is a playground page (chat and fill-in-the-middle tabs, both streaming). Bad input is a 4xx in OpenAI's error
envelope naming the field (`serve.schema`); a full queue is 429 with Retry-After; SIGTERM stops accepting
connections, finishes the requests in flight, then exits 0.

Run it:
    dscoder serve --model ckpt --port 8000 [--api-key KEY | DSCODER_API_KEY=KEY] [--quantize int8]
    curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"model": "ckpt", "prompt": "def fib(n):", "suffix": "\\n    return a", "max_tokens": 32}'
"""
from __future__ import annotations

import asyncio
import hmac
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator, Callable

from ..args import Parser, add_device_args, int_range, positive_float, positive_int, resolve_device_dtype
from ..errors import UserError
from . import schema
from .metrics import Metrics
from .runs import ClientGone, Detok, Run, logprobs_object, sse
from .schema import ApiError, bad

MAX_BODY = 16 * 2**20                 # bytes; larger bodies are refused with 413 before they are read
PLAYGROUND = Path(__file__).with_name("playground.html")   # GET /: chat and FIM tabs, no network resources
INFILL_RESERVE = 128                  # /infill with n_predict -1: context tokens kept free for the completion


class Served:
    """The loaded model, its tokenizer and scheduler; filled in by a background thread (`load`)."""

    def __init__(self, model_dir: str, name: str, device: str = "auto", dtype: str = "auto", max_batch: int = 8,
                 max_queue: int = 64, max_model_len: int | None = None, timeout: float | None = 600.0,
                 quantize: str = "none", max_prefill_tokens: int | None = None,
                 prompt_cache_tokens: int | None = None):
        self.model_dir, self.name, self.device, self.dtype = model_dir, name, device, dtype
        self.max_batch, self.max_queue, self.max_model_len, self.timeout = max_batch, max_queue, max_model_len, \
            timeout
        self.quantize, self.max_prefill_tokens, self.prompt_cache_tokens = quantize, max_prefill_tokens, \
            prompt_cache_tokens
        self.ready = threading.Event()
        self.tokenize_lock = threading.Lock()   # a fast tokenizer's encode may reset its padding state: one at a time
        self.error: str | None = None
        self.scheduler = self.tokenizer = None
        self.mailbox = None                     # runs.Mailbox: the scheduler's events onto the event loop
        self.created = int(time.time())
        self.metrics = Metrics()

    def load(self, on_fail: Callable[[], None] = lambda: None) -> None:
        from ..infer.engine import Engine
        from ..infer.scheduler import Scheduler
        from ..infer.text import decoder, load
        try:
            device, dtype = resolve_device_dtype(SimpleNamespace(device=self.device, dtype=self.dtype))
            engine, self.tokenizer = load(self.model_dir, device, dtype, quantize=self.quantize)
            if self.max_model_len:
                engine = Engine(engine.model, max_len=self.max_model_len)
            self.decode = decoder(self.tokenizer)
            self.scheduler = Scheduler(engine, self.max_batch, self.max_queue, self.timeout,
                                       self.max_prefill_tokens, self.prompt_cache_tokens).start()
            cache = self.scheduler.cache
            size = sum(getattr(cache, f).numel() * getattr(cache, f).element_size() for f in self.scheduler.fields)
            kept = self.scheduler.prefixes.capacity if self.scheduler.prefixes is not None else 0
            print(f"dscoder serve: model loaded{' (int8 weights)' if self.quantize == 'int8' else ''}; batch cache "
                  f"{size / 2**30:.2f} GiB for {self.max_batch} rows x {engine.max_len} tokens (--max-batch, "
                  f"--max-model-len); prompt cache up to {kept} tokens (--prompt-cache-tokens)", file=sys.stderr,
                  flush=True)
        except Exception as e:  # noqa: BLE001 -- reported as the verb's one error line
            self.error = str(e) if isinstance(e, UserError) else f"cannot load {self.model_dir}: {e}"
            on_fail()
            return
        self.ready.set()

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown()

    async def tokenize(self, fn: Callable, *args):
        """fn(*args) on a worker thread (long prompts must not block the event loop), one call at a time."""
        def locked():
            with self.tokenize_lock:
                return fn(*args)
        return await asyncio.to_thread(locked)


def _usage(prompt_tokens: int, completion_tokens: int, run: Run) -> dict:
    """OpenAI's usage object; `prompt_tokens_details.cached_tokens` counts the prompt tokens whose cache slots
    were reused from an earlier request instead of prefilled."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": sum(job.cached_tokens for job in run.jobs)}}


def _params(s: schema.Sampling, max_tokens: int, stop_ids: list[int], logprobs: int | None = None,
            timeout: float | None = None):
    from ..infer.scheduler import Params
    return Params(max_tokens=max_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, seed=s.seed,
                  stop_ids=frozenset(stop_ids), stop_strings=s.stop, logprobs=logprobs, timeout=timeout,
                  cache_prompt=s.cache_prompt)


def _check_model(served: Served, name: str) -> None:
    if name != served.name:
        raise ApiError(404, f"the model {name!r} does not exist; this server serves {served.name!r}", "model",
                       "invalid_request_error", "model_not_found")


# --- the routes' work ------------------------------------------------------------------------------------------


def fim_ids(served: Served, extra: list[tuple[str, str]], prefix: str, suffix: str, budget: int) -> list[int]:
    """The PSM prompt with repository context: each extra file as `# {path}` + its text ahead of the prefix, fitted
    to `budget` tokens by `infer.repo_context.fit_context` (files listed first count as the farthest: cut to an
    outline, then to what the file uses, then dropped, before the cursor's window, which keeps half the budget,
    loses the prefix's top lines and the suffix's bottom lines)."""
    from ..infer.repo_context import ContextFile, fit_context
    from ..infer.text import encode, infill_ids
    tok = served.tokenizer
    files = [ContextFile(path, body, distance=len(extra) - i) for i, (path, body) in enumerate(extra)]
    prefix, suffix = fit_context(files, prefix, suffix, lambda s: len(encode(tok, s)), budget)
    return infill_ids(tok, prefix, suffix)


async def completions(served: Served, body: dict, request) -> Any:
    from ..infer.text import completion_ids, infill_ids, stop_ids
    req = schema.completion_request(body)
    _check_model(served, req.model)
    tok = served.tokenizer

    def build() -> list[list[int]]:
        if req.suffix is not None and (req.extra_files or req.max_context_tokens):
            budget = min(req.max_context_tokens or served.scheduler.max_len,
                         served.scheduler.max_len - req.sampling.max_tokens)
            return [fim_ids(served, req.extra_files, p, req.suffix, budget) for p in req.prompts]
        if req.suffix is not None:
            return [infill_ids(tok, p, req.suffix) for p in req.prompts]
        return [p if isinstance(p, list) else completion_ids(tok, p) for p in req.prompts]
    prompts = await served.tokenize(build)
    params = _params(req.sampling, req.sampling.max_tokens, stop_ids(tok, "completion"), req.logprobs)
    run = Run(served, prompts, params, req.n)
    echo = [(served.decode(p) if isinstance(p, list) else p) if req.echo else "" for p in req.prompts]
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": served.name}
    n_prompt = sum(map(len, prompts))
    if req.sampling.stream:
        return _stream_completions(served, run, head, echo, n_prompt, req.sampling.include_usage)
    done = {c: ev async for c, ev in run.events(request) if not hasattr(ev, "ids")}
    choices = [{"text": echo[c // req.n] + ev.output.text, "index": c, "finish_reason": ev.output.finish_reason,
                "logprobs": logprobs_object(served, ev.logprobs, ev.output.tokens, len(echo[c // req.n]))}
               for c, ev in sorted(done.items())]
    return {**head, "choices": choices,
            "usage": _usage(n_prompt, sum(len(ev.output.tokens) for ev in done.values()), run)}


async def _stream_completions(served: Served, run: Run, head: dict, echo: list[str], n_prompt: int,
                              include_usage: bool) -> AsyncIterator[str]:
    n = run.n
    dets = {}
    used = 0
    extra = {"usage": None} if include_usage else {}
    try:
        async for c, ev in run.events():
            det = dets.get(c)
            if det is None:
                det = dets[c] = Detok(served.decode)
                if echo[c // n]:
                    yield sse({**head, "choices": [{"text": echo[c // n], "index": c, "logprobs": None,
                                                    "finish_reason": None}], **extra})
            if hasattr(ev, "ids"):
                text, lp, reason = det.add(ev.ids), logprobs_object(served, ev.logprobs, ev.ids), None
                if not text and lp is None:
                    continue
            else:
                text, reason = det.finish(ev.output.text), ev.output.finish_reason
                rest = ev.output.tokens[len(det.ids):]
                lp = logprobs_object(served, ev.logprobs[len(det.ids):], rest) if ev.logprobs is not None else None
                used += len(ev.output.tokens)
            yield sse({**head, "choices": [{"text": text, "index": c, "logprobs": lp, "finish_reason": reason}],
                       **extra})
        if include_usage:
            yield sse({**head, "choices": [], "usage": _usage(n_prompt, used, run)})
        yield "data: [DONE]\n\n"
    except ApiError as e:
        yield sse(e.body())
    finally:
        run.cancel()


async def chat_completions(served: Served, body: dict, request) -> Any:
    from ..infer.text import chat_ids, stop_ids
    req = schema.chat_request(body)
    _check_model(served, req.model)
    try:
        ids = await served.tokenize(chat_ids, served.tokenizer, req.messages)
    except UserError as e:
        raise bad("messages", str(e)) from None
    room = served.scheduler.max_len - len(ids)
    max_tokens = req.sampling.max_tokens if req.sampling.max_tokens is not None else max(room, 1)
    params = _params(req.sampling, max_tokens, stop_ids(served.tokenizer, "chat"))
    run = Run(served, [ids], params, req.n)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.name}
    if req.sampling.stream:
        return _stream_chat(served, run, head, len(ids), req.sampling.include_usage)
    done = {c: ev async for c, ev in run.events(request) if not hasattr(ev, "ids")}
    choices = [{"index": c, "message": {"role": "assistant", "content": ev.output.text},
                "logprobs": None, "finish_reason": ev.output.finish_reason} for c, ev in sorted(done.items())]
    return {**head, "object": "chat.completion", "choices": choices,
            "usage": _usage(len(ids), sum(len(ev.output.tokens) for ev in done.values()), run)}


async def _stream_chat(served: Served, run: Run, head: dict, n_prompt: int, include_usage: bool):
    head = {**head, "object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}

    def chunk(c: int, delta: dict, reason: str | None = None) -> str:
        return sse({**head, "choices": [{"index": c, "delta": delta, "logprobs": None, "finish_reason": reason}],
                    **extra})
    dets, used = {}, 0
    try:
        for c in range(run.n):
            dets[c] = Detok(served.decode)
            yield chunk(c, {"role": "assistant", "content": ""})
        async for c, ev in run.events():
            if hasattr(ev, "ids"):
                text = dets[c].add(ev.ids)
                if text:
                    yield chunk(c, {"content": text})
                continue
            text = dets[c].finish(ev.output.text)
            if text:
                yield chunk(c, {"content": text})
            used += len(ev.output.tokens)
            yield chunk(c, {}, ev.output.finish_reason)
        if include_usage:
            yield sse({**head, "choices": [], "usage": _usage(n_prompt, used, run)})
        yield "data: [DONE]\n\n"
    except ApiError as e:
        yield sse(e.body())
    finally:
        run.cancel()


async def infill(served: Served, body: dict, request) -> Any:
    """llama.cpp's /infill: {content, stop, tokens_predicted, tokens_evaluated, stop_type, timings}."""
    from ..infer.text import stop_ids
    req = schema.infill_request(body)
    t0 = time.monotonic()
    context = served.scheduler.max_len
    if req.n_predict >= context:
        raise bad("n_predict", f"n_predict {req.n_predict} leaves no room for a prompt in this model's context of "
                               f"{context} tokens")
    reserve = req.n_predict if req.n_predict > 0 else min(INFILL_RESERVE, context // 4)
    ids = await served.tokenize(fim_ids, served, req.extra, req.prefix + req.prompt, req.suffix,
                                  context - reserve)
    head = {"model": served.name, "tokens_evaluated": len(ids)}
    if req.n_predict == 0:                       # llama.vim warms llama.cpp's prompt cache this way
        return {**head, "content": "", "stop": True, "tokens_predicted": 0, "tokens_cached": 0, "stop_type": "limit",
                "timings": _timings(len(ids), 0, 0, t0, t0)}
    max_tokens = req.n_predict if req.n_predict > 0 else max(served.scheduler.max_len - len(ids), 1)
    params = _params(req.sampling, max_tokens, stop_ids(served.tokenizer, "fim"), timeout=req.time_limit)
    run = Run(served, [ids], params, 1, "n_predict")
    if req.sampling.stream:
        return _stream_infill(served, run, head, len(ids), t0)
    [(_, ev)] = [(c, ev) async for c, ev in run.events(request) if not hasattr(ev, "ids")]
    job = run.jobs[0]
    return {**head, "content": ev.output.text, "stop": True, "tokens_predicted": len(ev.output.tokens),
            "tokens_cached": job.cached_tokens, "stop_type": _stop_type(ev.output.finish_reason, params),
            "timings": _timings(len(ids), job.cached_tokens, len(ev.output.tokens), t0, job.first_token_at)}


def _stop_type(reason: str, params) -> str:
    return "limit" if reason == "length" else "word" if params.stop_strings else "eos"


def _timings(n_prompt: int, n_cached: int, n_new: int, t0: float, t_first: float | None) -> dict:
    """llama.cpp's timings: `cache_n` prompt tokens reused from an earlier request, `prompt_n` the rest."""
    t1, t_first = time.monotonic(), t_first or t0
    prompt_ms, predicted_ms = (t_first - t0) * 1000, (t1 - t_first) * 1000
    return {"cache_n": n_cached, "prompt_n": n_prompt - n_cached, "prompt_ms": prompt_ms, "predicted_n": n_new,
            "predicted_ms": predicted_ms,
            "predicted_per_second": n_new / (predicted_ms / 1000) if predicted_ms > 0 else 0.0}


async def _stream_infill(served: Served, run: Run, head: dict, n_prompt: int, t0: float):
    det = Detok(served.decode)
    try:
        async for _, ev in run.events():
            if hasattr(ev, "ids"):
                text = det.add(ev.ids)
                if text:
                    yield sse({"content": text, "stop": False})
                continue
            out, job = ev.output, run.jobs[0]
            yield sse({**head, "content": det.finish(out.text), "stop": True, "tokens_predicted": len(out.tokens),
                       "tokens_cached": job.cached_tokens, "stop_type": _stop_type(out.finish_reason, job.params),
                       "timings": _timings(n_prompt, job.cached_tokens, len(out.tokens), t0, job.first_token_at)})
    except ApiError as e:
        yield sse(e.body())
    finally:
        run.cancel()


# --- the app -----------------------------------------------------------------------------------------------------


def _error_response(e: ApiError):
    from starlette.responses import JSONResponse
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _read_body(request) -> bytes:
    """The body, at most MAX_BODY bytes: 413 from Content-Length alone, or as soon as the stream passes it."""
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
        raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes", None, code="request_too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_BODY:
            raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes", None, code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _authorize(request, api_key: str | None) -> None:
    if not api_key:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(token.encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'", None,
                       "authentication_error", "invalid_api_key")


def _check_ready(served: Served) -> None:
    if not served.ready.is_set():
        raise ApiError(503, "the model is still loading; retry shortly", None, "service_unavailable",
                       "model_loading", {"Retry-After": "5"})


def endpoint(served: Served, api_key: str | None, work: Callable | None = None, get: Callable | None = None):
    """A route: API key, readiness, body limit and JSON checks, then `work(served, body, request)`; every failure
    becomes an OpenAI error envelope, and an exception we did not foresee a 500 that names it (never a crash)."""
    from starlette.responses import JSONResponse, Response, StreamingResponse

    from ..infer.scheduler import QueueFull

    async def route(request):
        response = await answer(request)
        served.metrics.request(request.url.path, response.status_code)
        return response

    async def answer(request):
        try:
            _authorize(request, api_key)
            _check_ready(served)
            if get is not None:
                return JSONResponse(get(served))
            body = schema.parse_body(await _read_body(request))
            result = await work(served, body, request)
            if isinstance(result, dict):
                return JSONResponse(result)
            return StreamingResponse(result, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        except ApiError as e:
            return _error_response(e)
        except UserError as e:
            return _error_response(bad(None, str(e)))
        except QueueFull as e:
            return _error_response(ApiError(429, str(e), None, "rate_limit_error", "queue_full",
                                            {"Retry-After": str(e.retry_after)}))
        except ClientGone:
            return Response(status_code=499)
        except Exception as e:  # noqa: BLE001 -- a bug must not take the server down
            print(f"dscoder serve: internal error on {request.url.path}: {type(e).__name__}: {e}", file=sys.stderr)
            return _error_response(ApiError(500, f"internal error: {type(e).__name__}", None, "server_error"))
    return route


def _models(served: Served) -> dict:
    return {"object": "list", "data": [{"id": served.name, "object": "model", "created": served.created,
                                        "owned_by": "dscoder", "max_model_len": served.scheduler.max_len}]}


def create_app(served: Served, api_key: str | None = None, on_fail: Callable[[], None] = lambda: None):
    """The Starlette app over `served`; its lifespan starts the loader thread and stops the scheduler."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def health(request):
        if served.ready.is_set():
            return JSONResponse({"status": "ok"})
        return _error_response(ApiError(503, "the model is still loading", None, "service_unavailable",
                                        "model_loading", {"Retry-After": "5"}))

    async def http_error(request, exc: HTTPException):
        what = "no such route" if exc.status_code == 404 else exc.detail
        return _error_response(ApiError(exc.status_code, f"{what}: {request.method} {request.url.path}", None,
                                        "invalid_request_error", "not_found" if exc.status_code == 404 else None))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=served.load, args=(on_fail,), name="dscoder-load", daemon=True).start()
        yield
        await asyncio.to_thread(served.close)

    async def metrics(request):
        text = served.metrics.render(served.scheduler.stats() if served.ready.is_set() else None)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def playground(request):
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    routes = [Route("/", playground), Route("/health", health), Route("/metrics", metrics),
              Route("/v1/models", endpoint(served, api_key, get=_models)),
              Route("/v1/completions", endpoint(served, api_key, completions), methods=["POST"]),
              Route("/v1/chat/completions", endpoint(served, api_key, chat_completions), methods=["POST"]),
              Route("/infill", endpoint(served, api_key, infill), methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})


def main(argv: list[str]) -> int:
    """Serve a checkpoint over HTTP: the OpenAI API (/v1/completions with FIM `suffix`, /v1/chat/completions,
    /v1/models), llama.cpp's /infill for editor plugins, /health and /metrics (Prometheus). SIGTERM finishes the
    requests in flight, then exits.

    dscoder serve --model DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--served-model-name NAME]
                  [--max-batch N] [--max-queue N] [--max-model-len N] [--timeout S] [--quantize none|int8]
                  [--max-prefill-tokens N] [--prompt-cache-tokens N] [--device D] [--dtype T]
    (the API key can also come from DSCODER_API_KEY)"""
    p = Parser("dscoder serve", main.__doc__)
    p.add_argument("--model", required=True, metavar="DIR",
                   help="Hugging Face model folder (config.json, weights, tokenizer)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int_range(0, 65535), default=8000, help="TCP port")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1 and /infill (or set DSCODER_API_KEY)")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model name clients send (default: the model folder's name)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="sequences decoded together at most")
    p.add_argument("--max-queue", type=int_range(0), default=64,
                   help="requests waiting at most; more are refused with 429")
    p.add_argument("--max-model-len", type=positive_int, default=None, metavar="N",
                   help="context length (prompt + new tokens) at most; default: the model's")
    p.add_argument("--timeout", type=positive_float, default=600.0, metavar="S",
                   help="seconds a request may take from arrival; then it ends as if at max_tokens")
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: Linear weights as int8 with per-channel scales (a quarter of fp32's bytes per token)")
    p.add_argument("--max-prefill-tokens", type=positive_int, default=None, metavar="N",
                   help="prompt tokens (rows x padded length) read in one forward at most; waiting prompts are "
                        "read together up to it, a longer one in chunks between decode steps (default: 1024 on "
                        "CPU, where only prompts of at most 512 tokens in all are read together, since a padded "
                        "forward is slower there than one per prompt; 8192 on an accelerator)")
    p.add_argument("--prompt-cache-tokens", type=int_range(0), default=None, metavar="N",
                   help="keep the cache slots of finished requests, up to N tokens, and reuse the longest shared "
                        "prompt prefix (0: off; default twice the context)")
    add_device_args(p)
    args = p.parse_args(argv)
    from ..infer.text import _model_folder
    folder = _model_folder(args.model)
    api_key = args.api_key or os.environ.get("DSCODER_API_KEY") or None
    name = args.served_model_name or folder.resolve().name
    served = Served(args.model, name, args.device, args.dtype, args.max_batch, args.max_queue, args.max_model_len,
                    args.timeout, args.quantize, args.max_prefill_tokens, args.prompt_cache_tokens)
    return _run(served, api_key, args.host, args.port)


def _run(served: Served, api_key: str | None, host: str, port: int) -> int:
    import uvicorn
    server: uvicorn.Server | None = None

    def on_fail() -> None:
        if server is not None:
            server.should_exit = True
    config = uvicorn.Config(create_app(served, api_key, on_fail), host=host, port=port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)
    sock = _listen(host, port)
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; a no-op SIGTERM handler
    # makes that a normal exit (status 0) after the requests in flight have finished
    signal.signal(signal.SIGTERM, lambda *_: None)
    print(f"dscoder serve: loading {served.model_dir}; listening on http://{host}:{sock.getsockname()[1]} "
          f"(GET /health is 200 once the model is loaded)", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    if served.error:
        raise UserError(served.error)
    return 0


def _listen(host: str, port: int):
    """The listening socket, bound here so that a taken port or a bad host is one error line."""
    import socket
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock
