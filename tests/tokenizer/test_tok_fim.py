"""FIM transforms: character-level cuts, PSM/SPM layouts at the id level, rates and determinism."""
import random

import pytest

from dscoder.errors import UserError
from dscoder.tokenizer.fim import document_ids, fim_split, fim_token_ids, psm_prompt
from dscoder.tokenizer.special import FIM_HOLE, SpecialIds

# a byte-level stand-in for a tokenizer: ids 0..255 are bytes, specials live above them
IDS = SpecialIds(bos=300, eos=301, pad=301, fim_begin=302, fim_hole=303, fim_end=304, eot=305)
SPECIALS = {300, 301, 302, 303, 304, 305}


def enc(s):
    return list(s.encode("utf-8"))


def dec(ids):
    return bytes(ids).decode("utf-8")   # raises if a cut fell inside a multi-byte character


def _parse_psm(ids):
    assert ids[0] == IDS.fim_begin and ids[-1] == IDS.eos
    hole, end = ids.index(IDS.fim_hole), ids.index(IDS.fim_end)
    return dec(ids[1:hole]), dec(ids[end + 1:-1]), dec(ids[hole + 1:end])   # prefix, middle, suffix


def test_split_never_cuts_inside_a_character_and_reassembles():
    text = "def f():\n    return '日本語 🎉🐍 é'  # ünïcödé\r\n"
    rng = random.Random(1)
    for _ in range(300):
        pre, mid, suf = fim_split(text, rng)
        assert pre + mid + suf == text
        for part in (pre, mid, suf):
            assert part.encode("utf-8").decode("utf-8") == part   # whole characters only
    assert any(m == "" for m in (fim_split(text, random.Random(s))[1] for s in range(500)))   # empty middle occurs


def test_psm_and_spm_layouts():
    psm = fim_token_ids("ab", "M", "yz", enc, IDS, "psm")
    assert psm == [302, *b"ab", 303, *b"yz", 304, *b"M", 301]
    spm = fim_token_ids("ab", "M", "yz", enc, IDS, "spm")
    assert spm == [302, 303, *b"yz", 304, *b"ab", *b"M", 301]
    assert fim_token_ids("", "", "", enc, IDS) == [302, 303, 304, 301]
    with pytest.raises(UserError, match="mode"):
        fim_token_ids("a", "b", "c", enc, IDS, "msp")


def test_literal_sentinel_text_is_not_a_sentinel():
    ids = fim_token_ids(f"x = '{FIM_HOLE}'", "", "", enc, IDS)
    assert ids.count(IDS.fim_hole) == 1        # only the one we inserted; the literal stayed bytes
    assert _parse_psm(ids)[0] == f"x = '{FIM_HOLE}'"


def test_document_ids_rates_empty_and_determinism():
    text = "for i in range(10):\n    print(i)\n"
    assert document_ids(text, enc, IDS, random.Random(0), fim_rate=0.0) == [*enc(text), 301]
    always = document_ids(text, enc, IDS, random.Random(0), fim_rate=1.0)
    pre, mid, suf = _parse_psm(always)
    assert pre + mid + suf == text and IDS.bos not in always
    assert document_ids(text, enc, IDS, random.Random(0), fim_rate=1.0, spm_rate=1.0)[:2] == [302, 303]
    assert document_ids("", enc, IDS, random.Random(0), fim_rate=1.0) == [301]
    runs = [[document_ids(text, enc, IDS, rng) for _ in range(50)] for rng in (random.Random(7), random.Random(7))]
    assert runs[0] == runs[1]
    assert runs[0] != [document_ids(text, enc, IDS, random.Random(8)) for _ in range(50)]
    with pytest.raises(UserError, match="rates"):
        document_ids(text, enc, IDS, random.Random(0), fim_rate=1.5)


def test_observed_psm_rate_is_about_half():
    rng = random.Random(123)
    n = 4000
    fimmed = sum(document_ids(f"doc {i}\n", enc, IDS, rng)[0] == IDS.fim_begin for i in range(n))
    assert abs(fimmed / n - 0.5) < 0.03      # 0.03 is ~4 standard deviations at n=4000


def test_fim_needs_sentinels():
    no_fim = SpecialIds(bos=1, eos=2, pad=2, fim_begin=None, fim_hole=None, fim_end=None, eot=None)
    with pytest.raises(UserError, match="FIM"):
        document_ids("abc", enc, no_fim, random.Random(0), fim_rate=1.0)
    assert document_ids("abc", enc, no_fim, random.Random(0), fim_rate=0.0) == [*b"abc", 2]


def test_psm_prompt_string():
    assert psm_prompt("a(", ")\n") == "<｜fim▁begin｜>a(<｜fim▁hole｜>)\n<｜fim▁end｜>"
