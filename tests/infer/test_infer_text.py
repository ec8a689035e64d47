"""Text helpers and the generate / infill / chat CLI verbs on a tiny random checkpoint with a real trained tokenizer.

The CLI runs as real subprocesses; its stdout must equal the in-process helpers' text for the same checkpoint."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dscoder.errors import UserError
from dscoder.infer.text import chat, complete, encode, infill, load
from dscoder.tokenizer.chat import CHAT_TEMPLATES
from dscoder.tokenizer.special import BOS, EOT, FIM_BEGIN, FIM_END, FIM_HOLE, special_ids

SRC = Path(__file__).resolve().parents[2] / "src" / "dscoder"
NEW = 8


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A checkpoint folder: tokenizer trained on ~30 KB of this package's source + a tiny random Llama."""
    from dscoder.models.hf import build_model, save_pretrained
    from dscoder.models.presets import get_preset
    from dscoder.tokenizer.bpe import train_tokenizer

    out = tmp_path_factory.mktemp("ckpt")
    texts = [p.read_text() for p in sorted((SRC / "infer").glob("*.py")) + sorted((SRC / "tokenizer").glob("*.py"))]
    tok = train_tokenizer(texts, vocab_size=400, out_dir=out)
    torch.manual_seed(0)
    cfg = get_preset("tiny", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     initializer_range=0.2)
    save_pretrained(build_model(cfg), out)
    return out


@pytest.fixture(scope="module")
def loaded(ckpt):
    return load(str(ckpt))


@torch.inference_mode()
def greedy_text(engine, tok, ids: list[int], stops: list[int], n: int = NEW) -> str:
    """Reference: full forwards without cache, cut at the first stop id, decoded without special tokens."""
    seq = list(ids)
    for _ in range(n):
        nxt = int(engine.model(torch.tensor([seq]))[0, -1].argmax())
        if nxt in stops:
            break
        seq.append(nxt)
    return tok.decode(seq[len(ids):], skip_special_tokens=True)


def test_complete_is_bos_plus_code(loaded):
    engine, tok = loaded
    sp = special_ids(tok)
    code = "def decode(ids):\n    return"
    ids = [sp.bos, *tok.encode(code, add_special_tokens=False)]
    assert complete(engine, tok, code, max_new_tokens=NEW) == greedy_text(engine, tok, ids, [sp.eos])


def test_infill_uses_psm_and_returns_only_the_middle(loaded):
    engine, tok = loaded
    sp = special_ids(tok)
    prefix, suffix = "def f(x):\n    ", "\n    return y\n"
    ids = [sp.bos, *encode(tok, f"{FIM_BEGIN}{prefix}{FIM_HOLE}{suffix}{FIM_END}")]
    assert [t for t in ids if t in (sp.fim_begin, sp.fim_hole, sp.fim_end)] == [sp.fim_begin, sp.fim_hole, sp.fim_end]
    middle = infill(engine, tok, prefix, suffix, max_new_tokens=NEW)
    assert middle == greedy_text(engine, tok, ids, [sp.eos])
    assert FIM_END not in middle and not middle.startswith(prefix)


@pytest.mark.parametrize("style", ["v1", "v2"])
def test_chat_template_and_stop_tokens(loaded, style):
    engine, tok = loaded
    sp = special_ids(tok)
    msgs = [{"role": "user", "content": "write a function"}]
    ids = list(tok.apply_chat_template(msgs, chat_template=CHAT_TEMPLATES[style], tokenize=True,
                                       add_generation_prompt=True, return_dict=False))
    assert ids[0] == sp.bos and tok.decode(ids).startswith(BOS)
    stops = [sp.eot, sp.eos] if style == "v1" else [sp.eos]
    reply = chat(engine, tok, msgs, style=style, max_new_tokens=NEW)
    assert reply == greedy_text(engine, tok, ids, stops) and EOT not in reply


def test_text_helpers_reject_bad_input(loaded):
    engine, tok = loaded
    with pytest.raises(UserError, match="empty prompt"):
        complete(engine, tok, "")
    with pytest.raises(UserError, match="context of 256"):
        complete(engine, tok, "x = 1\n" * 200, max_new_tokens=NEW)
    with pytest.raises(UserError, match="ends with a user message"):
        chat(engine, tok, [{"role": "assistant", "content": "hi"}])


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """Run `dscoder ARGS`; stdout/stderr decoded as UTF-8 with no newline translation (generated text may hold \r)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    r = subprocess.run([sys.executable, "-m", "dscoder.cli", *args], input=stdin.encode(), capture_output=True,
                       env=env, timeout=120)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def _printed(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def test_cli_generate_and_infill(ckpt, loaded, tmp_path):
    engine, tok = loaded
    code = "class Engine:\n    def"
    full = complete(engine, tok, code, max_new_tokens=NEW)
    at = next(i for i in range(1, len(full) - 1) if full[i:i + 2].isascii() and full[i:i + 2].isprintable())
    stop = full[at:at + 2]  # an ASCII pair from the greedy text: the CLI must cut just before it
    r = cli("generate", "--model", str(ckpt), "--max-new-tokens", str(NEW), "--stop", "@@never@@", f"--stop={stop}", "-",
            stdin=code)
    assert r.returncode == 0, r.stderr
    assert r.stdout == _printed(full[:full.index(stop)])
    (tmp_path / "suffix.py").write_text("\n    return out\n")
    r = cli("infill", "--model", str(ckpt), "--max-new-tokens", str(NEW), "--prefix", "def g(a):\n",
            "--suffix-file", str(tmp_path / "suffix.py"), "--temperature", "0.8", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == _printed(infill(engine, tok, "def g(a):\n", "\n    return out\n", max_new_tokens=NEW,
                                       temperature=0.8, seed=1))


def test_cli_chat_reads_one_message_per_line(ckpt, loaded):
    engine, tok = loaded
    r = cli("chat", "--model", str(ckpt), "--style", "v2", "--max-new-tokens", str(NEW), stdin="hello\nmore\n")
    assert r.returncode == 0, r.stderr
    msgs, want = [{"role": "user", "content": "hello"}], ""
    for nxt in ("more", None):
        reply = chat(engine, tok, msgs, style="v2", max_new_tokens=NEW)
        want += _printed(reply)
        msgs += [{"role": "assistant", "content": reply}] + ([{"role": "user", "content": nxt}] if nxt else [])
    assert r.stdout == want


def test_cli_chat_uses_the_template_saved_with_the_model(ckpt, tmp_path):
    """Without --style, `dscoder chat` renders with the template the checkpoint carries (here: the v2 one saved
    into a copy of a v1 checkpoint), as sft writes it; --style v1 overrides it."""
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    engine, tok = load(copy)
    tok.chat_template = CHAT_TEMPLATES["v2"]
    tok.save_pretrained(copy)
    engine, tok = load(copy)
    msgs = [{"role": "user", "content": "hello"}]
    saved = _printed(chat(engine, tok, msgs, max_new_tokens=NEW))
    assert saved != _printed(chat(engine, tok, msgs, style="v1", max_new_tokens=NEW))   # the template matters
    r = cli("chat", "--model", str(copy), "--max-new-tokens", str(NEW), stdin="hello\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == saved
    assert r.stdout == _printed(chat(engine, tok, msgs, style="v2", max_new_tokens=NEW))


@pytest.mark.parametrize("args, msg", [
    (["generate", "--model", "/nonexistent/model", "x"], "does not exist"),
    (["generate", "--model", "{ckpt}", ""], "empty prompt"),
])
def test_cli_errors_are_one_line_exit_2(ckpt, args, msg):
    r = cli(*[a.format(ckpt=ckpt) for a in args])
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("dscoder generate: error:") and msg in r.stderr
