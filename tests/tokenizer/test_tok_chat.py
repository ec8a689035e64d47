"""Chat templates: the Jinja strings and the Python renderers agree; exact v1 / V2 layouts; validation."""
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dscoder.errors import UserError
from dscoder.tokenizer.chat import (V1_CHAT_TEMPLATE, V1_DEFAULT_SYSTEM, V2_CHAT_TEMPLATE, render_chat, render_v1,
                                    render_v2)
from dscoder.tokenizer.special import BOS, EOS

CONVS = [
    [{"role": "user", "content": "write quicksort"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "a\n\tb  "},
     {"role": "assistant", "content": "```py\nx = 1\n```"}, {"role": "user", "content": "日本語 🎉 {{ x }}"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": "ok"}],
]


def _jinja(template, messages, gen):
    def fail(msg):
        raise ValueError(msg)
    env = ImmutableSandboxedEnvironment()
    return env.from_string(template).render(messages=messages, add_generation_prompt=gen, bos_token=BOS,
                                            eos_token=EOS, raise_exception=fail)


def test_v1_exact_layout():
    got = render_v1([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                     {"role": "user", "content": "more"}])
    assert V1_DEFAULT_SYSTEM.startswith("You are an AI programming assistant, utilizing the Deepseek Coder model")
    assert V1_DEFAULT_SYSTEM.endswith("you will refuse to answer\n")
    assert got == (BOS + V1_DEFAULT_SYSTEM + "### Instruction:\nhi\n### Response:\nyo\n<|EOT|>\n"
                   "### Instruction:\nmore\n### Response:")
    sys_ = render_v1([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], False)
    assert sys_ == BOS + "S### Instruction:\nq\n"


def test_v2_exact_layout_no_trailing_space():
    got = render_v2([{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
                     {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}])
    assert got == BOS + "S\n\nUser: u1\n\nAssistant: a1" + EOS + "User: u2\n\nAssistant:"
    assert render_chat([{"role": "user", "content": "u"}], style="v2") == BOS + "User: u\n\nAssistant:"


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("gen", [True, False])
def test_jinja_equals_python(conv, gen):
    assert _jinja(V1_CHAT_TEMPLATE, conv, gen) == render_v1(conv, gen)
    assert _jinja(V2_CHAT_TEMPLATE, conv, gen) == render_v2(conv, gen)


@pytest.mark.parametrize("bad, what", [
    ([], "non-empty"), ("hello", "non-empty"), ([{"role": "bot", "content": "x"}], "role"),
    ([{"role": "user", "content": 3}], "string"), ([{"role": "user"}], "content"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "only come first"),
])
def test_validation(bad, what):
    with pytest.raises(UserError, match=what):
        render_chat(bad)
    with pytest.raises(UserError, match="style"):
        render_chat([{"role": "user", "content": "a"}], style="v3")


def test_jinja_rejects_bad_roles_too():
    with pytest.raises(ValueError, match="unknown chat role"):
        _jinja(V1_CHAT_TEMPLATE, [{"role": "bot", "content": "x"}], True)
    with pytest.raises(ValueError, match="only come first"):
        _jinja(V2_CHAT_TEMPLATE, [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}], True)
