"""A server's life on a small batch (1 row, 1 queue place): 503 while the model loads, 429 with Retry-After when
the queue is full, a request cancelled while still queued never runs, and SIGTERM finishes the stream in flight,
refuses new connections and exits 0. Also: a folder that is not a checkpoint, or a port already taken, is one error
line and exit status 2."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

M = "tiny-coder"


def _metrics(server) -> dict[str, float]:
    raw = server.request("GET", "/metrics", key=None)[2].decode()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in raw.splitlines() if not line.startswith("#"))}


def _wait(cond, what: str, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Stream(threading.Thread):
    """A streaming request read to its end on a raw socket; `first` is set once its first event arrived."""

    def __init__(self, server, body: dict):
        super().__init__(daemon=True)
        self.server, self.body, self.first, self.raw = server, body, threading.Event(), b""

    def run(self) -> None:
        host, port = self.server.url[len("http://"):].split(":")
        payload = json.dumps({**self.body, "stream": True}).encode()
        with socket.create_connection((host, int(port)), timeout=60) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
                      b"application/json\r\nAuthorization: Bearer " + self.server.key.encode() +
                      b"\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            while chunk := s.recv(65536):
                self.raw += chunk
                if b"data: " in self.raw:
                    self.first.set()

    def events(self) -> list[str]:
        return [line[6:] for line in self.raw.decode().split("\r\n\r\n", 1)[1].split("\n")
                if line.startswith("data: ")]


@pytest.fixture(scope="module")
def small(serve_ckpt, tmp_path_factory, launch):
    s = launch(serve_ckpt, tmp_path_factory.mktemp("small") / "server.log", "--max-batch", "1",
                     "--max-queue", "1", wait=False)
    yield s
    s.stop()


def test_503_while_loading_then_200(small):
    seen = []
    end = time.monotonic() + 90
    while time.monotonic() < end:
        try:
            status, headers, raw = small.request("GET", "/health", key=None, timeout=5)
        except OSError:                     # not listening yet
            time.sleep(0.02)
            continue
        seen.append(status)
        if status == 200:
            break
        assert status == 503 and headers.get("retry-after") and json.loads(raw)["error"]["code"] == "model_loading"
        status, _, raw = small.request("POST", "/v1/completions", {"model": M, "prompt": "x"})
        assert status in (503, 200), raw
    assert seen[-1] == 200 and seen[0] == 503, seen


@pytest.fixture(scope="module")
def long(long_prompt) -> dict:
    return {"model": M, "prompt": long_prompt, "max_tokens": 200, "temperature": 0}


def test_full_queue_is_429_and_a_queued_cancel_never_runs(small, long):
    running = Stream(small, long)
    running.start()
    assert running.first.wait(30)
    before = _metrics(small)
    host, port = small.url[len("http://"):].split(":")
    payload = json.dumps({**long, "prompt": "x = 2\n"}).encode()
    queued = socket.create_connection((host, int(port)), timeout=30)      # a non-streaming client that waits
    queued.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Authorization: Bearer " + small.key.encode() + b"\r\nContent-Length: " +
                   str(len(payload)).encode() + b"\r\n\r\n" + payload)
    _wait(lambda: _metrics(small)["dscoder_queue_depth"] == 1, "the second request to queue")
    status, headers, raw = small.request("POST", "/v1/completions", {"model": M, "prompt": "y", "max_tokens": 2})
    assert status == 429 and headers["retry-after"] == "1" and json.loads(raw)["error"]["code"] == "queue_full"
    queued.close()                          # the queued client goes away: it must leave the queue, never run
    _wait(lambda: _metrics(small)["dscoder_queue_depth"] == 0, "the cancelled request to leave the queue")
    assert running.is_alive(), "the running request ended before the cancel could be seen"
    running.join(60)
    assert running.events()[-1] == "[DONE]"
    after = _metrics(small)
    assert after["dscoder_running_sequences"] == 0
    assert after["dscoder_cancelled_total"] == before["dscoder_cancelled_total"] + 1
    assert after["dscoder_prompt_tokens_total"] == before["dscoder_prompt_tokens_total"]   # never prefilled


def test_sigterm_finishes_the_stream_in_flight_then_exits_0(small, long):
    stream = Stream(small, long)
    stream.start()
    assert stream.first.wait(30)
    small.proc.send_signal(signal.SIGTERM)
    stream.join(60)
    events = stream.events()
    assert events[-1] == "[DONE]", (stream.raw[-500:], small.log.read_text()[-2000:])
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length", chunks[-1]
    assert small.proc.wait(30) == 0, small.log.read_text()[-2000:]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(small.url.rsplit(":", 1)[1])), timeout=2).close()


@pytest.mark.parametrize("case", ["not a checkpoint", "port taken"])
def test_cannot_start_is_one_error_line(tmp_path, serve_ckpt, case):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        argv = ["--model", str(tmp_path), "--port", "0"] if case == "not a checkpoint" else \
            ["--model", str(serve_ckpt), "--port", str(taken.getsockname()[1])]
        r = subprocess.run([sys.executable, "-m", "dscoder.cli", "serve", *argv], capture_output=True, timeout=60)
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("dscoder serve: error: "), err
    assert ("config.json" if case == "not a checkpoint" else "cannot listen") in err[0]
