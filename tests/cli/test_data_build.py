"""`dscoder data build` table: bad input is one error line and exit 2, with nothing written under --out."""
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
    assert r.returncode == 2 and r.stderr.decode().strip() == "dscoder data: error: unknown verb 'bulid'; one of: build"
