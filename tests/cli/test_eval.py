"""`dscoder eval` table: bad input is one error line and exit 2, with nothing written under --out."""
import os
import subprocess
import sys

import pytest

from conftest import Row, check, ids

SAMPLES = {"{tmp}/s.jsonl": '{"task_id": "HumanEval/0", "completion": "    return True\\n"}\n'}
EVAL = ["eval", "--benchmark", "humaneval", "--data", "{bench}", "--samples", "{tmp}/s.jsonl", "--limit", "1",
        "--workers", "1"]

ROWS = [
    Row([*EVAL, "--timeout", "nan"], 2, "argument --timeout: expected a finite number, got 'nan'", SAMPLES,
        id="--timeout nan"),
    Row([*EVAL, "--timeout", "0"], 2, "argument --timeout: must be > 0", SAMPLES, id="--timeout 0"),
    Row([*EVAL, "--seed", "-1"], 2, "argument --seed: must be in [0, 2**64-1]", SAMPLES, id="--seed negative"),
    Row([*EVAL, "--workers", "0"], 2, "argument --workers: must be >= 1", SAMPLES, id="--workers 0"),
    Row([*EVAL, "--temperature", "-0.5"], 2, "argument --temperature: must be >= 0", SAMPLES, id="--temperature < 0"),
    Row([*EVAL, "--out", "{tmp}/afile"], 2, "'{tmp}/afile' exists and is not a folder", {**SAMPLES, "{tmp}/afile": ""},
        id="--out is a file"),
    Row([*EVAL, "--out", "{tmp}/afile/o"], 2, "cannot be created: '{tmp}/afile' is a file",
        {**SAMPLES, "{tmp}/afile": ""}, id="--out under a file"),
    Row(["eval", "--benchmark", "humaneval", "--data", "{bench}"], 2, "no samples to score", id="no samples"),
    Row([*EVAL, "--out", "{tmp}/o"], 2, "--samples file", {"{tmp}/s.jsonl": b'{"task_id": "\xff"}\n'},
        absent=["{tmp}/o"], id="samples file not UTF-8"),
    Row(["eval", "--benchmark", "humaneval", "--data", "{bench}", "--model", "{tmp}/none", "--out", "{tmp}/o"], 2,
        "does not exist", absent=["{tmp}/o"], id="missing checkpoint"),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_eval(row, cli_env, tmp_path):
    check(row, cli_env, tmp_path)


def test_a_run_leaves_only_its_results(cli_env, tmp_path):
    """Scratch space of the sandboxed samples is gone afterwards: TMPDIR keeps only the sandbox's uid lease files
    (eval/isolation.py LOCK_DIR, shared by every run by design), --out only the results and no lock."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "s.jsonl").write_text('{"task_id": "HumanEval/0", "completion": "    return True\\n"}\n')
    argv = [cli_env.fill(a, tmp_path) for a in EVAL] + ["--out", str(tmp_path / "o")]
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path / "tmp"))
    r = subprocess.run([sys.executable, "-m", "dscoder.cli", *argv], cwd=tmp_path, env=env, capture_output=True,
                       timeout=300)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr.decode()
    assert [p.name for p in (tmp_path / "tmp").iterdir()] in ([], ["dscoder-sandbox-uids"])
    assert all(p.is_file() for p in (tmp_path / "tmp").rglob("*") if p.parent.name == "dscoder-sandbox-uids")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == \
        ["results.jsonl", "run.json", "summary.json", "summary.md"]


def test_sampling_with_the_largest_seed(cli_env, pretrained_run, tmp_path):
    """Each sample's seed is --seed plus its index, kept within 64 bits: --seed 2**64-1 with --n 2 runs."""
    argv = ["eval", "--benchmark", "humaneval", "--data", "{bench}", "--model", "{run}/final", "--limit", "1",
            "--n", "2", "--temperature", "0.5", "--seed", str(2**64 - 1), "--max-new-tokens", "2", "--workers", "1",
            "--device", "cpu"]
    check(Row(argv, 0), cli_env, tmp_path)
