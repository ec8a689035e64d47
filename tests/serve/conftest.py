"""A tiny checkpoint (a BPE tokenizer trained on a fixed synthetic Python corpus + a random Llama) and a real
`dscoder serve` subprocess on a free loopback port, shared by the serving tests; `launch` starts more (SIGTERM,
loading), and `long_prompt` is a prompt whose greedy answer runs to 200 tokens (for cancel and drain tests)."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

KEY = "sk-dscoder-test"
CONTEXT = 256
LONG = 200


@pytest.fixture(scope="session")
def serve_ckpt(tmp_path_factory) -> Path:
    """Tokenizer (vocab 400, DeepSeek's special tokens and v1 chat template) + a tiny random Llama, context 256."""
    import torch

    from dscoder.models.hf import build_model, save_pretrained
    from dscoder.models.presets import get_preset
    from dscoder.tokenizer.bpe import train_tokenizer

    out = tmp_path_factory.mktemp("serve") / "tiny-coder"
    texts = synthetic_python(60)
    tok = train_tokenizer(texts, vocab_size=400, out_dir=out)
    torch.manual_seed(0)
    cfg = get_preset("tiny", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                     initializer_range=0.2)
    save_pretrained(build_model(cfg), out)
    return out


def synthetic_python(n: int, seed: int = 0) -> list[str]:
    """`n` small Python modules, the same on every run (the checkpoint must not change when the package does)."""
    rng = random.Random(seed)
    names = ["alpha", "beta", "total", "count", "items", "value", "index", "result", "node", "path", "text", "size"]
    out = []
    for i in range(n):
        lines = [f'"""Module {i}: helpers for {rng.choice(names)}."""', "import math", "import os", ""]
        for j in range(rng.randint(2, 5)):
            a, b = rng.sample(names, 2)
            lines += [f"def {a}_{b}_{j}({a}, {b}):", f'    """Combine {a} and {b}."""',
                      f"    for _ in range({rng.randint(2, 9)}):",
                      f"        {b} = {b} {rng.choice('+-*%')} {a}", f"    return [{a}, {b}]", "", ""]
        lines += ["class Cache:", "    def __init__(self):", "        self.items = {}", ""]
        out.append("\n".join(lines))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    key: str = KEY

    def request(self, method: str, path: str, body: bytes | dict | None = None, key: str | None = KEY,
                headers: dict | None = None, timeout: float = 60) -> tuple[int, dict, bytes]:
        """(status, headers with lower-case names, body) of one HTTP request; error statuses are returned."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}),
             **(headers or {})}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def healthy(self) -> bool:
        return self.request("GET", "/health", key=None, timeout=5)[0] == 200

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def start_server(ckpt: Path, log: Path, *extra: str, wait: bool = True) -> Server:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", DSCODER_API_KEY=KEY)
    env.pop("DSCODER_DEBUG", None)
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "dscoder.cli", "serve", "--model", str(ckpt), "--port",
                                 str(port), "--device", "cpu", *extra], stdout=f, stderr=subprocess.STDOUT, env=env)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    end = time.monotonic() + 90
    while wait and time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"dscoder serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if server.healthy():
                return server
        except OSError:
            pass
        time.sleep(0.1)
    if wait:
        server.stop()
        raise AssertionError(f"dscoder serve did not become healthy in 90 s:\n{log.read_text()}")
    return server


@pytest.fixture(scope="session")
def launch():
    """`start_server` for tests that need a server of their own."""
    return start_server


@pytest.fixture(scope="session")
def server(serve_ckpt, tmp_path_factory):
    s = start_server(serve_ckpt, tmp_path_factory.mktemp("serve-log") / "server.log", "--max-batch", "8",
                     "--max-queue", "64")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def long_prompt(server) -> str:
    """A prompt whose greedy completion runs to LONG tokens without meeting EOS on this checkpoint."""
    for prompt in ("import sys\n", "def f(", "x = [", "import math\n\n", "class A:\n    ", "for i in range("):
        status, _, raw = server.request("POST", "/v1/completions", {"model": "tiny-coder", "prompt": prompt,
                                                                    "max_tokens": LONG, "temperature": 0})
        assert status == 200, raw
        if json.loads(raw)["choices"][0]["finish_reason"] == "length":
            return prompt
    raise AssertionError(f"no candidate prompt runs to {LONG} tokens on this checkpoint: the cancel and drain tests "
                         "need one; add a candidate")
