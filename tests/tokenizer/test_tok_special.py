"""The special-token table: exact bytes, DeepSeek's order, lookup in a loaded tokenizer."""
import pytest
from tokenizers import Tokenizer, models

from dscoder.errors import UserError
from dscoder.tokenizer import special as sp


def test_exact_bytes_of_the_special_tokens():
    # fullwidth bar U+FF5C is EF BD 9C; lower one-eighth block U+2581 is E2 96 81 (the released tokenizer.json)
    assert sp.BOS.encode() == b"<\xef\xbd\x9cbegin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
    assert sp.FIM_HOLE.encode() == b"<\xef\xbd\x9cfim\xe2\x96\x81hole\xef\xbd\x9c>"
    assert sp.EOT == "<|EOT|>" and sp.EOT.isascii()
    assert sp.DEEPSEEK_V1_IDS[sp.BOS] == 32013 and sp.DEEPSEEK_V1_IDS[sp.EOS] == 32014
    assert sp.DEEPSEEK_V1_IDS[sp.FIM_HOLE] == 32015 and sp.DEEPSEEK_V1_IDS[sp.FIM_BEGIN] == 32016
    assert sp.DEEPSEEK_V1_IDS[sp.FIM_END] == 32017 and sp.DEEPSEEK_V1_IDS[sp.PAD] == 32018
    assert sp.DEEPSEEK_V1_IDS[sp.EOT] == 32021 and len(set(sp.SPECIAL_TOKENS)) == 9


def _raw(tokens):
    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    tok.add_special_tokens(list(tokens))
    return tok


def test_lookup_in_raw_tokenizer_and_optional_missing():
    ids = sp.special_ids(_raw([sp.BOS, sp.EOS]))
    assert (ids.bos, ids.eos, ids.pad) == (2, 3, 3)          # pad falls back to EOS, as DeepSeek pads
    assert ids.fim_begin is None and ids.eot is None and not ids.has_fim


def test_missing_required_tokens_raise():
    with pytest.raises(UserError, match="fim"):
        sp.special_ids(_raw([sp.BOS, sp.EOS]), require_fim=True)
    with pytest.raises(UserError, match="begin"):
        sp.special_ids(_raw([sp.EOS]))
    ids = sp.special_ids(_raw(sp.SPECIAL_TOKENS), require_fim=True)
    assert (ids.fim_hole, ids.fim_begin, ids.fim_end, ids.eot) == (4, 5, 6, 10)
