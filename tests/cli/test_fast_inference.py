"""`--quantize` on generate / infill / chat / eval, `--speculate` on generate / infill / chat, and `export gguf`:
real subprocesses on the session's tiny checkpoint. The flags reach the loader and the engine (the printed text is
what the int8 model writes in-process, with or without speculation); a bad value is one error line."""
import shutil

import pytest

from conftest import BENCH, Row, check, ids, run_cli

GEN = ["generate", "--model", "{ckpt}", "--max-new-tokens", "6"]
INFILL = ["infill", "--model", "{ckpt}", "--max-new-tokens", "2", "--prefix", "def f(x):\n", "--suffix", "\n"]
CHAT = ["chat", "--model", "{ckpt}", "--max-new-tokens", "2", "--style", "v2"]
EVAL = ["eval", "--benchmark", "humaneval", "--data", "{bench}", "--model", "{ckpt}", "--limit", "1",
        "--workers", "1", "--max-new-tokens", "4"]

ROWS = [
    Row([*INFILL, "--quantize", "int8", "--speculate", "ngram"], 0, id="infill int8 ngram"),
    Row([*CHAT, "--quantize", "int8", "--speculate", "ngram"], 0, stdin=b"hello\n", id="chat int8 ngram"),
    Row([*GEN, "--speculate", "medusa", "x"], 2, "argument --speculate: invalid choice: 'medusa'",
        id="generate medusa"),
    Row([*GEN, "--quantize", "int4", "x"], 2, "argument --quantize: invalid choice: 'int4'", id="generate int4"),
    Row([*EVAL, "--quantize", "int4", "--out", "{tmp}/o"], 2, "argument --quantize: invalid choice: 'int4'",
        absent=["{tmp}/o"], id="eval int4"),
]


@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_fast_inference_flags(row, cli_env, tmp_path):
    check(row, cli_env, tmp_path)


@pytest.mark.parametrize("speculate", ["none", "ngram"])
def test_generate_int8_prints_what_the_int8_model_writes(cli_env, tmp_path, speculate):
    import dscoder
    from dscoder.infer.engine import Engine
    from dscoder.infer.text import complete

    prompt = "def add(a, b):\n    return a + b\n\ndef add("
    r = run_cli(["generate", "--model", str(cli_env.ckpt), "--max-new-tokens", "12", "--quantize", "int8",
                 "--speculate", speculate, "--device", "cpu", prompt], tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    tok = dscoder.load_tokenizer(str(cli_env.ckpt))
    text = complete(Engine(dscoder.load_model(cli_env.ckpt, quantize="int8")), tok, prompt, max_new_tokens=12)
    assert r.stdout.decode() == (text if text.endswith("\n") else text + "\n")


def test_eval_int8_on_a_checkpoint_with_room_for_humaneval(cli_env, tmp_path):
    import torch

    from dscoder.models.hf import build_model, save_pretrained
    from dscoder.models.presets import get_preset

    ckpt = tmp_path / "ckpt"
    shutil.copytree(cli_env.tok, ckpt)
    torch.manual_seed(0)
    save_pretrained(build_model(get_preset("tiny", vocab_size=320, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                           max_position_embeddings=1024)), ckpt)
    r = run_cli(["eval", "--benchmark", "humaneval", "--data", str(BENCH), "--model", str(ckpt), "--limit", "1",
                 "--workers", "1", "--max-new-tokens", "4", "--quantize", "int8", "--device", "cpu",
                 "--out", str(tmp_path / "o")], tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "o" / "summary.json").is_file()


@pytest.mark.parametrize("dtype, code", [("bfloat16", 2), ("float32", 0)])
def test_int8_layer_without_a_path_is_one_error_line(cli_env, tmp_path, dtype, code):
    """in_features 100 (not a multiple of 16): torch's int8 kernel, which a bf16 model's layers use, has no path
    for it, so `--dtype bfloat16 --quantize int8` is one error line; in fp32 dscoder's own kernel takes it."""
    import torch

    from dscoder.models.hf import build_model, save_pretrained
    from dscoder.models.presets import get_preset

    ckpt = tmp_path / "ckpt"
    shutil.copytree(cli_env.tok, ckpt)
    torch.manual_seed(0)
    save_pretrained(build_model(get_preset("tiny", vocab_size=320, hidden_size=32, intermediate_size=100,
                                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)), ckpt)
    r = run_cli(["generate", "--model", str(ckpt), "--max-new-tokens", "3", "--quantize", "int8", "--dtype", dtype,
                 "--device", "cpu", "def f("], tmp_path)
    err = r.stderr.decode()
    assert r.returncode == code, err
    if code:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("dscoder generate: error: no int8 path for 1 layer(s): model.layers.0.mlp.down_proj "
                              "(in_features 100)")


def test_export_gguf_writes_a_readable_file(cli_env, tmp_path):
    import gguf

    r = run_cli(["export", "gguf", "--model", str(cli_env.ckpt), "--out", str(tmp_path / "m.gguf"), "--type",
                 "q8_0"], tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().startswith(f"wrote {tmp_path / 'm.gguf'} (") and r.stderr == b""
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert reader.fields["general.architecture"].contents() == "llama"
    assert {t.tensor_type.name for t in reader.tensors} == {"F32", "Q8_0"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


@pytest.mark.parametrize("args,message", [
    (["--out", "{tmp}/m.gguf", "--type", "q4_0"], "argument --type: invalid choice: 'q4_0'"),
    (["--out", "{tmp}"], "argument --out: '{tmp}' is a folder"),
    (["--out", "{tmp}/no/m.gguf"], "folder '{tmp}/no' does not exist"),
], ids=["q4_0", "out is a folder", "out folder missing"])
def test_export_gguf_bad_input_is_one_line_and_writes_nothing(cli_env, tmp_path, args, message):
    r = run_cli(["export", "gguf", "--model", str(cli_env.ckpt), *[a.format(tmp=tmp_path) for a in args]], tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("dscoder export gguf: error: "), err
    assert message.format(tmp=tmp_path) in err
    assert list(tmp_path.iterdir()) == []
