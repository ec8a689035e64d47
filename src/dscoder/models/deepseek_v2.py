"""DeepSeek-Coder-V2: Multi-head Latent Attention + DeepSeekMoE + YaRN RoPE, with a compressed latent KV cache.

One readable file, top to bottom (V2 paper 2406.11931, architecture of DeepSeek-V2; V2's modeling_deepseek.py):

* `MLA`           -- queries (optionally low-rank: q_a_proj -> q_a_layernorm -> q_b_proj), the joint KV latent
                     c_kv = kv_a_layernorm(W_kva x)[:512] and ONE decoupled RoPE key k_pe (64-d) shared by all heads;
                     per-head keys/values come from kv_b_proj (§2.4). Softmax scale (d_n+d_r)^-0.5 * mscale_all_dim².
* `MoE`           -- softmax gate in fp32, greedy / group-limited top-k, shared experts, expert-grouped dispatch and
                     the sequence-level balance loss (§2.6).
* `LatentCache`   -- decoding keeps only c_kv (after kv_a_layernorm) and the roped k_pe per token and layer;
                     kv_b_proj is absorbed into the query (q_nope·W_UK) and output (·W_UV) sides, so decode attends
                     as multi-query attention over the latent and never builds per-head K/V (DeepSeek-V2 paper,
                     arXiv 2405.04434 §2.1.2).
* `DeepseekV2`    -- the causal LM; parameter names are the released checkpoints' (`model.layers.{i}.mlp.experts.{e}
                     .gate_proj.weight`, ...), so a released folder loads with plain `load_state_dict`.

Usage (the interface of `models/llama.py`):
    from dscoder.models.presets import get_preset
    model = DeepseekV2(get_preset("tiny-moe")); model.init_weights()
    logits = model(input_ids)                     # (B, T, vocab) fp32
    out = model.train()(input_ids, return_aux=True)
    out.logits, out.aux_loss, out.expert_load    # + balance loss (training only), (n_moe_layers, E) pick counts
    cache = model.make_cache(B, 256); model(prompt, cache=cache); model(next_tok, cache=cache)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DeepseekV2Config
from .layers import (LMOutput, RMSNorm, RopeTable, SwiGLU, apply_rope, attention_mask, sdpa_mask, yarn_inv_freq,
                     yarn_mscale)


# ----------------------------------------------------------------------------------------------- RoPE (YaRN)
def softmax_scale(cfg: DeepseekV2Config) -> float:
    """(d_n + d_r)^-0.5, times m² with m = yarn_mscale(factor, mscale_all_dim) under YaRN (modeling_deepseek.py).

    The extra m² compensates the entropy drop of long-context attention (YaRN); for V2-Lite this is 0.114721."""
    scale = cfg.qk_head_dim ** -0.5
    rs = cfg.rope_scaling
    if rs and rs.get("mscale_all_dim"):
        m = yarn_mscale(float(rs["factor"]), float(rs["mscale_all_dim"]))
        scale = scale * m * m
    return scale


def rope_table(cfg: DeepseekV2Config) -> RopeTable:
    """cos/sin for the decoupled RoPE part (qk_rope_head_dim): YaRN frequencies when `rope_scaling` is set, with the
    cos/sin gain mscale / mscale_all_dim (1.0 for both released configs, which set the two equal; V2's
    modeling_deepseek.py)."""
    d, rs = cfg.qk_rope_head_dim, cfg.rope_scaling
    with torch.device("cpu"):   # real numbers even when the model is built on the meta device (hf.load_model)
        if not rs:
            return RopeTable(1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)))
        factor = float(rs["factor"])
        inv_freq = yarn_inv_freq(d, cfg.rope_theta, factor, int(rs["original_max_position_embeddings"]),
                                 float(rs["beta_fast"]), float(rs["beta_slow"]))
    gain = yarn_mscale(factor, float(rs.get("mscale", 1.0))) / yarn_mscale(factor, float(rs.get("mscale_all_dim", 0.0)))
    return RopeTable(inv_freq, gain)


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on DeepSeek-V2's interleaved layout: the checkpoints store (x0, y0, x1, y1, ...) pairs, so de-interleave
    to (x0, x1, ..., y0, y1, ...) first, then apply the half-split rotation (modeling_deepseek.py).

    x: (B, H, T, d); cos/sin: (B, T, d). The result stays in the de-interleaved order; q and k share it, so their
    dot products equal the original's."""
    b, h, t, d = x.shape
    x = x.view(b, h, t, d // 2, 2).transpose(-1, -2).reshape(b, h, t, d)
    return apply_rope(x.float(), cos, sin).to(x.dtype)      # rotate in fp32 like the reference


# ----------------------------------------------------------------------------------------------- latent KV cache
class LatentCache:
    """Preallocated MLA cache: per layer, c_kv (after kv_a_layernorm, so absorption stays linear) and the roped k_pe.

    Lite: (512 + 64) values per token per layer, against 16 heads x (192 + 128) for an expanded K/V cache.
    `length` counts the slots written so far; it moves on when the last layer has written the new tokens."""

    def __init__(self, cfg: DeepseekV2Config, batch_size: int, max_len: int, device=None, dtype=None):
        n, dtype = cfg.num_hidden_layers, dtype or torch.float32
        self.c_kv = torch.zeros(n, batch_size, max_len, cfg.kv_lora_rank, device=device, dtype=dtype)
        self.k_pe = torch.zeros(n, batch_size, max_len, cfg.qk_rope_head_dim, device=device, dtype=dtype)
        self.n_layers, self.max_len = n, max_len
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def rewind(self, length: int) -> None:
        """Forget every slot from `length` on (draft tokens that verification rejected); writes resume there."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot rewind a cache of {self.length} slots to {length}")
        self.length = length

    def write(self, layer: int, c_kv: torch.Tensor, k_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store T new tokens at [length, length+T); return this layer's slots [0, length+T)."""
        lo, hi = self.length, self.length + c_kv.shape[1]
        self.c_kv[layer, :, lo:hi] = c_kv
        self.k_pe[layer, :, lo:hi] = k_pe
        if layer == self.n_layers - 1:
            self.length = hi
        return self.c_kv[layer, :, :hi], self.k_pe[layer, :, :hi]


def cache_values_per_token(cfg: DeepseekV2Config) -> tuple[int, int]:
    """(latent, expanded) cached values per token per layer: d_c + d_r vs heads x (d_n + d_r + d_v)."""
    latent = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    expanded = cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim)
    return latent, expanded


# ----------------------------------------------------------------------------------------------- attention
def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw) -> torch.Tensor:
    """scaled_dot_product_attention with V zero-padded to the Q/K head size: the fused (flash) kernels need equal
    head dims, MLA has d_v (128) < d_n + d_r (192); the padded output columns are zeros and are dropped."""
    d_v, d_qk = v.shape[-1], q.shape[-1]
    if d_v < d_qk:
        return F.scaled_dot_product_attention(q, k, F.pad(v, (0, d_qk - d_v)), **kw)[..., :d_v]
    return F.scaled_dot_product_attention(q, k, v, **kw)


class MLA(nn.Module):
    """Multi-head Latent Attention (V2's modeling_deepseek.py)."""

    def __init__(self, cfg: DeepseekV2Config, layer: int):
        super().__init__()
        self.layer, self.n_heads = layer, cfg.num_attention_heads
        self.d_nope, self.d_rope, self.d_v, self.d_c = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                                                        cfg.v_head_dim, cfg.kv_lora_rank)
        h, q_out = cfg.hidden_size, cfg.num_attention_heads * cfg.qk_head_dim
        self.q_lora_rank = cfg.q_lora_rank
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(h, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, eps=cfg.rms_norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, q_out, bias=False)
        else:
            self.q_proj = nn.Linear(h, q_out, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(h, self.d_c + self.d_rope, bias=False)
        self.kv_a_layernorm = RMSNorm(self.d_c, eps=cfg.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.d_c, self.n_heads * (self.d_nope + self.d_v), bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.d_v, h, bias=False)
        self.scale = softmax_scale(cfg)

    def forward(self, x, cos, sin, cache: LatentCache | None, mask: torch.Tensor | None,
                is_causal: bool) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.q_lora_rank else self.q_proj(x)
        q = q.view(b, t, self.n_heads, -1).transpose(1, 2)                      # (B, H, T, d_n+d_r)
        q_nope, q_pe = q.split([self.d_nope, self.d_rope], dim=-1)
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.d_c, self.d_rope], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)                                         # (B, T, d_c)
        q_pe = apply_rope_interleaved(q_pe, cos, sin)                            # (B, H, T, d_r)
        k_pe = apply_rope_interleaved(k_pe[:, None], cos, sin)[:, 0]             # (B, T, d_r), one for all heads
        if cache is None:
            out = self._expanded(q_nope, q_pe, c_kv, k_pe, mask, is_causal)
        else:
            c_all, k_all = cache.write(self.layer, c_kv, k_pe)                  # (B, S, d_c), (B, S, d_r)
            out = self._absorbed(q_nope, q_pe, c_all, k_all, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.d_v))

    def _expanded(self, q_nope, q_pe, c_kv, k_pe, mask, is_causal: bool) -> torch.Tensor:
        """Training path: build per-head K/V from the latent and run standard causal attention."""
        b, h, t, _ = q_nope.shape
        kv = self.kv_b_proj(c_kv).view(b, t, h, self.d_nope + self.d_v).transpose(1, 2)
        k_nope, v = kv.split([self.d_nope, self.d_v], dim=-1)                   # (B, H, T, d_n), (B, H, T, d_v)
        q = torch.cat((q_nope, q_pe), dim=-1)                                   # (B, H, T, d_n+d_r)
        k = torch.cat((k_nope, k_pe[:, None].expand(b, h, t, self.d_rope)), dim=-1)
        return sdpa(q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.scale)

    def _absorbed(self, q_nope, q_pe, c_all, k_all, mask) -> torch.Tensor:
        """Decode path: W_UK folded into the query, W_UV applied after attention; K/V stay latent (one 'head').

        Heads are folded into the query-length axis, so this is one multi-query attention over (c_kv ; k_pe);
        `mask` (B|1, 1, T, S) is explicit (None only for one new token, which sees every slot)."""
        b, h, t, _ = q_nope.shape
        w = self.kv_b_proj.weight.reshape(h, self.d_nope + self.d_v, self.d_c)
        w_uk, w_uv = w[:, :self.d_nope], w[:, self.d_nope:]                    # (H, d_n, d_c), (H, d_v, d_c)
        q_lat = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk)                    # (B, H, T, d_c)
        q = torch.cat((q_lat, q_pe), dim=-1).reshape(b, 1, h * t, self.d_c + self.d_rope)
        k = torch.cat((c_all, k_all), dim=-1)[:, None]                          # (B, 1, S, d_c+d_r)
        v = c_all[:, None]                                                       # (B, 1, S, d_c)
        if mask is not None:
            mask = mask.expand(b, h, t, mask.shape[-1]).reshape(b, 1, h * t, -1)
        o_lat = sdpa(q, k, v, attn_mask=mask, scale=self.scale)
        o_lat = o_lat.view(b, h, t, self.d_c)                                   # (B, H, T, d_c)
        return torch.einsum("bhtc,hvc->bhtv", o_lat, w_uv)                      # (B, H, T, d_v)


# ----------------------------------------------------------------------------------------------- DeepSeekMoE
def route(logits: torch.Tensor, cfg: DeepseekV2Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax gate + top-k (V2's modeling_deepseek.py). logits: (N, E) fp32 -> (scores (N, E), weights (N, K), idx
    (N, K)).

    group_limited_greedy keeps the topk_group groups with the best single expert score, then takes top-k inside."""
    scores = logits.softmax(dim=-1, dtype=torch.float32)
    k, pick = cfg.num_experts_per_tok, scores
    if cfg.topk_method == "group_limited_greedy":
        n = scores.shape[0]
        group_best = scores.view(n, cfg.n_group, -1).amax(dim=-1)                # (N, G)
        keep = torch.zeros_like(group_best).scatter_(1, group_best.topk(cfg.topk_group, dim=-1).indices, 1.0)
        keep = keep[:, :, None].expand(n, cfg.n_group, scores.shape[1] // cfg.n_group).reshape(n, -1)
        pick = scores.masked_fill(keep == 0, 0.0)
    weights, idx = pick.topk(k, dim=-1, sorted=False)
    if k > 1 and cfg.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    else:
        weights = weights * cfg.routed_scaling_factor
    return scores, weights, idx


def balance_loss(scores: torch.Tensor, idx: torch.Tensor, cfg: DeepseekV2Config) -> torch.Tensor:
    """Expert-level balance loss alpha * sum_i f_i P_i (V2's modeling_deepseek.py), per sequence when seq_aux.

    scores: (B, T, E) softmax probabilities; idx: (B, T, K) chosen experts."""
    b, t, e = scores.shape
    k = idx.shape[-1]
    if cfg.seq_aux:
        counts = torch.zeros(b, e, device=scores.device).scatter_add_(
            1, idx.reshape(b, t * k), torch.ones(b, t * k, device=scores.device))
        f = counts * e / (t * k)                                                 # (B, E), 1.0 when perfectly even
        return cfg.aux_loss_alpha * (f * scores.mean(dim=1)).sum(dim=1).mean()
    f = torch.bincount(idx.reshape(-1), minlength=e).float() * e / idx.numel()
    return cfg.aux_loss_alpha * (f * scores.reshape(-1, e).mean(dim=0)).sum()


class Gate(nn.Module):
    """Router weight as released: `mlp.gate.weight` (E, hidden), applied in fp32, no bias."""

    def __init__(self, cfg: DeepseekV2Config):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight.float())


class MoE(nn.Module):
    """y = sum_{i in top-k} g_i E_i(x) + S(x): fine-grained routed experts plus always-on shared experts."""

    def __init__(self, cfg: DeepseekV2Config):
        super().__init__()
        self.cfg = cfg
        self.experts = nn.ModuleList(SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size)
                                     for _ in range(cfg.n_routed_experts))
        self.gate = Gate(cfg)
        self.shared_experts = (SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)
                               if cfg.n_shared_experts else None)

    def forward(self, x: torch.Tensor, aux: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """x: (B, T, h) -> (y (B, T, h), the balance loss if `aux` else None, pick counts per expert (E,) int64)."""
        b, t, h = x.shape
        flat = x.reshape(-1, h)                                                  # (N, h)
        scores, weights, idx = route(self.gate(flat), self.cfg)                  # (N, E), (N, K), (N, K)
        y, counts = self.dispatch(flat, weights, idx)
        y = y.view(b, t, h)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        loss = None
        if aux and self.cfg.aux_loss_alpha > 0:
            loss = balance_loss(scores.view(b, t, -1), idx.view(b, t, -1), self.cfg)
        return y, loss, counts

    def dispatch(self, flat: torch.Tensor, weights: torch.Tensor,
                 idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sort the (token, slot) pairs by expert, run each expert once on its contiguous slice, scatter-add back.

        Returns (output (N, h), picks per expert (E,)). Reading the slice sizes is the one host sync per layer."""
        k, slots = idx.shape[1], idx.reshape(-1)
        order = slots.argsort(stable=True)                                       # (N*K,) grouped by expert id
        token = order // k
        # scatter_add, not bincount: on CUDA bincount reads the ids' min and max back to the host (ATen SummaryOps.cu)
        counts = torch.zeros(len(self.experts), dtype=torch.long, device=idx.device)
        counts.scatter_add_(0, slots, torch.ones_like(slots))
        xs = flat[token]                                                         # (N*K, h)
        outs, start = [], 0
        for expert, n in zip(self.experts, counts.tolist()):
            if n:
                outs.append(expert(xs[start:start + n]))
                start += n
        out = torch.cat(outs) * weights.reshape(-1)[order, None].to(flat.dtype)  # (N*K, h)
        return torch.zeros_like(flat).index_add(0, token, out), counts


# ----------------------------------------------------------------------------------------------- the model
class DecoderLayer(nn.Module):
    """Pre-norm block: h = x + MLA(norm(x)); out = h + FFN(norm(h)) with FFN dense or MoE (modeling_deepseek.py)."""

    def __init__(self, cfg: DeepseekV2Config, i: int):
        super().__init__()
        self.self_attn = MLA(cfg, i)
        self.is_moe = cfg.is_moe_layer(i)
        self.mlp = MoE(cfg) if self.is_moe else SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache, mask, is_causal, aux: bool):
        """-> (x, balance loss or None, expert pick counts or None for a dense layer)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, mask, is_causal)
        hn = self.post_attention_layernorm(x)
        if not self.is_moe:
            return x + self.mlp(hn), None, None
        y, loss, load = self.mlp(hn, aux)
        return x + y, loss, load


class DeepseekV2(nn.Module):
    """DeepSeek-V2 causal LM with the shared dscoder model interface (see module docstring)."""

    def __init__(self, config: DeepseekV2Config):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.hidden_size),
            layers=nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers)),
            norm=RMSNorm(config.hidden_size, eps=config.rms_norm_eps)))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rope = rope_table(config)

    def init_weights(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding, Gate)):
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def make_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> LatentCache:
        p = self.model.norm.weight  # a float parameter even when the Linears hold int8 (models/quant.py)
        return LatentCache(self.config, batch_size, max_len, device or p.device, dtype or p.dtype)

    def forward(self, input_ids: torch.Tensor, *, positions: torch.Tensor | None = None,
                cache: LatentCache | None = None, attn_mask: torch.Tensor | None = None,
                logits_to_keep: int = 0, return_aux: bool = False) -> torch.Tensor | LMOutput:
        """Logits (B, T, vocab), fp32 (only the last `logits_to_keep` positions when > 0).

        `return_aux=True` returns an `LMOutput`: the logits, the balance loss summed over the MoE layers (in
        training mode; None in eval mode) and the (n_moe_layers, E) expert pick counts."""
        b, t = input_ids.shape
        offset = cache.length if cache is not None else 0
        if cache is not None and offset + t > cache.max_len:
            raise ValueError(f"cache full: {offset} + {t} tokens > max_len {cache.max_len}")
        if positions is None:       # slots offset..offset+t-1: a slice of the table, no gather or host sync per step
            cos, sin = self.rope.table(offset + t, input_ids.device, torch.float32)
            cos, sin = cos[None, offset:offset + t], sin[None, offset:offset + t]  # (1, T, d_r)
        else:
            cos, sin = self.rope(positions, t, input_ids.device, torch.float32)  # (B, T, d_r)
        mask, is_causal = sdpa_mask(b, t, offset, attn_mask, input_ids.device)
        if cache is not None and is_causal:     # the absorbed path folds heads into T: SDPA's is_causal cannot apply
            mask, is_causal = attention_mask(t, 0, None, input_ids.device), False
        x = self.model.embed_tokens(input_ids)                                   # (B, T, h)
        want_aux = return_aux and self.training
        aux, loads = [], []
        for layer in self.model.layers:
            x, layer_aux, load = layer(x, cos, sin, cache, mask, is_causal, want_aux)
            if load is not None:
                loads.append(load)
            if layer_aux is not None:
                aux.append(layer_aux)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.model.norm(x)).float()
        if not return_aux:
            return logits
        # summed over MoE layers: the original adds each layer's loss to backward separately
        return LMOutput(logits, torch.stack(aux).sum() if aux else None, torch.stack(loads) if loads else None)
