"""DeepSeek-Coder v1: a Llama decoder (v1 paper §3.3; the released v1 config.json), and its KV cache.

    from dscoder.models.presets import get_preset
    from dscoder.models.hf import build_model
    model = build_model(get_preset("tiny"))
    logits = model(input_ids)                                        # (B, T, vocab) fp32, causal

    cache = model.make_cache(batch_size=2, max_len=64)               # incremental decoding
    logits = model(prompt_ids, cache=cache, attn_mask=mask[:, :T])   # prefill, then one token at a time

The interface both architectures share: `forward(input_ids, *, positions=None, cache=None, attn_mask=None,
logits_to_keep=0, return_aux=False)` returns the logits, or with `return_aux=True` an `LMOutput` (here with no
aux loss and no expert load: the v1 model has no MoE); `make_cache(batch_size, max_len)` gives a cache whose
cursor moves once every layer has written the new tokens and `rewind(length)` moves it back.

embed -> N x [x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x))] -> RMSNorm -> lm_head. Attention is multi-head,
grouped-query (33B: 8 KV heads) or multi-query (5.7bmqa) by `num_key_value_heads`; RoPE is the HF half-split
layout with linear position interpolation (§3.6: factor 4, theta 100000). Parameter names are exactly those of
the released `LlamaForCausalLM` checkpoints, so their state dict loads without renaming.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import LMOutput, RMSNorm, RopeTable, SwiGLU, apply_rope, linear_inv_freq, sdpa_mask


class KVCache:
    """Preallocated keys and values for every layer: k, v (layers, B, H_kv, max_len, D).

    Heads before slots so a layer's live prefix `[..., :length, :]` is a view SDPA reads without a copy.
    `length` counts the slots written so far (the same for every row; the engine left-pads); it moves on when
    the last layer has written its keys and values for the new tokens."""

    def __init__(self, n_layers: int, batch_size: int, max_len: int, n_kv_heads: int, head_dim: int,
                 device=None, dtype=torch.float32):
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.n_layers, self.batch_size, self.max_len, self.length = n_layers, batch_size, max_len, 0

    def reset(self) -> None:
        self.length = 0  # stale slots are overwritten before they are ever attended

    def rewind(self, length: int) -> None:
        """Forget every slot from `length` on (draft tokens that verification rejected); writes resume there."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot rewind a cache of {self.length} slots to {length}")
        self.length = length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, T, D) at slots [length, length+T); return the layer's keys/values so far."""
        L, T = self.length, k.shape[2]
        self.k[layer, :, :, L:L + T] = k
        self.v[layer, :, :, L:L + T] = v
        k_all, v_all = self.k[layer, :, :, :L + T], self.v[layer, :, :, :L + T]  # (B, H_kv, L+T, D)
        if layer == self.n_layers - 1:
            self.length = L + T
        return k_all, v_all


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.n_heads, self.n_kv, self.head_dim = layer, cfg.num_attention_heads, \
            cfg.num_key_value_heads, cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                is_causal: bool, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, Hkv, L+T, D)
        G = self.n_heads // self.n_kv
        if cache is not None and G > 1 and not is_causal:
            # decode / verification steps: a KV head's G query heads (heads j*G .. j*G+G-1, SDPA's GQA grouping)
            # are one block of G*T queries against it, so the cached K/V are read as they are, never expanded
            # per query head (CPU, 8 rows x 580 slots, 8 heads over 4: 276 vs 347 us per layer)
            qg = q.reshape(B, self.n_kv, G * T, self.head_dim)
            mg = mask if mask is None else mask.unsqueeze(2).expand(-1, -1, G, -1, -1).reshape(
                mask.shape[0], 1, G * T, mask.shape[-1])
            y = F.scaled_dot_product_attention(qg, k, v, attn_mask=mg).view(B, self.n_heads, T, self.head_dim)
        else:
            # GQA/MQA: SDPA broadcasts each KV head over its group of query heads, no repeated copy
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                               enable_gqa=G > 1)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, mask, is_causal, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, cache)
        return x + self.mlp(self.post_attention_layernorm(x))  # (B, T, hidden)


class Transformer(nn.Module):
    """The DeepSeek-Coder v1 causal LM (`LlamaForCausalLM` layout). See the module docstring."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.hidden_size),
            layers=nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers)),
            norm=RMSNorm(config.hidden_size, config.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rope = RopeTable(linear_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling_factor))

    def init_weights(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            elif isinstance(m, RMSNorm):
                m.reset_parameters()

    def make_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        p = self.model.norm.weight  # a float parameter even when the Linears hold int8 (models/quant.py)
        c = self.config
        return KVCache(c.num_hidden_layers, batch_size, max_len, c.num_key_value_heads, c.head_dim,
                       device=device or p.device, dtype=dtype or p.dtype)

    def forward(self, input_ids: torch.Tensor, *, positions: torch.Tensor | None = None,
                cache: KVCache | None = None, attn_mask: torch.Tensor | None = None,
                logits_to_keep: int = 0, return_aux: bool = False) -> torch.Tensor | LMOutput:
        """Logits (B, T, vocab), fp32 -- or only the last `logits_to_keep` positions' (a prefill needs one);
        `return_aux=True` wraps them in an `LMOutput`. See the model interface in the module docstring."""
        B, T = input_ids.shape
        L = cache.length if cache is not None else 0
        if cache is not None and L + T > cache.max_len:
            raise ValueError(f"cache full: {L} slots used + {T} new tokens > max_len {cache.max_len}")
        x = self.model.embed_tokens(input_ids)  # (B, T, hidden)
        if positions is None:
            cos, sin = self.rope.table(L + T, x.device, x.dtype)
            cos, sin = cos[None, L:L + T], sin[None, L:L + T]  # (1, T, D)
        else:
            cos, sin = self.rope(positions.to(x.device), T, x.device, x.dtype)  # (B, T, D)
        mask, is_causal = sdpa_mask(B, T, L, attn_mask, x.device)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, is_causal, cache)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.model.norm(x)).float()  # (B, T, vocab)
        return LMOutput(logits) if return_aux else logits
