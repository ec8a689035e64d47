"""`dscoder complete`: the completion at a cursor with the repository's dependencies as context, run here
(--model) or by a running server (--endpoint, which fits the same context through /v1/completions' extra_files);
both print what the in-process FIM of the same layout gives."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dscoder.infer.text import infill, load

UTIL = "CONST = 41\n\n\ndef helper(x):\n    return x + CONST\n"
APP = "from util import helper\n\n\ndef main():\n    return helper(1)\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "util.py").write_text(UTIL)
    (root / "app.py").write_text(APP)
    (root / "other.py").write_text("print('unrelated')\n")
    return root


def _complete(argv: list[str], key: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("DSCODER_API_KEY", None)
    if key:
        env["DSCODER_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "dscoder.cli", "complete", *argv], capture_output=True, env=env,
                          timeout=120)


def test_local_and_endpoint_give_the_repository_level_fim_completion(repo, serve_ckpt, server):
    engine, tok = load(str(serve_ckpt))
    prefix = f"# util.py\n{UTIL}# app.py\n" + APP[:APP.index("helper(1)")]
    want = infill(engine, tok, prefix, APP[APP.index("helper(1)"):], max_new_tokens=8)
    args = ["--repo", str(repo), "--file", "app.py", "--line", "5", "--col", "12", "--max-new-tokens", "8"]
    local = _complete([*args, "--model", str(serve_ckpt), "--device", "cpu"])
    assert local.returncode == 0, local.stderr.decode()
    assert local.stdout.decode() == want + "\n"
    remote = _complete([*args, "--endpoint", server.url], key=server.key)
    assert remote.returncode == 0, remote.stderr.decode()
    assert remote.stdout.decode() == want + "\n"


@pytest.mark.parametrize("argv, message", [
    (["--file", "app.py", "--line", "99", "--col", "1"], "--line 99"),
    (["--file", "nope.py", "--line", "1", "--col", "1"], "--file nope.py"),
    (["--file", "app.py", "--line", "1", "--col", "1", "--endpoint", "http://127.0.0.1:1"], "cannot reach"),
])
def test_bad_cursor_or_endpoint_is_one_error_line(repo, serve_ckpt, argv, message):
    src = [] if "--endpoint" in argv else ["--model", str(serve_ckpt)]
    r = _complete(["--repo", str(repo), *argv, *src])
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("dscoder complete: error: "), err
    assert message in err[0]
