"""Chat templates: the Jinja strings against a plain-Python oracle (exact v1 / V2 layouts), validation, and the one
prompt builder (`infer.text.chat_ids`) against transformers' AutoTokenizer.apply_chat_template."""
from pathlib import Path

import pytest
from chat_oracle import RENDER, render_v1, render_v2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoTokenizer

from dscoder.errors import UserError
from dscoder.infer.text import chat_ids, completion_ids, infill_ids, stop_ids
from dscoder.tokenizer.chat import CHAT_TEMPLATES, V1_CHAT_TEMPLATE, V1_DEFAULT_SYSTEM, V2_CHAT_TEMPLATE
from dscoder.tokenizer.special import BOS, EOS, FIM_HOLE, special_ids

SRC = Path(__file__).resolve().parents[2] / "src" / "dscoder"

CONVS = [
    [{"role": "user", "content": "write quicksort"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "a\n\tb  "},
     {"role": "assistant", "content": "```py\nx = 1\n```"}, {"role": "user", "content": "日本語 🎉 {{ x }}"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "<|EOT|>"}],
]


def _jinja(template, messages, gen):
    def fail(msg):
        raise ValueError(msg)
    env = ImmutableSandboxedEnvironment()
    return env.from_string(template).render(messages=messages, add_generation_prompt=gen, bos_token=BOS,
                                            eos_token=EOS, raise_exception=fail)


def test_v1_exact_layout():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "more"}]
    assert V1_DEFAULT_SYSTEM.startswith("You are an AI programming assistant, utilizing the Deepseek Coder model")
    assert V1_DEFAULT_SYSTEM.endswith("you will refuse to answer\n")
    want = (BOS + V1_DEFAULT_SYSTEM + "### Instruction:\nhi\n### Response:\nyo\n<|EOT|>\n"
            "### Instruction:\nmore\n### Response:")
    assert render_v1(msgs) == want == _jinja(V1_CHAT_TEMPLATE, msgs, True)
    sys_ = [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]
    assert _jinja(V1_CHAT_TEMPLATE, sys_, False) == BOS + "S### Instruction:\nq\n"


def test_v2_exact_layout_no_trailing_space():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}]
    want = BOS + "S\n\nUser: u1\n\nAssistant: a1" + EOS + "User: u2\n\nAssistant:"
    assert render_v2(msgs) == want == _jinja(V2_CHAT_TEMPLATE, msgs, True)


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("gen", [True, False])
def test_jinja_equals_oracle(conv, gen):
    assert _jinja(V1_CHAT_TEMPLATE, conv, gen) == render_v1(conv, gen)
    assert _jinja(V2_CHAT_TEMPLATE, conv, gen) == render_v2(conv, gen)


def test_jinja_rejects_bad_roles_too():
    with pytest.raises(ValueError, match="unknown chat role"):
        _jinja(V1_CHAT_TEMPLATE, [{"role": "bot", "content": "x"}], True)
    with pytest.raises(ValueError, match="only come first"):
        _jinja(V2_CHAT_TEMPLATE, [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}], True)


# ---------------------------------------------------------------- the prompt builder on a real tokenizer
@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    from dscoder.tokenizer.bpe import train_tokenizer
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer([p.read_text() for p in sorted((SRC / "tokenizer").glob("*.py"))], vocab_size=300, out_dir=out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    from dscoder.tokenizer.bpe import load_tokenizer
    return load_tokenizer(str(tok_dir))


@pytest.mark.parametrize("style", ["v1", "v2"])
@pytest.mark.parametrize("conv", CONVS)
def test_chat_ids_equal_autotokenizer_apply_chat_template(tok_dir, tok, style, conv):
    auto = AutoTokenizer.from_pretrained(str(tok_dir))
    want = auto.apply_chat_template(conv, chat_template=CHAT_TEMPLATES[style], tokenize=True,
                                    add_generation_prompt=True, return_dict=False)
    assert chat_ids(tok, conv, style) == chat_ids(auto, conv, style) == list(want)
    assert auto.decode(want) == RENDER[style](conv)          # and the text is the oracle's, BOS included once
    assert want[0] == special_ids(auto).bos and want.count(special_ids(auto).bos) == 1
    if style == "v1":  # the tokenizer's saved template is v1: no style means that one
        assert chat_ids(tok, conv) == list(auto.apply_chat_template(conv, tokenize=True, add_generation_prompt=True,
                                                                     return_dict=False))


def test_completion_and_infill_ids(tok):
    sp = special_ids(tok)
    code = "def f(x):\n    return x\n"
    assert completion_ids(tok, code) == [sp.bos, *tok.encode(code, add_special_tokens=False)]
    pre, suf = "def f(x):\n    ", f"\n    return '{FIM_HOLE}'\n"
    ids = infill_ids(tok, pre, suf)
    assert ids[:2] == [sp.bos, sp.fim_begin] and ids[-1] == sp.fim_end
    assert ids.count(sp.fim_hole) == 1  # the literal sentinel inside the suffix stays text
    assert tok.decode(ids) == f"{BOS}<｜fim▁begin｜>{pre}{FIM_HOLE}{suf}<｜fim▁end｜>"
    assert stop_ids(tok, "fim") == [sp.eos] and stop_ids(tok, "chat") == [sp.eot, sp.eos]
    assert stop_ids(tok, "chat", "v2") == [sp.eos]


@pytest.mark.parametrize("bad, what", [
    ([], "non-empty"), ("hello", "non-empty"), ([{"role": "bot", "content": "x"}], "role"),
    ([{"role": "user", "content": 3}], "string"), ([{"role": "user"}], "content"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "only come first"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "ends with a user message"),
])
def test_validation(tok, bad, what):
    with pytest.raises(UserError, match=what):
        chat_ids(tok, bad)


def test_bad_style_and_empty_prompts(tok):
    with pytest.raises(UserError, match="style"):
        chat_ids(tok, [{"role": "user", "content": "a"}], style="v3")
    with pytest.raises(UserError, match="empty prompt"):
        completion_ids(tok, "")
    with pytest.raises(UserError, match="prefix or a suffix"):
        infill_ids(tok, "", "")
