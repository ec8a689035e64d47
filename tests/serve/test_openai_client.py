"""The official `openai` client against a real `dscoder serve` on loopback: completions with and without `suffix`,
chat, streaming and not, n > 1, stop strings, logprobs, echo; llama.cpp's /infill with repository context; a
resent prompt reusing its kept prefix; a server with int8 weights. Greedy answers must equal what the in-process
prompt builder + Engine produce for the same checkpoint."""
from __future__ import annotations

import json
import time

import openai
import pytest

from dscoder.infer.text import chat, complete, encode, infill, load

MODEL = "tiny-coder"
PREFIX, SUFFIX = "def area(r):\n    ", "\n    return a\n"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(serve_ckpt):
    return load(str(serve_ckpt))


def test_models_lists_the_served_name(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completion_equals_the_engine_and_streams_the_same_text(client, local):
    engine, tok = local
    want = complete(engine, tok, "import os\n\ndef", max_new_tokens=12)
    r = client.completions.create(model=MODEL, prompt="import os\n\ndef", max_tokens=12, temperature=0)
    assert r.choices[0].text == want and r.object == "text_completion"
    assert r.usage.completion_tokens <= 12 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(client.completions.create(model=MODEL, prompt="import os\n\ndef", max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_suffix_is_deepseek_fim_and_returns_only_the_middle(client, local):
    engine, tok = local
    want = infill(engine, tok, PREFIX, SUFFIX, max_new_tokens=10)
    r = client.completions.create(model=MODEL, prompt=PREFIX, suffix=SUFFIX, max_tokens=10, temperature=0)
    assert r.choices[0].text == want and not r.choices[0].text.startswith(PREFIX)
    streamed = client.completions.create(model=MODEL, prompt=PREFIX, suffix=SUFFIX, max_tokens=10, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == want


def test_chat_uses_the_saved_template_and_streams_role_first(client, local):
    engine, tok = local
    msgs = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "sort a list"}]
    want = chat(engine, tok, msgs, max_new_tokens=10)
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_completion_tokens=10, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + [r.choices[0].finish_reason]


def test_n_choices_seeded_sampling_and_prompt_lists(client):
    kw = dict(model=MODEL, prompt="class Cache:", max_tokens=8, temperature=1.0, top_p=0.95, seed=11, n=3)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1
    r = client.completions.create(model=MODEL, prompt=["x = 1", "def g():", [1, 5, 9]], max_tokens=4, temperature=0,
                                  n=2)
    assert [c.index for c in r.choices] == list(range(6))
    assert r.choices[0].text == r.choices[1].text and r.choices[2].text == r.choices[3].text


def test_stop_strings_cut_the_text_streamed_or_not(client):
    base = client.completions.create(model=MODEL, prompt="for i in range(", max_tokens=24, temperature=0)
    text = base.choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    assert stop.strip(), f"the reference text gives no usable stop string: {text!r}"
    r = client.completions.create(model=MODEL, prompt="for i in range(", max_tokens=24, temperature=0,
                                  stop=[stop, "\u2603never"])
    assert r.choices[0].text == text[:text.index(stop)] and r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt="for i in range(", max_tokens=24, temperature=0,
                                         stop=stop, stream=True)
    pieces = [c.choices[0].text for c in streamed]
    assert "".join(pieces) == r.choices[0].text and stop not in "".join(pieces)


def test_logprobs_and_echo(client):
    r = client.completions.create(model=MODEL, prompt="while True:", max_tokens=5, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert all(v <= 0 for v in lp.token_logprobs) and all(1 <= len(t) <= 3 for t in lp.top_logprobs)
    assert abs(max(lp.top_logprobs[0].values()) - lp.token_logprobs[0]) < 1e-5     # greedy picks the top one
    e = client.completions.create(model=MODEL, prompt="while True:", max_tokens=5, temperature=0, echo=True)
    assert e.choices[0].text == "while True:" + r.choices[0].text


def test_infill_route_speaks_llama_cpp_and_adds_repository_context(server, local):
    engine, tok = local
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 8, "temperature": 0, "cache_prompt": True,
            "input_extra": [{"filename": "geometry/pi.py", "text": "PI = 3.14159\n"}]}
    status, _, raw = server.request("POST", "/infill", body)
    out = json.loads(raw)
    assert status == 200, out
    repo_prefix = "# geometry/pi.py\nPI = 3.14159\n" + PREFIX
    assert out["content"] == infill(engine, tok, repo_prefix, SUFFIX, max_new_tokens=8)
    assert out["stop"] is True and out["tokens_predicted"] <= 8 and out["timings"]["predicted_n"] == \
        out["tokens_predicted"]
    status, _, raw = server.request("POST", "/infill", {**body, "stream": True})
    events = [json.loads(line[6:]) for line in raw.decode().split("\n\n") if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == out["content"] and events[-1]["stop"] is True
    status, _, raw = server.request("POST", "/infill", {**body, "n_predict": 0})
    assert status == 200 and json.loads(raw)["content"] == "" and json.loads(raw)["tokens_predicted"] == 0


def test_playground_page_is_self_contained_and_speaks_the_api(server):
    status, headers, raw = server.request("GET", "/", key=None)
    page = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "http://" not in page and "https://" not in page and "<link" not in page and " src=" not in page
    for route in ("/v1/chat/completions", "/v1/completions", "/v1/models", "stream: true", "suffix"):
        assert route in page


def test_a_resent_prompt_reuses_the_kept_prefix_and_answers_the_same(server, client, local):
    """An editor resends its prompt with one more character typed: the kept prefix is reused (llama.cpp's
    tokens_cached and timings.cache_n; OpenAI's usage.prompt_tokens_details.cached_tokens) and the answer equals
    a full prefill's; cache_prompt false reuses nothing."""
    engine, tok = local
    prefix = "".join(f"def helper_{i}(value):\n    return value * {i}\n\n" for i in range(4)) + "def main():\n    "
    body = {"input_suffix": SUFFIX, "n_predict": 8, "temperature": 0}
    answers = []
    for typed, cache in [("", True), ("x", True), ("x", False)]:
        status, _, raw = server.request("POST", "/infill", {**body, "input_prefix": prefix + typed,
                                                            "cache_prompt": cache})
        out = json.loads(raw)
        assert status == 200, out
        assert out["tokens_cached"] == out["timings"]["cache_n"]
        assert out["timings"]["cache_n"] + out["timings"]["prompt_n"] == out["tokens_evaluated"]
        assert (out["tokens_cached"] > 0) == (typed == "x" and cache), out
        assert out["content"] == infill(engine, tok, prefix + typed, SUFFIX, max_new_tokens=8)
        answers.append(out)
    assert answers[1]["tokens_cached"] >= len(encode(tok, prefix)) // 2
    r = [client.completions.create(model=MODEL, prompt=prefix + typed, max_tokens=6, temperature=0)
         for typed in ("", "", "y")]
    assert r[2].usage.prompt_tokens_details.cached_tokens >= r[0].usage.prompt_tokens // 2
    assert [x.choices[0].text for x in r] == [complete(engine, tok, prefix + t, max_new_tokens=6)
                                             for t in ("", "", "y")]


def test_an_int8_server_answers_as_the_int8_engine(serve_ckpt, launch, tmp_path):
    """`dscoder serve --quantize int8` serves int8 Linear weights: its greedy answers equal the in-process int8
    engine's (models/quant.py), with and without FIM."""
    server = launch(serve_ckpt, tmp_path / "server.log", "--quantize", "int8", "--max-batch", "2", wait=False)
    try:
        engine, tok = load(str(serve_ckpt), quantize="int8")          # while the server starts
        end = time.monotonic() + 90
        while not _healthy(server):
            assert server.proc.poll() is None and time.monotonic() < end, server.log.read_text()
            time.sleep(0.05)
        assert "int8 weights" in server.log.read_text()
        c = openai.OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0, timeout=60)
        r = c.completions.create(model=MODEL, prompt="import os\n\ndef", max_tokens=12, temperature=0)
        assert r.choices[0].text == complete(engine, tok, "import os\n\ndef", max_new_tokens=12)
        r = c.completions.create(model=MODEL, prompt=PREFIX, suffix=SUFFIX, max_tokens=10, temperature=0)
        assert r.choices[0].text == infill(engine, tok, PREFIX, SUFFIX, max_new_tokens=10)
    finally:
        assert server.stop() == 0


def _healthy(server) -> bool:
    try:
        return server.healthy()
    except OSError:                 # not listening yet
        return False
