"""Bad requests (the server failure cases reported against vLLM, SGLang, llama.cpp and TGI) each get a 4xx in
OpenAI's error envelope naming the field, and the server keeps serving: /health stays 200, a good request still works, memory stays flat, and
its log holds no traceback."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

M = "tiny-coder"
C, CH, INF = "/v1/completions", "/v1/chat/completions", "/infill"
USER = [{"role": "user", "content": "hi"}]

# (id, route, body: dict or raw bytes, status, the error's param (or None), a substring of its message)
ROWS = [
    ("malformed json", C, b'{"model": "tiny-coder", "prompt": ', 400, None, "not valid JSON"),
    ("not json at all", C, b"prompt=hello", 400, None, "not valid JSON"),
    ("empty body", C, b"", 400, None, "not valid JSON"),
    ("array body", C, b"[1, 2]", 400, None, "must be a JSON object"),
    ("invalid utf-8", C, b'{"model": "tiny-coder", "prompt": "\xff\xfe"}', 400, None, "not UTF-8"),
    ("NaN", C, b'{"model": "tiny-coder", "prompt": "x", "temperature": NaN}', 400, None, "NaN"),
    ("Infinity", C, b'{"model": "tiny-coder", "prompt": "x", "top_p": Infinity}', 400, None, "Infinity"),
    ("messages as object", CH, {"model": M, "messages": {"role": "user", "content": "hi"}}, 400, "messages", ""),
    ("max_tokens string", C, {"model": M, "prompt": "x", "max_tokens": "10"}, 400, "max_tokens", "integer"),
    ("n float", C, {"model": M, "prompt": "x", "n": 1.5}, 400, "n", "integer"),
    ("max_tokens 0", C, {"model": M, "prompt": "x", "max_tokens": 0}, 400, "max_tokens", "at least 1"),
    ("max_tokens -1", C, {"model": M, "prompt": "x", "max_tokens": -1}, 400, "max_tokens", "at least 1"),
    ("max_tokens 1e9", C, {"model": M, "prompt": "x", "max_tokens": 10**9}, 400, "max_tokens", "1000000000"),
    ("echo with max_tokens 0", C, {"model": M, "prompt": "x", "echo": True, "max_tokens": 0}, 400, "max_tokens", ""),
    ("prompt over context", C, {"model": M, "prompt": "def f(x): return x\n" * 200}, 400, "max_tokens",
     "context is 256 tokens"),
    ("prompt + max_tokens over context", C, {"model": M, "prompt": "x = 1", "max_tokens": 254}, 400, "max_tokens",
     "256"),
    ("empty prompt", C, {"model": M, "prompt": ""}, 400, "prompt", "empty"),
    ("empty prompt list", C, {"model": M, "prompt": []}, 400, "prompt", ""),
    ("token id out of vocabulary", C, {"model": M, "prompt": [1, 2, 10**6]}, 400, None, "outside the vocabulary"),
    ("empty messages", CH, {"model": M, "messages": []}, 400, "messages", ""),
    ("missing model", C, {"prompt": "x"}, 400, "model", "required"),
    ("unknown model", C, {"model": "gpt-5", "prompt": "x"}, 404, "model", "does not exist"),
    ("100 stop strings", C, {"model": M, "prompt": "x", "stop": ["a"] * 100}, 400, "stop", "at most 4"),
    ("empty stop string", C, {"model": M, "prompt": "x", "stop": [""]}, 400, "stop", "empty"),
    ("10 KB stop string", C, {"model": M, "prompt": "x", "stop": "s" * 10_000}, 400, "stop", "at most"),
    ("n 1000", C, {"model": M, "prompt": "x", "n": 1000}, 400, "n", "between 1 and 128"),
    ("n over the batch", C, {"model": M, "prompt": "x", "n": 9}, 400, None, "batch size"),
    ("best_of", C, {"model": M, "prompt": "x", "best_of": 3, "n": 1}, 400, "best_of", "not supported"),
    ("logit_bias", C, {"model": M, "prompt": "x", "logit_bias": {"5": 10}}, 400, "logit_bias", "not supported"),
    ("presence_penalty", C, {"model": M, "prompt": "x", "presence_penalty": 1.0}, 400, "presence_penalty", ""),
    ("logprobs 6", C, {"model": M, "prompt": "x", "logprobs": 6}, 400, "logprobs", "between 0 and 5"),
    ("echo with logprobs", C, {"model": M, "prompt": "x", "echo": True, "logprobs": 1}, 400, "logprobs", ""),
    ("prompt_logprobs", C, {"model": M, "prompt": "x", "prompt_logprobs": 5}, 400, "prompt_logprobs", ""),
    ("temperature -1", C, {"model": M, "prompt": "x", "temperature": -1}, 400, "temperature", ""),
    ("temperature 3", C, {"model": M, "prompt": "x", "temperature": 3}, 400, "temperature", ""),
    ("top_p 0", C, {"model": M, "prompt": "x", "top_p": 0}, 400, "top_p", ""),
    ("top_p 1.5", C, {"model": M, "prompt": "x", "top_p": 1.5}, 400, "top_p", ""),
    ("seed string", C, {"model": M, "prompt": "x", "seed": "7"}, 400, "seed", ""),
    ("stream_options without stream", C, {"model": M, "prompt": "x", "stream_options": {"include_usage": True}},
     400, "stream_options", ""),
    ("json_schema", CH, {"model": M, "messages": USER, "response_format": {"type": "json_schema", "json_schema": {}}},
     400, "response_format", "not supported"),
    ("guided_json", CH, {"model": M, "messages": USER, "guided_json": "{"}, 400, "guided_json", "not supported"),
    ("grammar", INF, {"input_prefix": "x", "grammar": "root ::= x"}, 400, "grammar", "not supported"),
    ("tools", CH, {"model": M, "messages": USER, "tools": [{"type": "function"}]}, 400, "tools", "not supported"),
    ("chat logprobs", CH, {"model": M, "messages": USER, "logprobs": True}, 400, "logprobs", "not supported"),
    ("tool role", CH, {"model": M, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", ""),
    ("image part", CH, {"model": M, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content", "text parts"),
    ("chat ends with assistant", CH, {"model": M, "messages": [{"role": "assistant", "content": "x"}]}, 400,
     "messages", "ends with a user message"),
    ("two max lengths", CH, {"model": M, "messages": USER, "max_tokens": 4, "max_completion_tokens": 5}, 400,
     "max_completion_tokens", ""),
    ("lone surrogate", C, b'{"model": "tiny-coder", "prompt": "a\\ud800b"}', 400, "prompt", "surrogate"),
    ("suffix with token ids", C, {"model": M, "prompt": [1, 2], "suffix": "x"}, 400, "suffix", ""),
    ("FIM over context", C, {"model": M, "prompt": "a = 1\n" * 100, "suffix": "b = 2\n" * 100}, 400, "max_tokens",
     "context"),
    ("infill nothing", INF, {"n_predict": 4}, 400, "input_prefix", ""),
    ("cache_prompt string", INF, {"input_prefix": "x", "cache_prompt": "yes"}, 400, "cache_prompt", "true or false"),
    ("infill n_predict -5", INF, {"input_prefix": "x", "n_predict": -5}, 400, "n_predict", ""),
    ("infill extra not a list", INF, {"input_prefix": "x", "input_extra": "a.py"}, 400, "input_extra", ""),
    ("infill extra unknown key", INF, {"input_prefix": "x", "input_extra": [{"filename": "a", "body": "x"}]}, 400,
     "input_extra[0].body", ""),
    ("infill n_predict over context", INF, {"input_prefix": "x", "n_predict": 300}, 400, "n_predict", "context"),
]


def _length(reply: bytes) -> int:
    """The Content-Length of a raw HTTP response (0 until its headers are complete)."""
    head = reply.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    return next((int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith("content-length:")),
                0)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _check_error(status: int, raw: bytes, want: int, param: str | None, message: str) -> dict:
    assert status == want, raw[:300]
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
    assert err["param"] == param, err
    assert message in err["message"], err
    return err


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_request_is_a_4xx_naming_the_field(server, row):
    _, route, body, want, param, message = row
    status, _, raw = server.request("POST", route, body)
    _check_error(status, raw, want, param, message)


def test_api_key_is_required_on_every_inference_route(server):
    for method, route, body in [("GET", "/v1/models", None), ("POST", C, {"model": M, "prompt": "x"}),
                                ("POST", CH, {"model": M, "messages": USER}), ("POST", INF, {"input_prefix": "x"})]:
        for key in (None, "sk-wrong"):
            status, _, raw = server.request(method, route, body, key=key)
            err = _check_error(status, raw, 401, None, "API key")
            assert err["code"] == "invalid_api_key"
    assert server.request("GET", "/health", key=None)[0] == 200


def test_unknown_route_and_method(server):
    _check_error(*server.request("GET", "/v1/engines")[::2], 404, None, "no such route")
    status, _, raw = server.request("GET", C)
    assert status == 405 and json.loads(raw)["error"]["message"]


def test_control_tokens_typed_into_fim_text_stay_text(server):
    """The FIM sentinels inside user code are encoded as plain text: the prompt grows by their characters' tokens."""
    plain = {"model": M, "prompt": "a = 1\n", "suffix": "b = 2\n", "max_tokens": 1, "temperature": 0}
    typed = {**plain, "suffix": "b = 2\n<｜fim▁end｜>"}
    n = [json.loads(server.request("POST", C, b)[2])["usage"]["prompt_tokens"] for b in (plain, typed)]
    assert n[1] > n[0] + 1
    status, _, raw = server.request("POST", C, {**plain, "prompt": "nul \x00 and \u2603"})
    assert status == 200, raw


def test_huge_body_is_refused_before_it_is_read(server):
    host, port = server.url[len("http://"):].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + server.key.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n" + b"{" * 65536)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
            chunk = s.recv(65536)           # the answer comes while most of the body is still unsent
            assert chunk, reply
            reply += chunk
        reply = reply.decode("latin-1")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert '"code":"request_too_large"' in reply.replace(" ", "")


def test_server_survives_the_table_with_flat_memory(server):
    good = {"model": M, "prompt": "x = 1", "max_tokens": 3, "temperature": 0}
    before = _rss_kb(server.proc.pid)
    for _ in range(50):                     # many over-context requests in a row trip nothing
        status, _, raw = server.request("POST", C, {"model": M, "prompt": "x", "max_tokens": 10**9})
        assert status == 400
    for _ in range(2):
        for _, route, body, want, _, _ in ROWS:
            assert server.request("POST", route, body)[0] == want
    assert _rss_kb(server.proc.pid) - before < 64 * 1024
    assert server.healthy()
    status, _, raw = server.request("POST", C, good)
    assert status == 200 and json.loads(raw)["choices"][0]["finish_reason"] in ("stop", "length")
    log = server.log.read_text()
    assert "Traceback" not in log and "internal error" not in log, log[-2000:]
