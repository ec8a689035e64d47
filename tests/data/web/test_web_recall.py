"""The recall iterations (DeepSeekMath §2.1): domain marking, automatic URL annotation, the seed growing, and the
iteration-2 classifier recalling held-out pages of the code domain the first one missed."""
import numpy as np
import pytest

from dscoder.data.web.classify import (FastTextParams, bpe_tokenizer, scores, train, word_tokenize,
                                       write_training_file)
from dscoder.data.web.default_corpus import CODE_GROUPS
from dscoder.data.web.pages import plan_inputs, read_pages
from dscoder.data.web.recall import RecallConfig, annotate, related_domains, run_recall
from dscoder.errors import UserError

SMALL = FastTextParams(buckets=200_000)     # DeepSeekMath's settings, fewer n-gram buckets (200 MB, not 2 GB)


def _pages(path):
    (unit,) = plan_inputs([path], "--pool")
    return read_pages(unit)[0]


def test_domains_over_the_threshold_are_marked_and_their_recalled_prefixes_annotated():
    urls = ["https://m.test/questions/1", "https://m.test/questions/2", "https://m.test/users/3",
            "https://m.test/users/4", "https://m.test/users/5", "https://m.test/users/6",
            "https://n.test/a/1", "https://n.test/a/2"]
    domains = [u.split("/")[2] for u in urls]
    recalled = np.array([1, 0, 0, 0, 0, 0, 0, 0], bool)
    assert related_domains(domains, recalled, 0.1) == {"m.test": (6, 1)}      # 1/6 > 10%; n.test 0/2
    assert related_domains(domains, recalled, 0.2) == {}                        # 1/6 is not above 20%
    assert annotate(urls, domains, recalled, {"m.test"}, 0.1) == {("m.test", "/questions/"): (2, 1)}


def test_training_file_interleaves_classes_in_proportion(tmp_path):
    path = tmp_path / "t.txt"
    write_training_file(path, ["a"] * 4, ["b"] * 2)
    assert [line.split()[0][9:] for line in path.read_text().splitlines()] == \
        ["pos", "neg", "pos", "pos", "neg", "pos"]


def test_fasttext_is_reproducible_and_separates_code_from_prose(tmp_path, web_corpus):
    seed, pool = _pages(web_corpus["seed"]), _pages(web_corpus["pool"])
    prose = [p for p in pool if web_corpus["labels"][p.url] == "news"][:120]
    path = tmp_path / "t.txt"
    write_training_file(path, word_tokenize([p.text for p in seed]), word_tokenize([p.text for p in prose]))
    test = word_tokenize([p.text for p in pool[:300]])
    a, b = scores(train(path, SMALL), test), scores(train(path, SMALL), test)
    assert np.array_equal(a, b)
    labels = np.array([web_corpus["labels"][p.url] == "python" for p in pool[:300]])
    assert (a[labels] >= 0.5).all() and (a[~labels & np.array([web_corpus["labels"][p.url] in
                                                                ("news", "recipes", "travel") for p in pool[:300]])]
                                          < 0.5).all()


def test_params_are_checked():
    with pytest.raises(UserError):
        FastTextParams(dim=0)
    assert (FastTextParams().dim, FastTextParams().lr, FastTextParams().word_ngrams, FastTextParams().min_count,
            FastTextParams().epoch) == (256, 0.1, 3, 3, 3)         # DeepSeekMath §2.1


def _recall_by_group(s: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    return {g: float((s[groups == g] >= 0.5).mean()) for g in sorted(set(groups))}


@pytest.mark.parametrize("tokens", ["words", "bpe"])
def test_iteration_two_recovers_the_code_domain_the_first_classifier_missed(tmp_path, web_corpus, web_heldout,
                                                                            tokens):
    seed, pool, held = _pages(web_corpus["seed"]), _pages(web_corpus["pool"]), _pages(web_heldout["pool"])
    if tokens == "bpe":
        from dscoder.tokenizer.bpe import train_tokenizer

        train_tokenizer([p.text for p in seed + pool[:300]], 1000, tmp_path / "tok")
        tokenize = bpe_tokenizer(tmp_path / "tok")
    else:
        tokenize = word_tokenize
    res = run_recall(tokenize([p.text for p in seed]), tokenize([p.text for p in pool]), [p.url for p in pool],
                     [p.domain for p in pool], RecallConfig(iterations=3, fasttext=SMALL),
                     extra=tokenize([p.text for p in held]))
    it1, it2 = res.per_iteration[0], res.per_iteration[1]
    # iteration 1: the Rust domain is partly recalled, so it is marked, its code paths annotated, not its blog
    assert "rustlang.test" in it1["domains"] and 0.1 < it1["domains"]["rustlang.test"]["recalled"] / 100 < 0.8
    assert "rustlang.test/book/" in it1["annotated"] and "rustlang.test/blog/" not in it1["annotated"]
    assert it1["added_to_seed"] > 0 and it2["positives"] == it1["positives"] + it1["added_to_seed"]
    assert len(res.per_iteration) == 2 and it2["added_to_seed"] == 0          # nothing new: stops early
    # on held-out pages: iteration 1 misses Rust reference pages, iteration 2 recalls them; prose never
    groups = np.array([web_heldout["labels"][p.url] for p in held])
    r1, r2 = _recall_by_group(res.extra_scores[0], groups), _recall_by_group(res.extra_scores[1], groups)
    assert r1["rust-std"] < 0.7 and r2["rust-std"] >= 0.95 and r2["rust-book"] >= 0.95 and r2["python"] == 1.0
    for g in ("news", "recipes", "travel", "rust-blog"):
        assert r1[g] == r2[g] == 0.0
    # the pool: every code page selected, nothing else; Rust pages missed at first carry iteration 2
    code = np.array([web_corpus["labels"][p.url] in CODE_GROUPS for p in pool])
    assert np.array_equal(res.selected, code)
    assert set(res.iteration[code].tolist()) == {1, 2} and (res.iteration[~code] == 0).all()
