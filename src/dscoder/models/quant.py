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
    _weight_int8pack_mm, bf16 activations                   599 / 381 / 5095
    _weight_int8pack_mm, fp32 activations                  2010 / 1956 / 23331
    bf16 weights, F.linear (oneDNN)                         816 / 615 / 8093
    fp16 weights, quantized.linear_dynamic_fp16 (fbgemm)    709 / 572 / 7158
    int8 x int8 torch._int_mm, per-token activation scale   644 / 487 / 6028
    quantized.linear_dynamic (fbgemm), int8 activations     402 / 315 / 3646
    quantized.linear_dynamic (onednn), int8 activations     358 / 382 / 3770
    inductor: fused int8->fp32 convert + row reduction      as fast as the aten kernel
    inductor max-autotune C++ template for the aten op      slower, and wrong outputs in torch 2.13
torch's weight-only kernel reads weights at about 45% of the speed MKL's fp32 GEMV does: its loads are not
overlapped with its arithmetic. The dynamic-quantisation kernels are faster but round the activations to 8 bits
with one scale per tensor, a different accuracy contract. So dscoder has its own kernel (`_int8mm.c`, built by
setup.py): fp32 activations, int8 weights widened to fp32 in registers, four weight rows against up to four
activation rows per pass, software prefetch 4 KB ahead. Same machine, same method, against torch's kernel in the
same run: 287 / 258 / 2709 us against 457 / 337 / 4100 (11-12 GB/s of int8 weights from memory, 23-31 GB/s from
cache). Rows per call, 3072 x 1024 (ms): 1-32 rows it is fastest (0.19 ms at 4 rows, 1.50 at 32, against 1.71 for
MKL fp32 and 2.33 for torch's int8 kernel); at 128 and 512 rows (a prefill) widening the int8 weight to fp32 a
slice at a time and calling MKL's fp32 GEMM wins (5.1 / 16.3 ms against 6.1 / 33.4), so `Int8Linear` switches
there (KERNEL_MAX_ROWS). Nothing rounds the activations, so the only error is the int8 weight rounding.

torch's kernel stays for activations that are not fp32 (a bf16 model) and for an install without a C compiler;
it runs bf16 activations (fp32 ones have no vectorised path there) and accumulates in fp32, which adds about 2^-9
relative error per element, below the int8 weight rounding itself.

What stays in floating point, and why:
* the token embedding: a lookup that reads B rows per step, not a matrix product;
* DeepSeek-V2's `kv_b_proj`: the absorbed-MLA decode uses its weight as two per-head tensors folded into the
  query and output (`deepseek_v2.MLA._absorbed`), not as a Linear; it is 0.4% of V2-Lite's weights;
* V2's MoE router (`Gate`, not a Linear): routing is computed in fp32 by design (V2's modeling_deepseek.py).
A Linear with no int8 path -- on torch's kernel, `in_features` not a multiple of 16 (it reads K in blocks of 16;
other sizes gave wrong results or a crash when measured), or a device where it does not run -- is a UserError
naming the layer, raised before any layer is changed. dscoder's kernel takes any size.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

try:                                         # built by setup.py; absent when the install had no C compiler
    from . import _int8mm
except ImportError:                          # pragma: no cover - every supported install builds it
    _int8mm = None

QUANTIZE = ("none", "int8")                  # the values `load_model(quantize=...)` and `--quantize` accept
COMPUTE_DTYPE = torch.bfloat16               # activations inside torch's int8 kernel (see the module docstring)
_K_BLOCK = 16                                # torch's CPU int8 kernel reads K in blocks of 16
KERNEL_MAX_ROWS = 32                         # more rows than this: widen to fp32 once and use the fp32 GEMM
_WIDEN_BYTES = 1 << 24                       # fp32 weight slice widened at a time on that path (16 MiB)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight (N, K), fp32 scale (N,)) with w ≈ q * scale[:, None]; an all-zero row gets scale 1."""
    w = w.detach().float()
    amax = w.abs().amax(dim=1)                                               # (N,)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)     # (N, K)
    return q.contiguous(), scale


def own_kernel(x: torch.Tensor) -> bool:
    """Whether `Int8Linear` runs activations like `x` through dscoder's kernel (fp32 on the CPU, extension built)."""
    return _int8mm is not None and x.dtype == torch.float32 and x.device.type == "cpu"


class Int8Linear(nn.Module):
    """y = (x qᵀ) * scale (+ bias); the output has the input's dtype.

    fp32 on the CPU: up to KERNEL_MAX_ROWS rows (decode steps, speculative verification, decode batches) through
    dscoder's kernel (`_int8mm.c`); more rows (a prefill) widen the int8 weight to fp32 a slice at a time and use
    the fp32 GEMM, then scale. Any other dtype or device: torch's `aten._weight_int8pack_mm`, bf16 activations."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight_int8", q.contiguous())                 # (N, K) int8
        self.register_buffer("scale", scale.float().contiguous())           # (N,) fp32
        self.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q, scale = quantize_weight(linear.weight)
        return cls(q.to(linear.weight.device), scale.to(linear.weight.device), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        # the kernel reads raw pointers: fp32 scales on the CPU (a module moved or cast after quantizing has not)
        if own_kernel(x) and self.weight_int8.is_cpu and self.scale.dtype == torch.float32:
            x2 = x.reshape(-1, self.in_features).contiguous()                 # (M, K)
            # the kernel is outside autograd: an input that needs a gradient takes the widened path
            small = x2.shape[0] <= KERNEL_MAX_ROWS and not (x.requires_grad and torch.is_grad_enabled())
            y = self._kernel(x2) if small else self._widened(x2)
        else:
            x2 = x.reshape(-1, self.in_features).to(COMPUTE_DTYPE).contiguous()
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scale.to(COMPUTE_DTYPE)).to(x.dtype)
            if self.bias is not None:
                y = y + self.bias.to(x.dtype)
        return y.view(*lead, self.out_features)

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        M, N = x.shape[0], self.out_features
        y = torch.empty(M, N, dtype=torch.float32)
        bias = self.bias.detach().float().contiguous() if self.bias is not None else None
        _int8mm.mm(x.data_ptr(), M, self.in_features, self.weight_int8.data_ptr(), self.scale.data_ptr(),
                   bias.data_ptr() if bias is not None else 0, y.data_ptr(), N, 0, N, torch.get_num_threads())
        return y

    def _widened(self, x: torch.Tensor) -> torch.Tensor:
        step = max(1, _WIDEN_BYTES // (4 * self.in_features))
        y = torch.cat([nn.functional.linear(x, self.weight_int8[i:i + step].float())
                       for i in range(0, self.out_features, step)], dim=1) * self.scale
        return y + self.bias.float() if self.bias is not None else y

    def dequantized(self) -> torch.Tensor:
        """The fp32 weight (N, K) the int8 values stand for (for tests and export, never on the hot path)."""
        return self.weight_int8.float() * self.scale[:, None]

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


def _kernel_user() -> str:
    return ("runs models that are not fp32 on the CPU" if _int8mm is not None
            else "runs every int8 layer here (dscoder's own kernel was not built: no C compiler at install)")


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace the Linear layers named by `int8_targets` with `Int8Linear`, in place; returns the model.

    Every layer is checked first, so a UserError leaves the model unchanged."""
    names = int8_targets(model)
    mods = dict(model.named_modules())
    # layers whose activations will not be fp32 on the CPU go through torch's kernel: its limits apply
    aten = [n for n in names if not own_kernel(mods[n].weight)]
    bad = [f"{n} (in_features {mods[n].in_features})" for n in aten if mods[n].in_features % _K_BLOCK]
    if bad:
        raise UserError(f"no int8 path for {len(bad)} layer(s): {', '.join(bad[:4])}"
                        f"{' ...' if len(bad) > 4 else ''}; torch's int8 kernel, which {_kernel_user()}, needs "
                        f"in_features divisible by {_K_BLOCK} (use quantize='none')")
    for dev in sorted({str(mods[n].weight.device) for n in aten}):
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
