"""Engine: batched, cached, left-padded decoding equals the naive loop of full forwards; stops; sampling; limits."""
import pytest
import torch

from dscoder.errors import UserError
from dscoder.infer.engine import ContextOverflow, Engine
from dscoder.models.presets import get_preset

PROMPTS = [[5, 17, 3, 88, 41, 9, 60], [7, 2], [31, 44, 12, 90]]  # three different lengths -> left padding
NEW = 10


def _tiny(arch: str):
    torch.manual_seed(0)
    # initializer_range 0.2 (not 0.02) gives peaked logits, so fp32 round-off cannot flip an argmax
    if arch == "llama":
        from dscoder.models.llama import Transformer
        cfg = get_preset("tiny", vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48,
                         initializer_range=0.2)
        model = Transformer(cfg)
    else:
        from dscoder.models.deepseek_v2 import DeepseekV2
        cfg = get_preset("tiny-moe", vocab_size=101, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                         num_hidden_layers=2, max_position_embeddings=48, initializer_range=0.2)
        model = DeepseekV2(cfg)
    model.init_weights()
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "v2"])
def model(request):
    return _tiny(request.param)


@pytest.fixture(scope="module")
def llama():
    return _tiny("llama")


@torch.inference_mode()
def naive_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Reference: no cache, no padding, one full forward per new token."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


def decode(ids: list[int]) -> str:
    """A stand-in detokenizer with multi-character tokens, so stop strings can start and end mid-token."""
    return "".join(f"<{i}>" for i in ids)


def test_batched_greedy_equals_naive_loop(model):
    out = Engine(model).generate(PROMPTS, max_new_tokens=NEW)
    for p, o in zip(PROMPTS, out):
        assert o.tokens == naive_greedy(model, p, NEW)
        assert o.finish_reason == "length" and o.prompt_tokens == len(p)
    [alone] = Engine(model).generate([PROMPTS[2]], max_new_tokens=NEW)  # no padding: the mask-free path
    assert alone.tokens == out[2].tokens


def test_stop_ids_cut_each_row_at_its_first_stop(llama):
    ref = [naive_greedy(llama, p, NEW) for p in PROMPTS]
    stop = ref[0][4]  # the first row's fifth token: that row must stop at its first occurrence
    out = Engine(llama).generate(PROMPTS, max_new_tokens=NEW, stop_ids=[stop])
    for r, o in zip(ref, out):
        cut = r.index(stop) if stop in r else len(r)
        assert o.tokens == r[:cut]
        assert o.finish_reason == ("stop" if stop in r else "length")
    assert out[0].finish_reason == "stop"


def test_stop_string_spanning_tokens_cuts_text_and_tokens(llama):
    ref = naive_greedy(llama, PROMPTS[1], NEW)
    full = decode(ref)
    a, b = full.index(f"<{ref[4]}>", len(decode(ref[:4]))), len(decode(ref[:5]))
    stop = full[a + 1:b + 2]  # starts inside token 4, ends inside token 5
    [o] = Engine(llama).generate([PROMPTS[1]], max_new_tokens=NEW, stop_strings=[stop], decode=decode)
    at = full.index(stop)  # usually inside token 4; an earlier chance occurrence wins
    kept = max(k for k in range(len(ref)) if len(decode(ref[:k])) <= at)  # tokens wholly before the stop string
    assert o.finish_reason == "stop"
    assert o.text == full[:at] and o.tokens == ref[:kept]


def test_stream_matches_batch_and_holds_back_stop_strings(llama):
    engine = Engine(llama)
    ref = engine.generate([PROMPTS[0]], max_new_tokens=NEW)[0].tokens
    assert list(engine.generate_stream(PROMPTS[0], max_new_tokens=NEW)) == ref
    stop = decode(ref[6:8])
    stream = engine.generate_stream(PROMPTS[0], max_new_tokens=NEW, stop_strings=[stop], decode=decode)
    got = []
    while True:
        try:
            got.append(next(stream))
        except StopIteration as end:
            final = end.value
            break
    at = decode(ref).index(stop)  # the first occurrence may come before token 6; it starts at a token boundary
    first = next(k for k in range(len(ref)) if len(decode(ref[:k])) == at)
    assert got == final.tokens == ref[:first] and final.finish_reason == "stop"


def test_early_closed_stream_releases_the_cache(llama):
    engine = Engine(llama)
    stream = engine.generate_stream(PROMPTS[0], max_new_tokens=NEW)
    next(stream)
    stream.close()
    assert [o.tokens for o in engine.generate(PROMPTS, max_new_tokens=NEW)] == \
        [naive_greedy(llama, p, NEW) for p in PROMPTS]


def test_top_k_one_and_tiny_top_p_are_greedy(llama):
    engine = Engine(llama)
    greedy = [o.tokens for o in engine.generate(PROMPTS, max_new_tokens=NEW)]
    assert [o.tokens for o in engine.generate(PROMPTS, NEW, temperature=1.0, top_k=1, seed=3)] == greedy
    assert [o.tokens for o in engine.generate(PROMPTS, NEW, temperature=1.0, top_p=1e-6, seed=3)] == greedy


def test_seeded_sampling_is_reproducible(llama):
    engine = Engine(llama)
    runs = {s: [o.tokens for o in engine.generate(PROMPTS, NEW, temperature=3.0, seed=s)] for s in (1, 1, 2, 3)}
    again = [o.tokens for o in engine.generate(PROMPTS, NEW, temperature=3.0, seed=1)]
    assert again == runs[1]
    assert runs[2] != runs[1] or runs[3] != runs[1]


def test_context_limit(llama):
    engine = Engine(llama)  # max_position_embeddings 48
    long = list(range(1, 45))
    with pytest.raises(UserError, match=r"44 tokens.*max_new_tokens 10.*54 > .*48"):
        engine.generate([long], max_new_tokens=10)
    [o] = engine.generate([long], max_new_tokens=10, truncate="left")
    assert o.prompt_tokens == 38 and o.tokens == naive_greedy(llama, long[-38:], 10)
    with pytest.raises(UserError, match=r"context of 20"):
        Engine(llama, max_len=20).generate([long[:15]], max_new_tokens=6)


def test_context_overflow_is_one_line_a_caller_can_reword(llama, recwarn):
    engine = Engine(llama)
    with pytest.raises(ContextOverflow) as info:
        engine.generate([[1, 2], list(range(1, 45))], max_new_tokens=10)
    e = info.value
    assert isinstance(e, UserError) and (e.index, e.prompt_tokens, e.max_new_tokens, e.context) == (1, 44, 10, 48)
    assert str(e) == ("prompt 1 has 44 tokens; with max_new_tokens 10 that is 54 > the model's context of 48 tokens "
                      "(shorten it, lower max_new_tokens, or pass truncate='left' to keep its last 38 tokens)")
    assert e.advice(truncate="--truncate left", max_new_tokens="--max-new-tokens") == (
        "prompt 1 has 44 tokens; with --max-new-tokens 10 that is 54 > the model's context of 48 tokens "
        "(shorten it, lower --max-new-tokens, or pass --truncate left to keep its last 38 tokens)")
    assert len(recwarn) == 0                                     # no library warning comes before it


@pytest.mark.parametrize("prompts, kw, msg", [
    ([[]], {}, "prompt 0 is empty"),
    ([], {}, "no prompts"),
    ([[1, 500]], {}, "token id 500 outside"),
    ([[1, 2]], {"max_new_tokens": 0}, "max_new_tokens must be"),
    ([[1, 2]], {"stop_strings": ["x"]}, "need a `decode`"),
    ([[1, 2]], {"temperature": -1}, "temperature"),
])
def test_bad_input_is_a_user_error(llama, prompts, kw, msg):
    with pytest.raises(UserError, match=msg):
        Engine(llama).generate(prompts, **({"max_new_tokens": 4} | kw))


def test_gemv_layout_keeps_values_and_output(llama):
    model = _tiny("llama")
    before = [o.tokens for o in Engine(model).generate(PROMPTS, max_new_tokens=NEW)]
    engine = Engine(model).use_gemv_layout()
    w = model.lm_head.weight
    assert w.stride() == (1, w.shape[0])  # column-major storage, same (vocab, hidden) shape
    assert [o.tokens for o in engine.generate(PROMPTS, max_new_tokens=NEW)] == before


def test_concurrent_streams_use_separate_caches(llama):
    engine = Engine(llama)
    a = engine.generate_stream(PROMPTS[0], max_new_tokens=NEW)
    b = engine.generate_stream(PROMPTS[1], max_new_tokens=NEW)
    got_a, got_b = [], []
    for ta, tb in zip(a, b):  # interleaved steps: the second stream must not write into the first one's cache
        got_a.append(ta)
        got_b.append(tb)
    assert got_a == naive_greedy(llama, PROMPTS[0], NEW) and got_b == naive_greedy(llama, PROMPTS[1], NEW)


def test_stream_rejects_bad_input_before_streaming(llama):
    with pytest.raises(UserError, match="context of 48"):
        Engine(llama).generate_stream(list(range(1, 45)), max_new_tokens=10)  # no next() needed
