"""Weight-only int8: every Linear's weight stored as int8 with one symmetric scale per output channel.

    model = dscoder.load_model("ckpt", quantize="int8")   # or quantize_int8(model) on a loaded model
    logits = model(input_ids)                             # same interface; Linear weights take 1/4 of fp32's bytes

W (N, K) -> q = round(W / s) clamped to [-127, 127] with s = max_k |W[n, k]| / 127 per output row n, so
y = x Wᵀ ≈ (x qᵀ) * s. Batch-1 decode reads every weight once per token, so a quarter of the bytes is up to four
times fewer cycles waiting on memory.

Kernel choice, measured (1 thread, batch 1, torch 2.13). First on a 2-core AMD EPYC machine, W 5632 x 2048:
    fp32 F.linear (MKL GEMV)                                10.3 ms
    torch.ops.aten._weight_int8pack_mm, bf16 activations     4.7 ms  (casts in and out included)
    torch.ops.aten._weight_int8pack_mm, fp32 activations    46.0 ms  (no vectorised fp32 path)
    dequantize to fp32 + F.linear                          214   ms
Then on a 2-core Intel Xeon with AVX512-VNNI and AMX (a shared machine: CPU time, best of 5, weights cycled
through > 300 MB so that they come from memory), microseconds for the decode shapes of the 169M model
(3072 x 1024 fused qkv, 1024 x 2816 down, 32256 x 1024 lm_head):
    fp32 F.linear (MKL)                                     913 / 837 / 9227
    _weight_int8pack_mm, bf16 activations                   599 / 381 / 5095   <- used
    _weight_int8pack_mm, fp32 activations                  2010 / 1956 / 23331
    bf16 weights, F.linear (oneDNN)                         816 / 615 / 8093
    fp16 weights, quantized.linear_dynamic_fp16 (fbgemm)    709 / 572 / 7158
    int8 x int8 torch._int_mm, per-token activation scale   644 / 487 / 6028
    quantized.linear_dynamic (fbgemm), int8 activations     402 / 315 / 3646
    quantized.linear_dynamic (onednn), int8 activations     358 / 382 / 3770
    inductor: fused int8->fp32 convert + row reduction      as fast as the aten kernel
    inductor max-autotune C++ template for the aten op      slower, and wrong outputs in torch 2.13
The dynamic-quantisation kernels are 1.3-1.5x faster but round the activations to 8 bits with one scale per
tensor: a different accuracy contract from weight-only int8, so they are not used. The weight-only kernel reads
weights at about 45% of the speed MKL's fp32 GEMV does (it reaches 15-18 GMAC/s when the weight is in cache, 6-7
from memory): its loads are not overlapped with its arithmetic, which bounds int8 decode on one thread.
So `Int8Linear` casts the activations to bfloat16 around the int8 kernel and casts the output back to the input
dtype. The kernel accumulates in fp32; rounding x and y to bf16 adds about 2^-9 relative error per element, below
the int8 weight rounding itself. For prefill (128 rows) the same kernel is about 1.25x slower than fp32 GEMM (211
against 169 ms), a one-off cost per request that the decode steps repay.

What stays in floating point, and why:
* the token embedding: a lookup that reads B rows per step, not a matrix product;
* DeepSeek-V2's `kv_b_proj`: the absorbed-MLA decode uses its weight as two per-head tensors folded into the
  query and output (`deepseek_v2.MLA._absorbed`), not as a Linear; it is 0.4% of V2-Lite's weights;
* V2's MoE router (`Gate`, not a Linear): routing is computed in fp32 by design (V2's modeling_deepseek.py).
A Linear with no int8 path -- `in_features` not a multiple of 16 (the CPU kernel reads K in blocks of 16; other
sizes gave wrong results or a crash when measured), or a device where the kernel does not run -- is a UserError
naming the layer, raised before any layer is changed.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

QUANTIZE = ("none", "int8")                  # the values `load_model(quantize=...)` and `--quantize` accept
COMPUTE_DTYPE = torch.bfloat16               # activations inside the int8 kernel (see the module docstring)
_K_BLOCK = 16


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight (N, K), fp32 scale (N,)) with w ≈ q * scale[:, None]; an all-zero row gets scale 1."""
    w = w.detach().float()
    amax = w.abs().amax(dim=1)                                               # (N,)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)     # (N, K)
    return q.contiguous(), scale


class Int8Linear(nn.Module):
    """y = (x qᵀ) * scale (+ bias) through `aten._weight_int8pack_mm`; the output has the input's dtype."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight_int8", q)                               # (N, K) int8
        self.register_buffer("scale", scale.to(COMPUTE_DTYPE))               # (N,) the kernel takes x's dtype
        self.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q, scale = quantize_weight(linear.weight)
        return cls(q.to(linear.weight.device), scale.to(linear.weight.device), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(COMPUTE_DTYPE).contiguous()  # (M, K)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scale).to(x.dtype)  # (M, N)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*lead, self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The fp32 weight (N, K) the int8 values stand for (for tests and export, never on the hot path)."""
        return self.weight_int8.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# modules (by name suffix) whose weight is read as a tensor, not applied as a Linear: kept in floating point
KEEP_FLOAT = ("self_attn.kv_b_proj",)


def int8_targets(model: nn.Module) -> list[str]:
    """Names of the Linear modules `quantize_int8` replaces."""
    return [name for name, m in model.named_modules()
            if type(m) is nn.Linear and not name.endswith(KEEP_FLOAT)]


def _kernel_runs(device: torch.device) -> str | None:
    """None if the int8 kernel runs on `device`, else the reason."""
    try:
        x = torch.ones(1, _K_BLOCK, dtype=COMPUTE_DTYPE, device=device)
        w = torch.ones(2, _K_BLOCK, dtype=torch.int8, device=device)
        y = torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(2, dtype=COMPUTE_DTYPE, device=device))
    except (RuntimeError, NotImplementedError) as e:
        return " ".join(str(e).split())[:200]
    return None if float(y[0, 0]) == _K_BLOCK else f"it returned {float(y[0, 0])} for a known product"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace the Linear layers named by `int8_targets` with `Int8Linear`, in place; returns the model.

    Every layer is checked first, so a UserError leaves the model unchanged."""
    names = int8_targets(model)
    mods = dict(model.named_modules())
    bad = [f"{n} (in_features {mods[n].in_features})" for n in names if mods[n].in_features % _K_BLOCK]
    if bad:
        raise UserError(f"no int8 path for {len(bad)} layer(s): {', '.join(bad[:4])}"
                        f"{' ...' if len(bad) > 4 else ''}; the int8 kernel needs in_features divisible by "
                        f"{_K_BLOCK} (use quantize='none')")
    for dev in sorted({str(mods[n].weight.device) for n in names}):
        reason = _kernel_runs(torch.device(dev))
        if reason is not None:
            raise UserError(f"no int8 path on device {dev}: torch's int8 weight kernel does not run there "
                            f"({reason}); use quantize='none' or the CPU")
    with torch.no_grad():
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, Int8Linear.from_linear(mods[name]))
    return model


def check_quantize(quantize: str | None) -> str:
    """'none' or 'int8'; anything else is a UserError."""
    q = "none" if quantize is None else quantize
    if q not in QUANTIZE:
        raise UserError(f"unknown quantize {quantize!r}; use one of: {', '.join(QUANTIZE)}")
    return q
