"""`dscoder data build` table: bad input is one error line and exit 2, with nothing written under --out."""
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from conftest import Row, check, ids, run_cli

REPO = {"{tmp}/repos/r1/util.py": "def add(a, b):\n    return a + b\n",
        "{tmp}/repos/r1/main.py": "from util import add\n\nprint(add(1, 2))\n"}
BUILD = ["data", "build", "{tmp}/repos", "--no-decontaminate", "--workers", "1"]

ROWS = [
    Row(["data", "build", "{tmp}/repos"], 2, "the following arguments are required: --out", REPO, id="no --out"),
    Row(["data", "build", "--out", "{tmp}/out"], 2, "required: SRC", absent=["{tmp}/out"], id="no source"),
    Row([*BUILD, "--out", "{tmp}/afile"], 2, "'{tmp}/afile' exists and is not a folder",
        {**REPO, "{tmp}/afile": "x"}, id="--out is a file"),
    Row([*BUILD, "--out", "{tmp}/afile/sub"], 2, "cannot be created: '{tmp}/afile' is a file",
        {**REPO, "{tmp}/afile": "x"}, id="--out under a file"),
    Row([*BUILD, "--out", "{tmp}/out", "--workers", "0"], 2, "argument --workers: must be >= 1, got '0'", REPO,
        absent=["{tmp}/out"], id="--workers 0"),
    Row([*BUILD, "--out", "{tmp}/out", "--minhash-threshold", "nan"], 2,
        "argument --minhash-threshold: expected a finite number, got 'nan'", REPO, absent=["{tmp}/out"],
        id="--minhash-threshold nan"),
    Row([*BUILD, "--out", "{tmp}/out", "--shard-size", "1e3"], 2, "argument --shard-size: expected an integer",
        REPO, absent=["{tmp}/out"], id="--shard-size float"),
    Row([*BUILD, "--out", "{tmp}/out", "--minhash-bands", "7"], 2, "--minhash-bands (7) must divide", REPO,
        absent=["{tmp}/out"], id="bands do not divide perm"),
    Row(["data", "build", "{tmp}/nothere", "--out", "{tmp}/out"], 2, "does not exist", absent=["{tmp}/out"],
        id="missing source"),
    Row([*BUILD, "--out", "{tmp}/out", "--languages", "klingon"], 2, "unknown language", REPO,
        absent=["{tmp}/out"], id="unknown language"),
    Row(["data", "build", "{tmp}/empty", "--out", "{tmp}/out", "--no-decontaminate", "--workers", "1"], 2,
        "no usable text", {"{tmp}/empty/r/blob.py": b"\x00\x01\x02"}, absent=["{tmp}/out"], progress=True,
        id="empty corpus"),
    # inputs may follow options; the lock file is gone once the run ends
    Row(["data", "build", "--out", "{tmp}/out", "--no-decontaminate", "{tmp}/repos", "--workers", "1"], 0, "",
        REPO, absent=["{tmp}/out/.lock", "{tmp}/out/.work"], id="a clean run"),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_data_build(row, cli_env, tmp_path):
    check(row, cli_env, tmp_path)


def test_data_alone_lists_its_verbs(tmp_path):
    r = run_cli(["data"], tmp_path)
    assert r.returncode == 0 and b"build" in r.stdout and r.stderr == b""
    r = run_cli(["data", "bulid"], tmp_path)
    assert r.returncode == 2 and r.stderr.decode().startswith("dscoder data: error: unknown verb 'bulid'; one of: build")


def test_a_second_build_into_a_folder_in_use_is_refused(tmp_path):
    """A (the standard library's test suite: tens of seconds of work) holds OUT; B on the same OUT exits 2 naming
    A's pid and leaves A's files alone; once A is killed with SIGKILL the folder can be locked again."""
    out = tmp_path / "out"
    argv = ["data", "build", str(Path(sysconfig.get_paths()["stdlib"]) / "test"), "--out", str(out),
            "--no-decontaminate", "--workers", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    a = subprocess.Popen([sys.executable, "-m", "dscoder.cli", *argv], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out / ".lock").is_file() or (out / ".lock").read_text().strip() != str(a.pid):
            assert a.poll() is None, a.stderr.read().decode()
            assert time.monotonic() < deadline, "the first build never took the lock"
            time.sleep(0.1)
        b = run_cli(argv, tmp_path)
        lines = [line for line in b.stderr.decode().splitlines() if line.strip()]
        assert b.returncode == 2 and len(lines) == 1, b.stderr.decode()
        assert lines[0] == f"dscoder data build: error: {out} is in use by pid {a.pid} (another dscoder run writes " \
                           "there; wait for it to finish or choose another folder)"
        assert a.poll() is None and (out / ".lock").read_text().strip() == str(a.pid)
    finally:
        a.send_signal(signal.SIGKILL)
        a.communicate(timeout=60)
    code = f"from dscoder.durable import lock_run_folder; lock_run_folder({str(out)!r}).release()"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
