"""BPE training/loading: DeepSeek pre-tokenization, special-token ids, exact round trips, HF interop, the CLI."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from chat_oracle import render_v1  # the plain-Python v1 layout (tests/tokenizer)
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from dscoder.errors import UserError
from dscoder.tokenizer.bpe import iter_texts, load_tokenizer, plain_encoder, train_tokenizer
from dscoder.tokenizer.special import BOS, DEEPSEEK_V1_IDS, EOS, EOT, FIM_HOLE, SPECIAL_TOKENS, special_ids

WORDS = ["def", "return", "self", "import", "class", "for", "in", "if", "else", "print", "value", "日本", "données"]


def _corpus(n=400, seed=0):
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        ident = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 9)))
        lines = [f"{rng.choice(WORDS)} {ident}.{rng.choice(WORDS)}({rng.randint(0, 99999)}):" for _ in range(8)]
        docs.append("\n".join("\t" * rng.randint(0, 2) + ln + " " * rng.randint(0, 2) for ln in lines) + "\r\n")
    return docs


def _random_text(rng, n):
    pool = "abcXYZ019 \t\n\r{}()[];:'\"\\#é世界🎉\u00a0\u200b\ufeff"
    any_char = [chr(c) for c in (rng.randint(0x20, 0xD7FF), rng.randint(0xE000, 0x10FFFF))]   # no surrogates
    return "".join(rng.choice(pool) for _ in range(n)) + "".join(any_char)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    tok = train_tokenizer(_corpus(), vocab_size=400, out_dir=out)
    return tok, out


def test_layout_special_ids_and_bos(trained):
    tok, out = trained
    learned = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size(with_added_tokens=False)
    assert learned == 400 and len(tok) == 409
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(400, 409))
    ids = special_ids(tok, require_fim=True)
    assert (ids.bos, ids.eos, ids.fim_hole, ids.fim_begin, ids.fim_end, ids.eot, ids.pad) == \
        (400, 401, 402, 403, 404, 408, 401)
    enc = tok("x = 1")["input_ids"]
    assert enc[0] == ids.bos and enc[-1] != ids.eos          # add_bos_token true, add_eos_token false
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["bos_token"] == BOS and cfg["eos_token"] == EOS == cfg["pad_token"]


def test_pretokenizer_isolates_newlines_and_digits(trained):
    tok, _ = trained
    vocab = [t for t in tok.get_vocab() if t not in SPECIAL_TOKENS]
    assert not [t for t in vocab if ("Ċ" in t or "č" in t) and len(t) > 1]        # \n and \r are always alone
    assert not [t for t in vocab if sum(c.isdigit() for c in t) > 1]             # single digits
    pieces = tok.convert_ids_to_tokens(tok("x12 = 345\n\n", add_special_tokens=False)["input_ids"])
    assert pieces[-2:] == ["Ċ", "Ċ"] and "1" in pieces and "5" in pieces


def test_decode_round_trips_arbitrary_text(trained):
    tok, out = trained
    auto = AutoTokenizer.from_pretrained(out)
    rng = random.Random(5)
    samples = ["", " ", "\r\n", "def f(x):\r\n\treturn x  \n\n  ", "世界🎉\u00a0é\ufeff", f"s = '{FIM_HOLE}'"]
    samples += [_random_text(rng, rng.randint(1, 120)) for _ in range(200)]
    for s in samples:
        ids = tok(s)["input_ids"]
        assert auto(s)["input_ids"] == ids
        assert ids[0] == 400 and tok.decode(ids[1:]) == s
        assert auto.decode(ids[1:]) == s
        plain = plain_encoder(tok)(s)
        assert tok.decode(plain) == s and not set(plain) & set(range(400, 409))   # literal sentinels stay text


def test_encoding_uses_learned_merges(trained):
    """A round trip holds for any byte-level mapping; this checks the merges are learned and applied."""
    tok, _ = trained
    for word in ("def", "return", "import", "print"):                              # frequent in the corpus
        assert tok.convert_ids_to_tokens(tok(word, add_special_tokens=False)["input_ids"]) == [word]
    text = "".join(_corpus(n=20, seed=1))                                            # unseen docs, same language
    n_ids = len(tok(text, add_special_tokens=False)["input_ids"])
    assert n_ids < 0.7 * len(text.encode())            # 0.61 measured; bytes alone give 1.0 (random names, digits split)


def test_saved_chat_template_matches_render_v1(trained):
    _, out = trained
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a\n"},
            {"role": "user", "content": "b"}]
    for t in (AutoTokenizer.from_pretrained(out), load_tokenizer(out)):
        assert t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == render_v1(msgs)


def _deepseek_like(folder: Path, base: Path):
    """A folder shaped like a released deepseek-coder-*-instruct tokenizer: 32000 learned ids, 13 single
    characters at 32000..32012, the nine specials at 32013..32021, no post-processor, LlamaTokenizerFast."""
    tj = json.loads((base / "tokenizer.json").read_text())
    extra = "õ÷ÁýÀÿøúþüùöû"      # byte symbols DeepSeek's learned vocab lacks, so they were added after it
    vocab = {(t if t not in extra else f"<filler_{i}>"): i for t, i in tj["model"]["vocab"].items()}
    vocab.update({f"<filler_{i}>": i for i in range(len(vocab), 32000)})
    tj["model"]["vocab"] = vocab
    tj["model"]["merges"] = [m for m in tj["model"]["merges"] if not set("".join(m)) & set(extra)]
    added = [(32000 + i, c) for i, c in enumerate(extra)]
    added += [(DEEPSEEK_V1_IDS[t], t) for t in SPECIAL_TOKENS]
    tj["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                           "normalized": len(c) == 1, "special": len(c) > 1} for i, c in added]
    tj["post_processor"] = None
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True, "add_eos_token": False, "legacy": True,
        "bos_token": {"__type": "AddedToken", "content": BOS}, "eos_token": EOT, "pad_token": EOS,
        "model_max_length": 16384}, ensure_ascii=False))


def test_loads_a_deepseek_like_folder(trained, tmp_path):
    _, out = trained
    _deepseek_like(tmp_path / "ds", out)
    tok = load_tokenizer(tmp_path / "ds")
    ids = special_ids(tok, require_fim=True)
    assert (ids.bos, ids.eos, ids.fim_begin, ids.fim_hole, ids.fim_end, ids.eot) == \
        (32013, 32014, 32016, 32015, 32017, 32021)
    s = "def f():\n\treturn 1  \n"
    enc = tok(s)["input_ids"]
    assert enc[0] == 32013 and tok.decode(enc, skip_special_tokens=True) == s
    assert tok.eos_token_id == 32021 and tok.pad_token_id == 32014 and tok.model_max_length == 16384


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(UserError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(UserError, match="cannot read"):
        load_tokenizer(tmp_path)


def test_training_input_errors(tmp_path):
    with pytest.raises(UserError, match="vocab-size"):
        train_tokenizer(["abc"], vocab_size=100)
    with pytest.raises(UserError, match="no such file"):
        train_tokenizer([tmp_path / "missing"], vocab_size=300)
    with pytest.raises(UserError, match="no text"):
        train_tokenizer([], vocab_size=300)


def test_iter_texts_skips_binary_and_caps_bytes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("print('é')\n" * 10)
    (src / "b.bin").write_bytes(b"\x00\x01binary")
    (src / "c.txt").write_bytes(b"\xff\xfe not utf8")
    shard = tmp_path / "d.jsonl"
    shard.write_text(json.dumps({"text": "from jsonl"}) + "\nbroken\n")
    with pytest.raises(UserError, match="1 of 2 records are not valid"):    # over the default 1% of bad lines
        list(iter_texts([src, shard]))
    assert list(iter_texts([src, shard], max_bad_fraction=0.5)) == ["print('é')\n" * 10, "from jsonl"]
    capped = "".join(iter_texts([src, shard], max_bytes=25, max_bad_fraction=0.5))
    assert len(capped.encode()) <= 25 and capped.startswith("print('é')")


def test_cli_train(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, doc in enumerate(_corpus(60, seed=1)):
        (src / f"f{i}.py").write_text(doc)
    (src / "blob.bin").write_bytes(bytes(range(256)))
    out = tmp_path / "tok"
    cmd = [sys.executable, "-m", "dscoder.cli", "tokenizer", "train", "--input", str(src), "--out", str(out),
           "--vocab-size", "300"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "vocab 300 learned + 9 special = 309 tokens" in r.stdout
    assert len(load_tokenizer(out)) == 309
    bad = subprocess.run(cmd[:6] + [str(tmp_path / "missing"), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "o2").exists()


def test_path_list_with_a_typo_is_an_error_not_text(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(UserError, match="no such file"):
        train_tokenizer([str(tmp_path / "a.py"), str(tmp_path / "typo")], vocab_size=300)
