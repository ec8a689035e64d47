"""DeepSeek-V2 model: YaRN numbers, parameter counts, config parsing, routing, balance loss, latent KV cache."""

import pytest
import torch

from dscoder.errors import UserError
from dscoder.models.config import DeepseekV2Config, config_from_hf
from dscoder.models.deepseek_v2 import (DeepseekV2, MoE, balance_loss, cache_values_per_token, route,
                                        softmax_scale)
from dscoder.models.layers import yarn_correction_range, yarn_inv_freq, yarn_mscale
from dscoder.models.presets import get_preset


def tiny(**kw) -> DeepseekV2Config:
    base = dict(vocab_size=96, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, qk_nope_head_dim=8,
                qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                max_position_embeddings=512,
                rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                              "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707})
    return get_preset("tiny-moe", **(base | kw))


def random_model(cfg: DeepseekV2Config, seed: int = 0) -> DeepseekV2:
    torch.manual_seed(seed)
    model = DeepseekV2(cfg)
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate.weight") and p.dim() == 2 and p.shape[0] == cfg.n_routed_experts:
                p.normal_(0, 0.3)               # decisive routing
            elif p.dim() == 1:
                p.uniform_(0.5, 1.5)            # non-trivial norm weights
            else:
                p.normal_(0, 0.08)
    return model.eval()


# ------------------------------------------------------------------------------------------------ YaRN / scale
def test_yarn_numbers_for_v2_settings():
    lite = get_preset("deepseek-coder-v2-lite")
    assert yarn_correction_range(64, 10000.0, 4096, 32.0, 1.0) == (10, 23)
    assert yarn_mscale(40.0, 0.707) == pytest.approx(1.26080, abs=1e-5)
    assert softmax_scale(lite) == pytest.approx(0.114721, abs=1e-6)
    assert softmax_scale(lite.replace(rope_scaling=None)) == pytest.approx(192 ** -0.5)
    inv = yarn_inv_freq(64, 10000.0, 40.0, 4096, 32.0, 1.0)
    plain = 1.0 / 10000.0 ** (torch.arange(0, 64, 2).float() / 64)
    torch.testing.assert_close(inv[:11], plain[:11])                 # i <= low: original frequency
    torch.testing.assert_close(inv[23:], plain[23:] / 40)            # i >= high: interpolated by the factor
    mid = inv[11:23]
    assert torch.all(mid < plain[11:23]) and torch.all(mid > plain[11:23] / 40)


def test_param_counts_reproduce_released_sizes():
    lite, full = get_preset("deepseek-coder-v2-lite"), get_preset("deepseek-coder-v2")
    assert lite.num_params() / 1e9 == pytest.approx(15.7, abs=0.1)
    assert lite.num_params(active=True) / 1e9 == pytest.approx(2.4, abs=0.1)
    assert full.num_params() / 1e9 == pytest.approx(236, abs=1)
    assert full.num_params(active=True) / 1e9 == pytest.approx(21, abs=0.5)
    cfg = get_preset("tiny-moe")
    assert sum(p.numel() for p in DeepseekV2(cfg).parameters()) == cfg.num_params()
    assert cache_values_per_token(lite) == (512 + 64, 16 * (192 + 128))


# ------------------------------------------------------------------------------------------------ config
def test_config_hf_roundtrip_and_released_spellings():
    cfg = tiny(q_lora_rank=24, topk_method="group_limited_greedy", n_group=4, topk_group=2)
    assert config_from_hf(cfg.to_hf()) == cfg
    released = {"model_type": "deepseek_v2", "topk_method": "gready", "rope_theta": 10000,
                "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                 "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
                "auto_map": {}, "ep_size": 1, "q_lora_rank": None, "n_group": 1, "topk_group": 1}
    got = config_from_hf(released)
    assert got.topk_method == "greedy" and got.rope_scaling["factor"] == 40
    assert softmax_scale(got) == pytest.approx(0.114721, abs=1e-6)
    # transformers 5 writes rope_parameters, qk_head_dim, head_dim (= rope dim) and null groups
    t5 = {"model_type": "deepseek_v2", "qk_head_dim": 192, "head_dim": 64, "output_router_logits": False,
          "n_group": None, "topk_group": None,
          "rope_parameters": {"rope_type": "yarn", "type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                              "original_max_position_embeddings": 4096, "mscale": 0.707, "mscale_all_dim": 0.707}}
    assert config_from_hf(t5) == get_preset("deepseek-coder-v2-lite")


@pytest.mark.parametrize("bad, word", [
    (dict(topk_method="top1"), "topk_method"), (dict(n_group=3), "n_group"),
    (dict(num_key_value_heads=2), "num_key_value_heads"), (dict(num_experts_per_tok=9), "num_experts_per_tok"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(topk_method="group_limited_greedy", n_group=4, topk_group=1, num_experts_per_tok=3),
     "num_experts_per_tok")])
def test_config_rejects_bad_values(bad, word):
    with pytest.raises(UserError, match=word):
        tiny(**bad)


# ------------------------------------------------------------------------------------------------ MoE
def test_group_limited_routing_stays_in_best_groups():
    cfg = tiny(n_routed_experts=8, topk_method="group_limited_greedy", n_group=4, topk_group=2,
               num_experts_per_tok=3)
    torch.manual_seed(0)
    logits = torch.randn(50, 8) * 3
    scores, weights, idx = route(logits, cfg)
    best_groups = scores.view(50, 4, 2).amax(-1).topk(2, dim=-1).indices
    assert torch.all((idx // 2)[:, :, None].eq(best_groups[:, None, :]).any(-1))
    torch.testing.assert_close(weights, scores.gather(1, idx) * cfg.routed_scaling_factor)
    _, w_norm, _ = route(logits, cfg.replace(norm_topk_prob=True))
    torch.testing.assert_close(w_norm.sum(-1), torch.ones(50))


def test_grouped_dispatch_equals_dense_mixture():
    cfg = tiny(routed_scaling_factor=2.5)
    moe = random_model(cfg).model.layers[1].mlp
    assert isinstance(moe, MoE)
    x = torch.randn(2, 7, cfg.hidden_size)
    y, _, load = moe(x)
    flat = x.reshape(-1, cfg.hidden_size)
    _, w, idx = route(moe.gate(flat), cfg)
    dense = torch.stack([e(flat) for e in moe.experts], dim=1)               # (N, E, h) every expert on every token
    want = (dense.gather(1, idx[:, :, None].expand(-1, -1, cfg.hidden_size)) * w[:, :, None]).sum(1)
    want = want + moe.shared_experts(flat)
    torch.testing.assert_close(y.reshape(-1, cfg.hidden_size), want, atol=1e-5, rtol=1e-5)
    assert load.sum().item() == 14 * cfg.num_experts_per_tok


def test_balance_loss_by_hand():
    cfg = tiny(n_routed_experts=4, num_experts_per_tok=1, aux_loss_alpha=0.5)
    scores = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1]]])    # (B=1, T=2, E=4)
    idx = torch.tensor([[[0], [1]]])
    # f = counts * E / (T*K) = (2, 2, 0, 0); P = mean over t = (0.4, 0.4, 0.1, 0.1)
    assert balance_loss(scores, idx, cfg).item() == pytest.approx(0.5 * (2 * 0.4 + 2 * 0.4))
    assert balance_loss(scores, idx, cfg.replace(seq_aux=False)).item() == pytest.approx(0.5 * 1.6)
    uniform = torch.full((2, 8, 4), 0.25)
    even = torch.arange(16).view(2, 8, 1) % 4
    assert balance_loss(uniform, even, cfg).item() == pytest.approx(0.5)   # perfectly balanced -> alpha


def test_return_aux_gives_balance_loss_and_expert_load_in_training_only():
    cfg = tiny()
    model = random_model(cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    out = model(ids, return_aux=True)
    logits = out.logits
    assert logits.shape == (2, 12, cfg.vocab_size) and logits.dtype == torch.float32
    assert out.expert_load.dtype == torch.long and out.expert_load.shape == (2, cfg.n_routed_experts)
    assert torch.all(out.expert_load.sum(1) == 2 * 12 * cfg.num_experts_per_tok)   # every (token, slot) counted once
    # the loss is the per-layer balance loss of each MoE layer's own routing, summed
    want, x = 0.0, model.model.embed_tokens(ids)
    cos, sin = model.rope(None, 12, ids.device, torch.float32)
    for i, layer in enumerate(model.model.layers):
        hn = layer.post_attention_layernorm(x + layer.self_attn(layer.input_layernorm(x), cos, sin, None, None, True))
        if layer.is_moe:
            scores, _, idx = route(layer.mlp.gate(hn.reshape(-1, cfg.hidden_size)), cfg)
            want += balance_loss(scores.view(2, 12, -1), idx.view(2, 12, -1), cfg).item()
            counts = torch.bincount(idx.reshape(-1), minlength=cfg.n_routed_experts)
            assert torch.equal(out.expert_load[i - cfg.first_k_dense_replace], counts)
        x, _, _ = layer(x, cos, sin, None, None, True, False)
    assert out.aux_loss.requires_grad and out.aux_loss.item() == pytest.approx(want, rel=1e-5)
    (logits.logsumexp(-1).mean() + out.aux_loss).backward()
    assert model.model.layers[1].mlp.gate.weight.grad.abs().sum() > 0
    torch.testing.assert_close(model(ids), logits.detach())                     # the plain call: logits only
    model.eval()
    out = model(ids, return_aux=True)
    assert out.aux_loss is None and out.expert_load.sum().item() == 2 * 2 * 12 * cfg.num_experts_per_tok
    assert not hasattr(model, "aux_loss") and not hasattr(model, "expert_load")   # nothing left on the module


# ------------------------------------------------------------------------------------------------ latent cache
@pytest.mark.parametrize("q_lora", [None, 24])
def test_latent_cache_prefill_and_decode_match_full_forward(q_lora):
    cfg = tiny(q_lora_rank=q_lora)
    model = random_model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 11))
    with torch.no_grad():
        full = model(ids)
        cache = model.make_cache(2, 16)
        steps = [model(ids[:, :6], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(6, 11)]
    assert cache.length == 11
    assert (full - torch.cat(steps, dim=1)).abs().max().item() <= 1e-4
    # the cache holds only the latent and the shared rope key
    assert cache.c_kv.shape == (3, 2, 16, cfg.kv_lora_rank) and cache.k_pe.shape == (3, 2, 16, cfg.qk_rope_head_dim)
    with pytest.raises(ValueError, match="cache full"):
        model(ids[:, :6], cache=cache)
    cache.reset()
    assert cache.length == 0


def test_latent_cache_left_padded_batch():
    cfg = tiny()
    model = random_model(cfg, seed=1)
    a = torch.randint(0, cfg.vocab_size, (1, 9))
    b = torch.randint(0, cfg.vocab_size, (1, 5))
    nxt = torch.randint(0, cfg.vocab_size, (2, 3))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])   # row 1 left-padded by 4
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :4] = False
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        cache = model.make_cache(2, 12)
        first = model(ids, cache=cache, attn_mask=mask[:, :9], positions=pos[:, :9])
        dec = [model(nxt[:, i:i + 1], cache=cache, attn_mask=mask[:, :10 + i], positions=pos[:, 9 + i:10 + i])
               for i in range(3)]
        got = torch.cat([first] + dec, 1)
        # each row alone, unpadded, no cache
        ref_a = model(torch.cat([a, nxt[:1]], 1))
        ref_b = model(torch.cat([b, nxt[1:]], 1))
        # the no-cache path with the same mask must agree too
        masked = model(torch.cat([ids, nxt], 1), attn_mask=mask, positions=pos)
    assert (got[0] - ref_a[0]).abs().max().item() <= 1e-4
    assert (got[1, 4:] - ref_b[0]).abs().max().item() <= 1e-4
    assert (masked[1, 4:] - ref_b[0]).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match=r"attn_mask has shape \(2, 11\), expected \(2, 12\)"):
        model(torch.cat([ids, nxt], 1), attn_mask=mask[:, :11])
