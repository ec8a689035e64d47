"""`dscoder generate | infill | chat` table: bad input is one error line naming the input, exit 2; no traceback."""
import shutil

import pytest

from conftest import Row, check, flip_byte, ids

GEN = ["generate", "--model", "{ckpt}", "--max-new-tokens", "2"]
INFILL = ["infill", "--model", "{ckpt}", "--max-new-tokens", "2"]
CHAT = ["chat", "--model", "{ckpt}", "--max-new-tokens", "2", "--style", "v2"]
LONG = "def f(x):\n" + "    x = x + 1\n" * 40            # far more than the 64-token context
SURROGATE = "x = '\udc80'"                                 # what Python makes of an undecodable byte

ROWS = [
    # text that is not UTF-8, from argv, stdin and files
    Row([*GEN, b"def f():\xff"], 2, "the prompt is not valid UTF-8", id="prompt bytes not UTF-8"),
    Row([*GEN, b"x = '\xed\xa0\x80'"], 2, "the prompt is not valid UTF-8", id="prompt with a UTF-8-coded surrogate"),
    Row([*GEN, "-"], 2, "the prompt on stdin is not valid UTF-8 (byte 0xff at offset 4)", stdin=b"def \xff",
        id="stdin prompt not UTF-8"),
    Row([*INFILL, "--prefix-file", "{tmp}/pre.py", "--suffix", "x"], 2,
        "--prefix-file '{tmp}/pre.py' is not valid UTF-8 (byte 0xe9", {"{tmp}/pre.py": "café".encode("latin-1")},
        id="prefix file latin-1"),
    Row([*INFILL, "--prefix", "x", "--suffix-file", "{tmp}/suf.py"], 2, "--suffix-file '{tmp}/suf.py' is not valid",
        {"{tmp}/suf.py": b"a = '\xed\xa0\x80'\n"}, id="suffix file with an encoded surrogate"),
    Row([*INFILL, "--prefix", "x", "--suffix-file", "{tmp}/none.py"], 2, "cannot read --suffix-file",
        id="suffix file missing"),
    Row([*INFILL, "--prefix", b"\xff"], 2, "--prefix is not valid UTF-8", id="prefix bytes not UTF-8"),
    Row([*CHAT, "--truncate", "left"], 2, "the chat input on stdin (line 2) is not valid UTF-8",
        stdin=b"hello\nhi \xff\n", id="chat: a reply, then a line not UTF-8"),
    # numbers, checked at parse time (top-k and max-new-tokens against config.json, before any weights load)
    Row([*GEN, "--seed", str(2**64), "x"], 2, "argument --seed: must be in [0, 2**64-1]", id="--seed beyond 64 bits"),
    Row([*GEN, "--seed", "-1", "x"], 2, "argument --seed: must be in [0, 2**64-1], got '-1'", id="--seed negative"),
    Row([*GEN, "--temperature", "inf", "x"], 2, "argument --temperature: expected a finite number, got 'inf'",
        id="--temperature inf"),
    Row([*GEN, "--top-p", "0", "x"], 2, "argument --top-p: must be in (0, 1], got '0'", id="--top-p 0"),
    Row([*GEN, "--top-k", "-3", "x"], 2, "argument --top-k: must be >= 0", id="--top-k negative"),
    Row([*GEN, "--max-new-tokens", "0", "x"], 2, "argument --max-new-tokens: must be >= 1", id="--max-new-tokens 0"),
    Row([*GEN, "--top-k", "321", "x"], 2, "--top-k 321 is larger than the model's vocabulary of 320 tokens",
        id="--top-k above the vocabulary"),
    Row(["generate", "--model", "{ckpt}", "--max-new-tokens", "64", "x"], 2,
        "--max-new-tokens 64 leaves no room for a prompt in the model's context of 64 tokens",
        id="--max-new-tokens fills the context"),
    Row([*GEN, "--dtype", "float64", "x"], 2, "argument --dtype: expected one of auto, float32", id="--dtype float64"),
    Row([*GEN, "--truncate", "right", "x"], 2, "argument --truncate: invalid choice", id="--truncate right"),
    # checkpoints
    Row(["generate", "--model", "{tmp}/none", "x"], 2, "model folder '{tmp}/none' does not exist",
        id="missing checkpoint"),
    Row(["generate", "--model", "{tok}", "x"], 2, "has no config.json", id="tokenizer folder as checkpoint"),
    Row([*GEN[:1], "--model", "{badckpt}", "--max-new-tokens", "2", "x"], 2, "model.safetensors",
        id="truncated weights"),
    # the context
    Row([*GEN, LONG], 2, "> the model's context of 64 tokens (shorten it, lower --max-new-tokens, or pass "
        "--truncate left", id="prompt longer than the context"),
    # extreme but valid values: the largest seed, a temperature that underflows float32, a nucleus of one token
    Row([*GEN, "--truncate", "left", "--seed", str(2**64 - 1), "--temperature", "1e-300", "--top-p", "1e-300",
         "--device", "cpu", "--dtype", "float32", LONG], 0, id="--truncate left, extreme sampling values"),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_generate_infill_chat(row, cli_env, tmp_path):
    check(row, cli_env, tmp_path)


def _damaged_final(env, tmp):
    """The run's final/ (its manifest records each file's size and sha256) with one weight byte changed."""
    shutil.copytree(env.run / "final", tmp / "m")
    flip_byte(tmp / "m" / "model.safetensors")


RUN_ROWS = [
    Row(["generate", "--model", "{tmp}/m", "--max-new-tokens", "2", "x"], 2, "model.safetensors",
        prepare=_damaged_final, id="weights changed after saving"),
]


@pytest.mark.parametrize("row", RUN_ROWS, ids=ids(RUN_ROWS))
def test_on_a_trained_checkpoint(row, cli_env, pretrained_run, tmp_path):
    check(row, cli_env, tmp_path)
