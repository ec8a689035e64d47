"""Repo-level MinHash near-dedup (paper §2.3): signatures, LSH candidates, clusters, deterministic keep."""
import random

import numpy as np
import pytest

from dscoder.data.minhash import (MinHashParams, candidate_pairs, clusters, near_duplicates, shingle_hashes, shingles,
                                  signature, signature_matrix)
from dscoder.errors import UserError


def _code(seed: int, lines: int = 120) -> str:
    rng = random.Random(seed)
    words = [f"name{rng.randrange(10_000)}" for _ in range(400)]
    return "\n".join(f"    {rng.choice(words)} = {rng.choice(words)}({rng.choice(words)}, {i})" for i in range(lines))


def _edit(text: str, every: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    return "\n".join(f"changed{rng.randrange(99)} = 0" if i % every == 0 else line
                     for i, line in enumerate(text.splitlines()))


def test_shingles_are_word_ngrams():
    assert shingles("a b  c\nd e f", 5) == {"a b c d e", "b c d e f"}
    assert shingles("short text", 5) == {"short text"}


def test_shingle_hashes_stand_for_the_same_shingle_set():
    text = _code(3) + "\n" + _code(3)                          # repeated shingles hash alike
    h = shingle_hashes(text)
    assert len(set(h.tolist())) == len(shingles(text)) and h.dtype.name == "uint64"
    assert len(shingle_hashes("two words")) == 1
    assert (signature(text, MinHashParams()) == signature_matrix(["x", text], MinHashParams())[1]).all()


def test_estimated_jaccard_tracks_true_jaccard():
    p = MinHashParams()
    a, b = _code(0), _edit(_code(0), 10)
    sa, sb = shingles(a), shingles(b)
    true = len(sa & sb) / len(sa | sb)
    sigs = signature_matrix([a, b], p)
    est = float(np.mean(sigs[0] == sigs[1]))
    assert abs(est - true) < 0.08, (est, true)


def test_near_duplicate_dropped_original_kept_unrelated_untouched():
    p = MinHashParams()
    orig = _code(0)
    texts = {("b_copy", "b_copy:0"): _edit(orig, 25),          # a few lines changed
             ("a_orig", "a_orig:0"): orig,
             ("c_other", "c_other:0"): _code(7),
             ("d_far", "d_far:0"): _edit(orig, 2)}               # half the lines changed: not a duplicate
    keys = list(texts)
    dup = near_duplicates(keys, signature_matrix([texts[k] for k in keys], p), p)
    assert dup == {("b_copy", "b_copy:0"): ("a_orig", "a_orig:0")}
    # the decision depends on keys, not on the order signatures arrive in
    rev = keys[::-1]
    assert near_duplicates(rev, signature_matrix([texts[k] for k in rev], p), p) == dup


def test_lsh_candidates_and_union_find_clusters():
    p = MinHashParams(num_perm=8, bands=4, rows=2)
    sigs = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 0, 0, 0, 0, 0, 0], [9, 9, 9, 9, 9, 9, 7, 8],
                     [5, 5, 5, 5, 5, 5, 5, 5]], dtype=np.uint32)
    assert candidate_pairs(sigs, p) == {(0, 1), (0, 2)}
    assert clusters(4, [(0, 1), (2, 1)]) == [0, 0, 0, 3]


@pytest.mark.parametrize("kw", [dict(bands=10), dict(threshold=0.0), dict(ngram=0)])
def test_bad_parameters_are_user_errors(kw):
    with pytest.raises(UserError):
        MinHashParams(**kw)


def test_word_hashes_split_like_str_split_across_blocks_and_unicode():
    from dscoder.data.minhash import _BLOCK, _utf8, word_hashes
    rng = random.Random(5)
    vocab = ["alpha", "β", "x1", "\x00a", "a", "中文", "", "(", "a\x00"]
    seps = [" ", "\n", "\t\t", "\x1c", "\u00a0", "\u3000", "\x85", "\u2028 "]
    long_text = "".join(rng.choice(vocab[:-3]) + rng.choice(seps) for _ in range(3 * _BLOCK // 3))
    texts = [long_text, "w" * (3 * _BLOCK + 7) + " tail w", "no_newline " * (_BLOCK // 5), "", "  \n ",
             "lone \ud800 surrogate", "".join(rng.choice(vocab) + rng.choice(seps) for _ in range(500))]
    for text in texts:
        h, starts = word_hashes(_utf8(text))
        words = text.split()
        assert len(h) == len(words) == len(starts)
        by_word: dict[str, int] = {}
        for w, x in zip(words, h.tolist()):
            assert by_word.setdefault(w, x) == x                   # the same word hashes alike anywhere
        assert len(set(by_word.values())) == len(by_word)          # distinct words ("\0a" vs "a") differ


def test_unicode_separators_table_is_complete():
    import sys
    from dscoder.data.minhash import _UNICODE_WS
    assert not any(chr(c).isspace() for c in range(0x3001, sys.maxunicode + 1))
    assert all(_UNICODE_WS.fullmatch(chr(c)) for c in range(128, 0x3001) if chr(c).isspace())


def test_batched_shingle_hashes_equal_one_text_at_a_time():
    from dscoder.data.minhash import shingle_hash_sets
    texts = [_code(1), "", "two words", "a b c d e", "a b c d e f", _code(2, 3), "x\u00a0y z w v u"]
    flat, offsets = shingle_hash_sets(texts)
    assert offsets.tolist()[0] == 0 and offsets.tolist()[-1] == len(flat)
    for i, t in enumerate(texts):
        mine = flat[offsets[i]:offsets[i + 1]]
        assert (mine == shingle_hashes(t)).all()
        assert len(set(mine.tolist())) == len(shingles(t))


def test_minimum_of_file_signatures_is_the_signature_of_their_union():
    """How `data build` signs a sample: the element-wise minimum over its files' signatures. With 1-word
    shingles no shingle straddles two files, so it must equal the signature of the concatenation exactly."""
    p = MinHashParams(ngram=1, num_perm=64, bands=16, rows=4)
    files = ["def f(x):\n    return x\n", "import os\nprint(os.sep)\n", "x = f(1)\n"]
    per_file = signature_matrix(files, p)                                   # (3, 64)
    whole = signature_matrix(["".join(files)], p)[0]
    assert (per_file.min(axis=0) == whole).all()
    assert not (per_file[0] == whole).all()
