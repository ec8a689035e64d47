"""dscoder.args and durable.RunFolderLock on their own: each refusal names the value, each accepted value parses."""
import argparse
import os
import subprocess
import sys

import pytest
import torch

from dscoder import args as A
from dscoder.durable import LOCK_NAME, RunFolderLock, lock_run_folder
from dscoder.errors import UserError
from dscoder.models.presets import get_preset


@pytest.mark.parametrize("kind, text, want", [
    (A.finite_float(), "1e-3", 1e-3), (A.finite_float(0, 1), "1", 1.0), (A.positive_float, "0.5", 0.5),
    (A.int_range(2, 5), "5", 5), (A.positive_int, "10_000", 10_000), (A.seed, str(2**64 - 1), 2**64 - 1),
    (A.seed, "0", 0), (A.comma_list, "py, go,", ["py", "go"]), (A.dtype_name, "bf16", "bfloat16"),
    (A.device_name, "CUDA:1", "cuda:1"),
])
def test_accepted(kind, text, want):
    assert kind(text) == want


@pytest.mark.parametrize("kind, text, message", [
    (A.finite_float(), "nan", "expected a finite number, got 'nan'"),
    (A.finite_float(), "-inf", "expected a finite number, got '-inf'"),
    (A.finite_float(), "1,5", "expected a number, got '1,5'"),
    (A.positive_float, "0", "must be > 0, got '0'"),
    (A.probability, "1.01", "must be in [0, 1], got '1.01'"),
    (A.finite_float(0, 1, lo_open=True), "0", "must be in (0, 1], got '0'"),
    (A.int_range(2), "1", "must be >= 2, got '1'"),
    (A.int_range(hi=3), "4", "must be <= 3, got '4'"),
    (A.positive_int, "2.0", "expected an integer, got '2.0'"),
    (A.seed, "-1", "must be in [0, 2**64-1], got '-1'"),
    (A.seed, str(2**64), "must be in [0, 2**64-1]"),
    (A.comma_list, " , ", "expected a comma-separated list"),
    (A.device_name, "gpu", "expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    (A.dtype_name, "float64", "expected one of auto, float32, bfloat16, float16, got 'float64'"),
])
def test_refused(kind, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=None) as e:
        kind(text)
    assert message in str(e.value)


def test_parser_errors_are_one_line_and_inputs_mix_with_options(capsys):
    p = A.Parser("dscoder x", "Doc.")
    p.add_inputs("data", "DATA", "inputs", alias="--data")
    p.add_argument("--lr", type=A.positive_float, default=1e-3, help="rate")
    assert p.parse_args(["a", "--lr", "2", "b", "--data", "c"]).data == ["c", "a", "b"]
    for argv, message in ((["a", "--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
                          (["--lr", "1"], "the following arguments are required: DATA"),
                          (["a", "--nope"], "unrecognized arguments: --nope")):
        with pytest.raises(SystemExit) as e:
            p.parse_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err == f"dscoder x: error: {message} (see dscoder x --help)\n"
    assert "(default: 0.001)" in p.format_help()


def test_resolve_device_dtype():
    ns = argparse.Namespace
    assert A.resolve_device_dtype(ns(device="cpu", dtype="auto")) == (torch.device("cpu"), torch.float32)
    assert A.resolve_device_dtype(ns(device="cpu", dtype="bfloat16")) == (torch.device("cpu"), torch.bfloat16)
    auto = A.resolve_device_dtype(ns(device="auto", dtype="auto"))
    assert auto == ((torch.device("cuda"), torch.bfloat16) if torch.cuda.is_available()
                    else (torch.device("cpu"), torch.float32))
    with pytest.raises(UserError, match="--device cuda:99"):
        A.resolve_device_dtype(ns(device="cuda:99", dtype="auto"))


def test_user_text(tmp_path):
    assert A.read_text_arg("déjà vu", "the prompt") == "déjà vu"
    with pytest.raises(UserError, match="the prompt is not valid UTF-8"):
        A.read_text_arg(os.fsdecode(b"ab\xff"), "the prompt")
    (tmp_path / "ok.py").write_text("π = 3\n", encoding="utf-8")
    assert A.read_text_file(tmp_path / "ok.py", "--prefix-file") == "π = 3\n"
    (tmp_path / "bad.py").write_bytes(b"x = '\xed\xa0\x80'")          # an encoded surrogate: not UTF-8
    with pytest.raises(UserError, match=r"--prefix-file '.*bad.py' is not valid UTF-8 \(byte 0xed at offset 5\)"):
        A.read_text_file(tmp_path / "bad.py", "--prefix-file")
    with pytest.raises(UserError, match="cannot read --prefix-file"):
        A.read_text_file(tmp_path, "--prefix-file")


def test_output_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    assert A.output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError, match="exists and is not a folder"):
        A.output_folder(tmp_path / "f")
    with pytest.raises(UserError, match=r"cannot be created: '.*/f' is a file"):
        A.output_folder(tmp_path / "f" / "sub")
    with pytest.raises(argparse.ArgumentTypeError, match="is empty"):
        A.out_dir("")
    assert A.out_file(str(tmp_path / "new" / "m.gguf")) == tmp_path / "new" / "m.gguf"
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        A.out_file(str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match=r"cannot be written: its folder '.*/f' exists and is not"):
        A.out_file(str(tmp_path / "f" / "m.gguf"))


def test_typed_overrides():
    base = get_preset("tiny")
    assert A.typed_overrides(["num_hidden_layers=2", "rope_theta=1e5"], base) == \
        {"num_hidden_layers": 2, "rope_theta": 100000.0}
    for item, message in (("num_hidden_layers=two", "num_hidden_layers takes an integer, got 'two'"),
                          ("rope_theta=NaN", "rope_theta takes a finite number"),
                          ("tie_word_embeddings=1", "tie_word_embeddings takes true or false"),
                          ("num_hidden_layers", "expected FIELD=VALUE")):
        with pytest.raises(UserError, match=message):
            A.typed_overrides([item], base)


def test_lock_names_the_holder_and_is_released(tmp_path):
    run = tmp_path / "run"
    with lock_run_folder(run) as lock:
        assert (run / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(UserError, match=f"{run} is in use by pid {os.getpid()}"):
            RunFolderLock(run).acquire()       # a second open file description: flock refuses it too
        code = f"from dscoder.durable import lock_run_folder; lock_run_folder({str(run)!r})"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and f"is in use by pid {os.getpid()}" in r.stderr
        assert lock is not None
    assert not (run / LOCK_NAME).exists()
    RunFolderLock(run).acquire().release()     # free again
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot create the folder"):
        lock_run_folder(tmp_path / "file" / "run")
