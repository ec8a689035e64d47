"""The primitives both architectures share: RMSNorm, rotary position embeddings (RoPE), the SwiGLU MLP, the
attention mask over a KV cache, and `LMOutput` (what `forward(..., return_aux=True)` returns).

v1 paper §3.3 (decoder-only, RoPE, SwiGLU) and the released v1 config.json: RoPE is the Hugging Face Llama variant, the
half-split `rotate_half` layout, with linear position interpolation (positions / factor) for long context
(v1 paper §3.6). DeepSeek-V2 (MLA) reuses all of them; its YaRN frequencies (V2's modeling_deepseek.py) close this file.

Numerics follow the HF reference so checkpoints give the same logits: RMSNorm computes in fp32 and casts back
before the weight; RoPE tables are built in fp32 and cast to the activations' dtype.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = weight * (x / sqrt(mean(x²) + eps)), the normalisation computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # fp32 throughout: the fused kernel gives the same result with one pass (and a cheaper backward)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # HF order: normalise in fp32, cast back to the input dtype, then scale by the weight
        y = F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)
        return self.weight * y

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class SwiGLU(nn.Module):
    """The Llama MLP: down(silu(gate(x)) * up(x)), no biases (parameter names as in HF checkpoints)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def linear_inv_freq(head_dim: int, theta: float, factor: float = 1.0) -> torch.Tensor:
    """RoPE inverse frequencies theta^(-2i/d), i < d/2, fp32 (d/2,).

    Linear scaling (position interpolation) divides every position by `factor`, which is the same as
    dividing the frequencies by it."""
    # explicit CPU: a model built under `torch.device("meta")` (checkpoint loading) still needs real frequencies
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    return 1.0 / (theta ** exponent) / factor


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float = 1.0,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (B, T, D) for integer positions (B, T), in the half-split layout: the d/2 angles repeated
    twice. `attention_scaling` multiplies both (YaRN's mscale; 1 for plain RoPE)."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(positions.device, torch.float32)  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
    return (emb.cos() * attention_scaling).to(dtype), (emb.sin() * attention_scaling).to(dtype)


class RopeTable:
    """cos/sin for positions 0..n-1, computed once per (length, device, dtype) and grown on demand, so a
    training step or decode step costs one gather instead of a sin/cos over the whole sequence.

    Not an nn.Module buffer on purpose: `model.to(bfloat16)` must not round the fp32 frequencies."""

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float = 1.0):
        self.inv_freq = inv_freq.float()
        self.scaling = attention_scaling
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def table(self, n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (n', D) with n' >= n."""
        key = (device, dtype)
        cached = self._tables.get(key)
        if cached is None or cached[0].shape[0] < n:
            size = max(n, 2 * cached[0].shape[0] if cached is not None else n)
            # a table first built while generating under torch.inference_mode is reused by training (GRPO
            # samples, then back-propagates); inference tensors cannot be saved for backward, so build a normal one
            with torch.inference_mode(False):
                pos = torch.arange(size, device=device, dtype=torch.int64)[None]  # (1, n)
                cos, sin = rope_cos_sin(pos, self.inv_freq, self.scaling, dtype)
            cached = self._tables[key] = (cos[0], sin[0])
        return cached

    def __call__(self, positions: torch.Tensor | None, T: int, device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for `positions` (B, T) -> (B, T, D); positions None means 0..T-1 -> (1, T, D)."""
        if positions is None:
            cos, sin = self.table(T, device, dtype)
            return cos[None, :T], sin[None, :T]
        n = int(positions.max()) + 1 if positions.numel() else 1
        cos, sin = self.table(n, device, dtype)
        return cos[positions], sin[positions]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, D) by cos/sin (B or 1, T, D) in the half-split layout: x*cos + rotate_half(x)*sin."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D): broadcast over heads
    return x * cos + rotate_half(x) * sin


class LMOutput(NamedTuple):
    """`model(input_ids, return_aux=True)`: the logits plus what training reads besides them.

    A NamedTuple so DDP, FSDP and torch.compile pass it through like a tuple."""
    logits: torch.Tensor                        # (B, T or logits_to_keep, vocab), fp32
    aux_loss: torch.Tensor | None = None        # MoE balance loss summed over layers, x aux_loss_alpha; training only
    expert_load: torch.Tensor | None = None     # (n_moe_layers, n_routed_experts) int64 picks, on the model's device


# ----------------------------------------------------------------------------------------------- attention mask
def attention_mask(T: int, L: int, key_mask: torch.Tensor | None, device) -> torch.Tensor:
    """Boolean (B or 1, 1, T, L+T): query i (slot L+i) may see slot j iff j <= L+i and key_mask[b, j].

    A query always sees its own slot, so a left-padding query (whose every key is masked) gets a finite
    row instead of NaN; its output is never used."""
    q_slot = torch.arange(L, L + T, device=device)[:, None]  # (T, 1)
    k_slot = torch.arange(L + T, device=device)[None, :]  # (1, L+T)
    causal = k_slot <= q_slot  # (T, L+T)
    if key_mask is None:
        return causal[None, None]
    return ((causal[None] & key_mask[:, None, :]) | (k_slot == q_slot)[None])[:, None]  # (B, 1, T, L+T)


def sdpa_mask(B: int, T: int, L: int, key_mask: torch.Tensor | None,
              device) -> tuple[torch.Tensor | None, bool]:
    """(mask, is_causal) for T new tokens after L cached slots; `key_mask` (B, L+T) is False on padding slots.

    mask None keeps SDPA's fast kernels for the common cases: is_causal for a fresh sequence, nothing at all for
    one new token that sees every earlier slot. A 4-D `key_mask` (B, 1, T, L+T) is a whole boolean mask (True: may
    attend), used as given: e.g. the block-diagonal mask of packed fine-tuning rows."""
    if key_mask is not None and key_mask.dim() == 4:
        if tuple(key_mask.shape) != (B, 1, T, L + T):
            raise ValueError(f"attn_mask has shape {tuple(key_mask.shape)}, expected {(B, 1, T, L + T)}")
        return key_mask.to(device=device, dtype=torch.bool), False
    if key_mask is not None:
        if tuple(key_mask.shape) != (B, L + T):
            raise ValueError(f"attn_mask has shape {tuple(key_mask.shape)}, expected {(B, L + T)} "
                             f"(batch, {'cached slots + ' if L else ''}new tokens)")
        return attention_mask(T, L, key_mask.to(device=device, dtype=torch.bool), device), False
    if L == 0:
        return None, T > 1
    if T == 1:
        return None, False
    return attention_mask(T, L, None, device), False


# ----------------------------------------------------------------------------------------------- YaRN (DeepSeek-V2)
def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN attention gain 0.1·mscale·ln(factor) + 1 (1.0 when factor <= 1)."""
    return 1.0 if factor <= 1.0 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_correction_range(dim: int, base: float, original_max_pos: int, beta_fast: float,
                          beta_slow: float) -> tuple[int, int]:
    """(low, high) rotary pair indices between which YaRN blends; V2 (64, 1e4, 4096, 32, 1) -> (10, 23).

    cdim(r) = dim·ln(L_orig / (2π·r)) / (2·ln base) is the pair index that turns r times over L_orig."""
    def cdim(r: float) -> float:
        return dim * math.log(original_max_pos / (r * 2 * math.pi)) / (2 * math.log(base))
    return max(math.floor(cdim(beta_fast)), 0), min(math.ceil(cdim(beta_slow)), dim - 1)


def yarn_inv_freq(dim: int, base: float, factor: float, original_max_pos: int, beta_fast: float = 32.0,
                  beta_slow: float = 1.0) -> torch.Tensor:
    """YaRN inverse frequencies (dim/2,) fp32: pairs below `low` keep base^(-2i/d) (high frequency, extrapolate),
    pairs above `high` are divided by `factor` (interpolate), linear blend in between."""
    pos_freq = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    extra, inter = 1.0 / pos_freq, 1.0 / (factor * pos_freq)
    low, high = yarn_correction_range(dim, base, original_max_pos, beta_fast, beta_slow)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)).clamp(0, 1)
    keep = 1.0 - ramp                                  # 1: original frequency, 0: fully interpolated
    return inter * (1 - keep) + extra * keep
