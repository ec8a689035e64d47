"""Speculative decoding with prompt-lookup drafts (`infer/speculative.py`): the drafter, greedy output equal to
plain greedy (both model families, padded batches, int8, stops, streaming), the sampled distribution equal to the
model's exact one (chi-square), and the cache rollback it relies on."""
import math
from collections import Counter

import pytest
import torch

from dscoder.errors import UserError
from dscoder.infer.engine import Engine
from dscoder.infer.speculative import NgramDrafter, accept_greedy, next_draft_length
from dscoder.models.hf import build_model
from dscoder.models.presets import get_preset
from dscoder.models.quant import quantize_int8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: a second torch thread only adds synchronisation (6-9x slower on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def successor_model(arch: str, vocab: int = 8, beta: float = 0.045) -> torch.nn.Module:
    """A tiny model that mostly predicts token t+1 after t: lm_head rows are the embeddings rolled by one, and the
    attention / MLP outputs are scaled down so the residual stream is mostly the current token's embedding.
    With beta 0.045 the successor gets p ~ 0.66-0.73, so drafts from a counting prompt are often, not always,
    accepted, and every other token keeps some probability."""
    torch.manual_seed(0)
    small = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, max_position_embeddings=128)
    cfg = (get_preset("tiny", intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, **small)
           if arch == "llama" else get_preset("tiny-moe", intermediate_size=96, moe_intermediate_size=32, **small))
    model = build_model(cfg).eval()
    with torch.no_grad():
        e = torch.randn(vocab, 64)
        model.model.embed_tokens.weight.copy_(e)
        model.lm_head.weight.copy_(beta * e.roll(1, 0))
        for name, mod in model.named_modules():
            if name.endswith(("o_proj", "down_proj")):
                mod.weight.mul_(0.05)
    return model


def random_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    # initializer_range 0.2 gives peaked logits, so fp32 round-off between 1-token and k-token forwards cannot
    # flip an argmax
    small = dict(vocab_size=101, hidden_size=64, num_hidden_layers=2, max_position_embeddings=96,
                 initializer_range=0.2)
    cfg = (get_preset("tiny", intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, **small)
           if arch == "llama" else get_preset("tiny-moe", intermediate_size=96, moe_intermediate_size=32, **small))
    return build_model(cfg).eval()


def count_forwards(model) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ------------------------------------------------------------------------------------------ drafter and rule
def test_ngram_drafter_prefers_the_longest_most_recent_match():
    d = NgramDrafter([1, 2, 3, 9, 2, 3, 7, 8, 5, 2, 3])
    assert d.draft(3) == [7, 8, 5]                  # "2 3" last seen before 7 (the 3-gram "5 2 3" never occurred)
    d.extend([1, 2, 3])
    assert d.draft(2) == [9, 2]                     # now the 3-gram "1 2 3" matches: it was followed by 9
    assert d.draft(0) == []
    assert NgramDrafter([4, 5, 6]).draft(4) == []   # no earlier occurrence; the suffix never matches itself
    assert NgramDrafter([7, 1, 2, 7]).draft(3) == []                    # one-token matches do not draft ...
    assert NgramDrafter([7, 1, 2, 7], min_ngram=1).draft(3) == [1, 2, 7]  # ... unless asked
    assert NgramDrafter([4, 4, 4], min_ngram=1).draft(4) == [4, 4, 4, 4]  # a match next to the newest token ...
    assert NgramDrafter([5, 1, 2, 1, 2]).draft(5) == [1, 2, 1, 2, 1]      # ... repeats its period
    assert NgramDrafter([3, 1, 2, 3, 1, 2]).draft(7) == [3, 1, 2, 3, 1, 2, 3]


def test_accept_greedy_keeps_the_draft_up_to_the_first_mismatch():
    assert accept_greedy([5, 6, 7, 8], [5, 6, 7]) == [5, 6, 7, 8]    # all accepted + the bonus token
    assert accept_greedy([5, 9, 7, 8], [5, 6, 7]) == [5, 9]          # the argmax replaces the first miss
    assert accept_greedy([4], []) == [4]


def test_draft_length_doubles_on_full_acceptance_and_falls_to_what_was_accepted():
    assert next_draft_length(4, 4, 4, 16) == 8          # all kept: double ...
    assert next_draft_length(8, 8, 8, 16) == 16
    assert next_draft_length(16, 16, 16, 16) == 16      # ... up to the cap
    assert next_draft_length(16, 16, 0, 16) == 1        # first token wrong: one token next time
    assert next_draft_length(16, 16, 3, 16) == 7        # 2a + 1
    assert next_draft_length(4, 4, 3, 16) == 3          # at least one below what it was
    assert next_draft_length(1, 1, 0, 16) == 1
    assert next_draft_length(6, 0, 0, 16) == 6          # no draft: unchanged
    assert next_draft_length(8, 3, 3, 16) == 16         # a short draft (the run's end) fully kept still grows


def test_bad_options():
    model = random_model("llama")
    with pytest.raises(UserError, match="unknown speculation method 'medusa'; use one of: none, ngram"):
        Engine(model, speculate="medusa")
    with pytest.raises(UserError, match="draft_tokens must be an integer >= 1"):
        Engine(model, speculate="ngram", draft_tokens=0)
    assert Engine(model, speculate="none").speculate is None


# ------------------------------------------------------------------------------------------ greedy: identical
@pytest.mark.parametrize("arch", ["llama", "v2"])
def test_greedy_is_token_identical_and_uses_fewer_forwards(arch):
    model = successor_model(arch)
    calls = count_forwards(model)
    prompts = [[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2], [5, 6, 7], [3, 4, 5, 6, 7, 0, 1, 3, 4]]   # left-padded batch
    for batch in (prompts, prompts[:1]):
        plain = Engine(model).generate(batch, max_new_tokens=24)
        n_plain, calls[0] = calls[0], 0
        spec = Engine(model, speculate="ngram").generate(batch, max_new_tokens=24)
        n_spec, calls[0] = calls[0], 0
        assert [o.tokens for o in spec] == [o.tokens for o in plain]
        assert all(len(o.tokens) == 24 and o.finish_reason == "length" for o in spec)
        # one forward per token against up to 9 per verification once drafts match (the short row has no draft
        # for its first few tokens, and the batch keeps the fewest)
        assert n_plain == 24 and n_spec <= 12, (n_plain, n_spec)


@pytest.mark.parametrize("arch", ["llama", "v2"])
def test_greedy_identical_on_a_random_model_with_stops_and_streaming(arch):
    model = random_model(arch)
    prompts = [[5, 17, 3, 88, 41, 9, 60, 5, 17, 3], [7, 2], [31, 44, 12, 90, 31, 44]]
    plain = Engine(model).generate(prompts, max_new_tokens=30)
    spec = Engine(model, speculate="ngram", draft_tokens=3).generate(prompts, max_new_tokens=30)
    assert [o.tokens for o in spec] == [o.tokens for o in plain]
    # a stop id in the middle of row 0's output: the same cut, the same finish reason
    stop = plain[0].tokens[7]
    a = Engine(model).generate(prompts, max_new_tokens=30, stop_ids=[stop])
    b = Engine(model, speculate="ngram").generate(prompts, max_new_tokens=30, stop_ids=[stop])
    assert [(o.tokens, o.finish_reason) for o in b] == [(o.tokens, o.finish_reason) for o in a]
    assert b[0].finish_reason == "stop" and len(b[0].tokens) <= 7
    stream = Engine(model, speculate="ngram").generate_stream(prompts[0], max_new_tokens=30)
    assert list(stream) == plain[0].tokens


def test_greedy_identical_with_int8_weights():
    model = quantize_int8(successor_model("llama", vocab=32, beta=0.02))
    prompt = [[*range(32), 0, 1, 2]]
    plain = Engine(model).generate(prompt, max_new_tokens=20)
    spec = Engine(model, speculate="ngram").generate(prompt, max_new_tokens=20)
    assert spec[0].tokens == plain[0].tokens


# ------------------------------------------------------------------------------------------ sampling: exact
def exact_joint(model, prompt: list[int], n: int, temperature: float) -> dict[tuple, float]:
    """P(t_1..t_n | prompt) for every continuation, from full forwards (no cache, no speculation)."""
    V = model.config.vocab_size
    probs = {(): 1.0}
    with torch.no_grad():
        for _ in range(n):
            prefixes = list(probs)
            logits = model(torch.tensor([prompt + list(p) for p in prefixes]))[:, -1]
            nxt = torch.softmax(logits.double() / temperature, dim=-1)
            probs = {(*p, v): probs[p] * float(nxt[i, v]) for i, p in enumerate(prefixes) for v in range(V)}
    return probs


def chi_square_check(counts: Counter, joint: dict[tuple, float], n: int) -> tuple[float, float]:
    """(statistic, critical value at p = 1e-3) over the cells with expected count >= 5, the rest pooled."""
    big = {c: p for c, p in joint.items() if p * n >= 5}
    cells = [(counts.get(c, 0), p * n) for c, p in big.items()]
    rest = n - sum(o for o, _ in cells)
    cells.append((rest, n * (1 - sum(big.values()))))
    stat = sum((o - e) ** 2 / e for o, e in cells if e > 0)
    df = len(cells) - 1
    z = 3.0902                                      # the normal's 0.999 quantile; Wilson-Hilferty for chi2(df)
    crit = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat, crit


@pytest.mark.parametrize("arch,batch", [("llama", 1), ("v2", 25)])
def test_sampled_continuations_have_the_models_exact_distribution(arch, batch):
    """1000 seeded 4-token samples (4096 possible continuations, most of the mass on a few dozen): with batch 1
    a verification accepts up to 3 tokens; with batch 25 the rows' acceptances differ and the batch keeps the
    fewest. Always accepting the draft, or sampling a rejected position from p instead of the residual, puts
    far more mass on the counting continuation and fails the chi-square test."""
    model = successor_model(arch)
    prompt, n_tok, temperature, n = [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2], 4, 1.0, 1000
    joint = exact_joint(model, prompt, n_tok, temperature)
    engine = Engine(model, speculate="ngram")
    calls = count_forwards(model)
    samples = Counter()
    for seed in range(n // batch):
        for o in engine.generate([prompt] * batch, max_new_tokens=n_tok, temperature=temperature, seed=seed):
            samples[tuple(o.tokens)] += 1
    assert sum(samples.values()) == n
    stat, crit = chi_square_check(samples, joint, n)
    assert stat < crit, (stat, crit)
    if batch == 1:   # speculation did work: fewer forwards than one per token
        assert calls[0] < 0.8 * n * n_tok, calls[0]


def test_speculative_sampling_is_reproducible_with_a_seed():
    model = successor_model("llama")
    engine = Engine(model, speculate="ngram")
    run = [engine.generate([[0, 1, 2, 3, 4, 5, 6, 7, 0, 1]], max_new_tokens=12, temperature=0.8, top_k=5,
                           top_p=0.9, seed=7)[0].tokens for _ in range(2)]
    assert run[0] == run[1] and len(run[0]) == 12


# ------------------------------------------------------------------------------------------ cache rollback
@pytest.mark.parametrize("arch", ["llama", "v2"])
def test_rewound_cache_gives_the_logits_of_a_fresh_one(arch):
    model = random_model(arch)
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model.make_cache(2, 32)
        model(ids[:, :8], cache=cache)
        model(torch.randint(0, 101, (2, 3)), cache=cache)     # three draft tokens, all rejected
        cache.rewind(8)
        got = model(ids[:, 8:], cache=cache)
        want = model(ids)[:, 8:]
    assert cache.length == 12
    assert torch.allclose(got, want, atol=1e-4)
    with pytest.raises(ValueError, match="cannot rewind a cache of 12 slots to 13"):
        cache.rewind(13)
