"""The v1 and V2 chat layouts written out in plain Python, straight from the DeepSeek-Coder and -V2
READMEs: the oracle the
package's Jinja templates are checked against. Test code only; the package renders with the Jinja templates."""
from dscoder.tokenizer.chat import V1_DEFAULT_SYSTEM, validate_messages
from dscoder.tokenizer.special import BOS, EOS, EOT


def render_v1(messages, add_generation_prompt=True) -> str:
    msgs = validate_messages(messages)
    parts = [BOS] + ([] if msgs[0]["role"] == "system" else [V1_DEFAULT_SYSTEM])
    for m in msgs:
        if m["role"] == "system":
            parts.append(m["content"])
        elif m["role"] == "user":
            parts.append(f"### Instruction:\n{m['content']}\n")
        else:
            parts.append(f"### Response:\n{m['content']}\n{EOT}\n")
    return "".join(parts) + ("### Response:" if add_generation_prompt else "")


def render_v2(messages, add_generation_prompt=True) -> str:
    msgs = validate_messages(messages)
    parts = [BOS]
    for m in msgs:
        if m["role"] == "system":
            parts.append(f"{m['content']}\n\n")
        elif m["role"] == "user":
            parts.append(f"User: {m['content']}\n\n")
        else:
            parts.append(f"Assistant: {m['content']}{EOS}")
    return "".join(parts) + ("Assistant:" if add_generation_prompt else "")


RENDER = {"v1": render_v1, "v2": render_v2}
