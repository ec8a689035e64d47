"""Instruct chat templates: DeepSeek-Coder v1 (v1 paper §3.7; DeepSeek-Coder's README) and DeepSeek-Coder-V2
(DeepSeek-Coder-V2's README).

The templates are Jinja strings (`V1_CHAT_TEMPLATE`, `V2_CHAT_TEMPLATE`). The tokenizer saves one as
`chat_template` in tokenizer_config.json, so `tokenizer.apply_chat_template(messages, add_generation_prompt=True)`
works in any Hugging Face tool, and dscoder renders chat prompts the same way (`infer.text.chat_ids`): one renderer.
A plain-Python rendering of both layouts lives in the tests, as an independent oracle.

    tok.apply_chat_template([{"role": "user", "content": "write quicksort"}], tokenize=False,
                            add_generation_prompt=True)
    # '<｜begin▁of▁sentence｜>You are an AI programming assistant, ...refuse to answer\n### Instruction:\n'
    # 'write quicksort\n### Response:'

v1 turns end with `<|EOT|>`; V2 assistant turns end with EOS and the prompt ends in `Assistant:` with NO trailing
space (a trailing space makes V2 answer in Chinese, DeepSeek-Coder-V2 issue #12).
"""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import UserError
from .special import EOT

# The latest HF tokenizer_config spelling: "Deepseek", and no final period (the README/finetune script differ).
V1_DEFAULT_SYSTEM = (
    "You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek Company, and you "
    "only answer questions related to computer science. For politically sensitive questions, security and privacy "
    "issues, and other non-computer science questions, you will refuse to answer\n")

ROLES = ("system", "user", "assistant")

# Whitespace control on every tag (`{%-`, `-%}`) so the output does not depend on the Jinja env's trim settings.
# The Jinja string literals use Jinja's own `\n` escapes, hence the doubled backslashes here.
_VALIDATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unknown chat role: ' + m['role']) -}}"
    "{%- elif m['role'] == 'system' and not loop.first -%}"
    "{{- raise_exception('a system message may only come first') -}}"
    "{%- endif -%}"
    "{%- endfor -%}")

V1_CHAT_TEMPLATE = _VALIDATE + (
    "{{- bos_token -}}"
    "{%- if not (messages and messages[0]['role'] == 'system') -%}"
    "{{- '" + V1_DEFAULT_SYSTEM.replace("\n", "\\n") + "' -}}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{- m['content'] -}}"
    "{%- elif m['role'] == 'user' -%}{{- '### Instruction:\\n' + m['content'] + '\\n' -}}"
    "{%- else -%}{{- '### Response:\\n' + m['content'] + '\\n" + EOT + "\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Response:' -}}{%- endif -%}")

V2_CHAT_TEMPLATE = _VALIDATE + (
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{- m['content'] + '\\n\\n' -}}"
    "{%- elif m['role'] == 'user' -%}{{- 'User: ' + m['content'] + '\\n\\n' -}}"
    "{%- else -%}{{- 'Assistant: ' + m['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}")

CHAT_TEMPLATES = {"v1": V1_CHAT_TEMPLATE, "v2": V2_CHAT_TEMPLATE}


def validate_messages(messages: Sequence[Any]) -> list[dict[str, str]]:
    """Check a conversation: a non-empty list of {"role", "content"} dicts, roles system/user/assistant, string
    contents, a system message only first. Returns it as a list of plain dicts; bad input -> UserError."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise UserError("chat messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"chat message {i} must be an object with 'role' and 'content', got {m!r:.80}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise UserError(f"chat message {i}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise UserError(f"chat message {i}: content must be a string, got {type(content).__name__}")
        if role == "system" and i != 0:
            raise UserError(f"chat message {i}: a system message may only come first")
        out.append({"role": role, "content": content})
    return out
