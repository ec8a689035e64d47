"""THE one table of DeepSeek-Coder special tokens (v1 paper §3.1.2 FIM sentinels, §3.7 instruct; the released
tokenizer.json).

Every other module imports the strings from here; nothing else spells them. The exact characters matter:
`｜` is U+FF5C FULLWIDTH VERTICAL LINE and `▁` is U+2581 LOWER ONE EIGHTH BLOCK, while `<|EOT|>`, `<|User|>` and
`<|Assistant|>` use the ASCII `|`. A look-alike byte silently breaks FIM (DeepSeek-Coder-V2 issue #27).

    from dscoder.tokenizer.special import special_ids, BOS
    ids = special_ids(tokenizer)            # works for our tokenizers and DeepSeek's released one
    ids.bos, ids.eos, ids.fim_begin ...
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UserError

BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"       # <｜begin▁of▁sentence｜>
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"         # <｜end▁of▁sentence｜>
FIM_HOLE = "<\uff5cfim\u2581hole\uff5c>"                 # <｜fim▁hole｜>
FIM_BEGIN = "<\uff5cfim\u2581begin\uff5c>"               # <｜fim▁begin｜>
FIM_END = "<\uff5cfim\u2581end\uff5c>"                   # <｜fim▁end｜>
PAD = "<pad>"
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
EOT = "<|EOT|>"

# In the order DeepSeek-Coder v1 numbers them: the released tokenizers place these at 32013..32021, right after
# the 32,000 learned merges and 13 added single characters (the released tokenizer.json). Our tokenizers keep this
# order and
# put them directly after the learned vocab, at vocab_size .. vocab_size + 8.
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, FIM_HOLE, FIM_BEGIN, FIM_END, PAD, USER, ASSISTANT, EOT)

# The released v1 ids (deepseek-coder-{1.3b,6.7b,33b}-{base,instruct}); documentation and test fixtures only --
# always look ids up in the loaded tokenizer with `special_ids`.
DEEPSEEK_V1_IDS: dict[str, int] = {tok: 32013 + i for i, tok in enumerate(SPECIAL_TOKENS)}


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens in one tokenizer. Optional ones are None when the tokenizer lacks them.

    `pad` is the tokenizer's pad token if it names one, else EOS: DeepSeek pads with EOS (pad_token_id 32014),
    not with the `<pad>` token."""

    bos: int
    eos: int
    pad: int
    fim_begin: int | None
    fim_hole: int | None
    fim_end: int | None
    eot: int | None

    @property
    def has_fim(self) -> bool:
        return None not in (self.fim_begin, self.fim_hole, self.fim_end)


def token_id(tokenizer: Any, token: str) -> int | None:
    """Id of `token` in a transformers tokenizer or a raw `tokenizers.Tokenizer`; None if it is not in the vocab.

    Looks the exact string up in the vocabulary (never `convert_tokens_to_ids`, which maps unknowns to UNK)."""
    if hasattr(tokenizer, "token_to_id"):                       # raw tokenizers.Tokenizer
        return tokenizer.token_to_id(token)
    if hasattr(tokenizer, "get_vocab"):
        return tokenizer.get_vocab().get(token)
    raise UserError(f"cannot look up special tokens in a {type(tokenizer).__name__}: expected a Hugging Face tokenizer")


def special_ids(tokenizer: Any, require_fim: bool = False) -> SpecialIds:
    """The special-token ids of `tokenizer` (ours or DeepSeek's released one).

    BOS and EOS are always required; the FIM sentinels are required when `require_fim` (pretraining with FIM);
    `<|EOT|>` is optional (base tokenizers of other families may lack it). Missing required ones -> UserError."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") and not hasattr(tokenizer, "token_to_id") \
        else None
    look = (lambda t: vocab.get(t)) if vocab is not None else (lambda t: token_id(tokenizer, t))
    found = {name: look(tok) for name, tok in
             (("bos", BOS), ("eos", EOS), ("fim_begin", FIM_BEGIN), ("fim_hole", FIM_HOLE), ("fim_end", FIM_END),
              ("eot", EOT))}
    required = ("bos", "eos") + (("fim_begin", "fim_hole", "fim_end") if require_fim else ())
    missing = [name for name in required if found[name] is None]
    if missing:
        names = {"bos": BOS, "eos": EOS, "fim_begin": FIM_BEGIN, "fim_hole": FIM_HOLE, "fim_end": FIM_END}
        raise UserError("tokenizer lacks the DeepSeek special token(s) " + ", ".join(names[m] for m in missing)
                        + "; train one with `dscoder tokenizer train` or use a DeepSeek-Coder tokenizer folder")
    pad = getattr(tokenizer, "pad_token_id", None)
    return SpecialIds(pad=found["eos"] if pad is None else int(pad), **found)
