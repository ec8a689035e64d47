"""`dscoder tokenizer train` table: bad input is one error line and exit 2, with nothing written under --out."""
import pytest

from conftest import Row, check, ids, run_cli

TRAIN = ["tokenizer", "train", "{corpus}", "--out", "{tmp}/tok"]

ROWS = [
    Row(["tokenizer", "train", "--out", "{tmp}/tok"], 2, "required: PATH", absent=["{tmp}/tok"], id="no input"),
    Row([*TRAIN, "--vocab-size", "100"], 2, "argument --vocab-size: must be >= 257, got '100'",
        absent=["{tmp}/tok"], id="--vocab-size too small"),
    Row([*TRAIN, "--vocab-size", "inf"], 2, "argument --vocab-size: expected an integer", absent=["{tmp}/tok"],
        id="--vocab-size inf"),
    Row([*TRAIN, "--max-bytes", "-1"], 2, "argument --max-bytes: must be >= 1", absent=["{tmp}/tok"],
        id="--max-bytes -1"),
    Row(["tokenizer", "train", "{tmp}/missing", "--out", "{tmp}/tok"], 2, "'{tmp}/missing': no such file",
        absent=["{tmp}/tok"], id="missing input"),
    Row(["tokenizer", "train", "{corpus}", "--out", "{tmp}/afile"], 2, "exists and is not a folder",
        {"{tmp}/afile": "x"}, id="--out is a file"),
    Row(["tokenizer", "train", "{tmp}/bin", "--out", "{tmp}/tok", "--vocab-size", "300"], 2, "no text to train",
        {"{tmp}/bin/a.bin": bytes(range(256))}, absent=["{tmp}/tok"], id="only binary input"),
    # the old spelling --input still works
    Row(["tokenizer", "train", "--input", "{corpus}", "--out", "{tmp}/tok", "--vocab-size", "260"], 0,
        id="--input alias"),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_tokenizer_train(row, cli_env, tmp_path):
    check(row, cli_env, tmp_path)


def test_tokenizer_alone_lists_its_verbs(tmp_path):
    r = run_cli(["tokenizer"], tmp_path)
    assert r.returncode == 0 and b"train" in r.stdout and r.stderr == b""
