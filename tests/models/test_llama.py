"""The v1 Transformer on its own: shared primitives, the KV cache (incl. left-padded batches), masks."""
import pytest
import torch

from dscoder.models.hf import build_model
from dscoder.models.layers import RMSNorm, apply_rope, linear_inv_freq, rope_cos_sin
from dscoder.models.presets import get_preset


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(get_preset("tiny", vocab_size=97, num_hidden_layers=2, initializer_range=0.1)).eval()


def test_rmsnorm_matches_formula_in_bf16_and_fp32():
    x = torch.randn(3, 5, 8) * 4
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2, 8))
    want = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert torch.allclose(norm(x), want, atol=1e-5)
    nb = RMSNorm(8).to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    ref = (xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    assert torch.equal(nb(xb), nb.weight * ref)


def test_rope_linear_scaling_is_position_over_factor():
    inv = linear_inv_freq(16, 1e5)
    cos4, sin4 = rope_cos_sin(torch.tensor([[8, 20]]), linear_inv_freq(16, 1e5, 4.0))
    cos1, sin1 = rope_cos_sin(torch.tensor([[2, 5]]), inv)
    assert torch.allclose(cos4, cos1, atol=1e-6) and torch.allclose(sin4, sin1, atol=1e-6)
    # a rotation keeps norms, and relative: <R(m)q, R(n)k> depends on m - n only
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def rot(x, p):
        c, s = rope_cos_sin(torch.tensor([[p]]), inv)
        return apply_rope(x, c, s)
    assert torch.allclose(rot(q, 7).norm(), q.norm(), atol=1e-5)
    assert torch.allclose((rot(q, 9) * rot(k, 4)).sum(), (rot(q, 105) * rot(k, 100)).sum(), atol=1e-4)


def test_param_names_are_hf_llama(model):
    names = set(model.state_dict())
    for n in ("model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight",
              "model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.gate_proj.weight",
              "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
              "model.norm.weight", "lm_head.weight"):
        assert n in names
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (4 * 32, 256)  # GQA: 4 KV heads of 32


def test_prefill_plus_decode_equals_full_forward(model):
    ids = torch.randint(0, 97, (2, 14))
    with torch.no_grad():
        full = model(ids)
        cache = model.make_cache(2, 20)
        parts = [model(ids[:, :6], cache=cache), model(ids[:, 6:9], cache=cache)]  # prefill, then a chunk
        parts += [model(ids[:, t:t + 1], cache=cache) for t in range(9, 14)]  # one token at a time
    assert cache.length == 14
    assert (torch.cat(parts, 1) - full).abs().max().item() < 1e-4
    cache.reset()
    assert cache.length == 0
    with torch.no_grad():
        assert (model(ids, cache=cache) - full).abs().max().item() < 1e-4


def test_left_padded_batch_matches_each_row_alone(model):
    rows = [torch.randint(0, 97, (n,)).tolist() for n in (9, 4)]
    new = [[5, 17, 3], [60, 2, 44]]  # forced continuations
    P, N = 9, 3
    ids = torch.zeros(2, P, dtype=torch.long)
    pos = torch.zeros(2, P, dtype=torch.long)
    mask = torch.zeros(2, P + N, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, P - len(r):] = torch.tensor(r)
        pos[b, P - len(r):] = torch.arange(len(r))
        mask[b, P - len(r):] = True
    with torch.no_grad():
        cache = model.make_cache(2, P + N)
        steps = [model(ids, positions=pos, cache=cache, attn_mask=mask[:, :P])[:, -1]]
        nxt = pos[:, -1:] + 1
        for t in range(N - 1):
            tok = torch.tensor([[new[0][t]], [new[1][t]]])
            steps.append(model(tok, positions=nxt, cache=cache, attn_mask=mask[:, :cache.length + 1])[:, -1])
            nxt = nxt + 1
        for b, r in enumerate(rows):
            alone = model(torch.tensor([r + new[b][:N - 1]]))[0, len(r) - 1:]  # (N, V)
            got = torch.stack([s[b] for s in steps])
            assert (got - alone).abs().max().item() < 1e-4, b
        # the same mask without a cache (scoring a padded batch)
        scored = model(ids, positions=pos, attn_mask=mask[:, :P])
        assert (scored[1, -4:] - model(torch.tensor([rows[1]]))[0]).abs().max().item() < 1e-4
        assert torch.isfinite(scored).all()


def test_cache_full_and_bad_mask(model):
    cache = model.make_cache(1, 4)
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="cache full"):
            model(torch.zeros(1, 2, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="attn_mask has shape"):
            model(torch.zeros(1, 3, dtype=torch.long), attn_mask=torch.ones(1, 4, dtype=torch.bool))


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    m = build_model(get_preset("tiny", vocab_size=97, num_hidden_layers=1)).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    ids = torch.randint(0, 97, (2, 16))
    losses = []
    for _ in range(5):
        logits = m(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_logits_to_keep_returns_the_last_positions(preset):
    torch.manual_seed(0)
    m = build_model(get_preset(preset, vocab_size=128, num_hidden_layers=2)).eval()
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        full, last = m(ids), m(ids, logits_to_keep=1)
    assert last.shape == (2, 1, 128)
    torch.testing.assert_close(last, full[:, -1:], rtol=0, atol=1e-5)
