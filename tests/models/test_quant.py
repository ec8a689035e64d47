"""Weight-only int8 (`models/quant.py`): the kernel computes what the int8 weights stand for, both model families
load quantized with every Linear replaced, logits stay close to fp32, and bad input is a UserError."""
import copy
import platform

import pytest
import torch
from torch import nn

import dscoder
from dscoder.errors import UserError
from dscoder.infer.engine import Engine
from dscoder.models.hf import build_model, save_pretrained
from dscoder.models.presets import get_preset
from dscoder.models import quant
from dscoder.models.quant import Int8Linear, int8_targets, quantize_int8, quantize_weight

# Measured on seeded random tiny models: relative RMS logit error 0.021 (tiny) / 0.024 (tiny-moe), top-1
# agreement 0.95 / 0.91 (with bf16 activations; fp32 activations leave only the int8 weight rounding).
REL_RMS_TOL = 0.06
TOP1_MIN = 0.85


def test_quantize_weight_is_per_channel_symmetric():
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
    w[2] = 0.0                                     # an all-zero row keeps a usable scale
    w[3] *= 100.0                                  # one large row does not coarsen the others
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and scale.shape == (6,)
    assert q.abs().amax(dim=1).tolist() == [127, 127, 0, 127, 127, 127]
    assert torch.all((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-6)
    assert torch.equal(q[2], torch.zeros(32, dtype=torch.int8)) and scale[2] == 1.0


def test_int8_linear_runs_the_int8_kernel_on_the_quantized_weight():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48, bias=True)
    q8 = Int8Linear.from_linear(lin)
    x = torch.randn(3, 5, 64)
    y = q8(x)
    assert y.shape == (3, 5, 48) and y.dtype == torch.float32
    # fp32 activations are not rounded: the result is the dequantized weight's product, to fp32 rounding
    want = nn.functional.linear(x.double(), q8.dequantized().double(), lin.bias.double())
    assert (y - want).abs().max() <= 1e-5 * want.abs().max()
    assert (y - lin(x)).norm() <= 0.02 * lin(x).norm()
    # an input that needs a gradient gets one (the kernel is outside autograd; such inputs take the widened path)
    xg = x.clone().requires_grad_()
    q8(xg).sum().backward()
    assert torch.allclose(xg.grad, q8.dequantized().sum(0).expand_as(x), atol=1e-5)
    # cast after quantizing (scales no longer fp32): torch's kernel, not dscoder's reading the wrong bytes
    q64 = copy.deepcopy(q8).double()
    assert q64.scale.dtype == torch.float64
    with torch.no_grad():
        assert (q64(x) - want).abs().max() <= 1e-2 * want.abs().max()
    # bf16 activations go through torch's kernel: the reference rounds them to bf16 first
    yb = q8(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    want_b = nn.functional.linear(x.bfloat16().float(), q8.dequantized(), lin.bias)
    assert (yb.float() - want_b).abs().max() <= 1e-2 * want_b.abs().max()


def test_own_kernel_is_built_and_exact_on_every_instruction_set_and_shape():
    """Every instruction set this CPU has, row counts around the 4-row blocks and the prefill switch, K with and
    without a vector tail, N not a multiple of 4, with and without bias, one and two threads."""
    assert quant._int8mm is not None, "dscoder.models._int8mm was not built (setup.py needs a C compiler)"
    isas = [name for name in ("avx512", "avx2", "generic") if quant._int8mm.use(name)]
    assert "generic" in isas and (len(isas) > 1 or platform.machine() not in ("x86_64", "AMD64"))
    gen = torch.Generator().manual_seed(0)
    try:
        for isa in isas:
            assert quant._int8mm.use(isa) and quant._int8mm.isa() == isa
            for M, K, N, bias, threads in [(1, 7, 5, False, 1), (2, 16, 13, True, 1), (3, 100, 37, True, 1),
                                           (4, 64, 48, False, 1), (5, 1024, 130, True, 1), (9, 40, 7, True, 1),
                                           (32, 72, 9, False, 1), (33, 72, 9, True, 1), (1, 1024, 1100, True, 2),
                                           (6, 1024, 1030, False, 2)]:
                lin = nn.Linear(K, N, bias=bias)
                with torch.no_grad():
                    lin.weight.copy_(torch.randn(N, K, generator=gen))
                q8 = Int8Linear.from_linear(lin)
                x = torch.randn(M, K, generator=gen)
                want = nn.functional.linear(x.double(), q8.dequantized().double(),
                                            lin.bias.detach().double() if bias else None)
                prev = torch.get_num_threads()
                torch.set_num_threads(threads)
                try:
                    with torch.no_grad():
                        y = q8(x)
                finally:
                    torch.set_num_threads(prev)
                err = float((y.double() - want).abs().max() / want.abs().max())
                assert err <= 1e-5, (isa, M, K, N, bias, threads, err)
    finally:
        quant._int8mm.use(isas[0])


def _folder(tmp_path, preset: str):
    torch.manual_seed(0)
    model = build_model(get_preset(preset, initializer_range=0.02)).eval()
    save_pretrained(model, tmp_path / preset)
    return tmp_path / preset


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_load_model_int8_replaces_every_linear_and_stays_close_to_fp32(tmp_path, preset):
    folder = _folder(tmp_path, preset)
    ref = dscoder.load_model(folder)
    q = dscoder.load_model(folder, quantize="int8")
    linears = {n for n, m in q.named_modules() if type(m) is nn.Linear}
    int8 = {n for n, m in q.named_modules() if isinstance(m, Int8Linear)}
    # every Linear but V2's kv_b_proj (its weight is folded into absorbed-MLA decode), lm_head included
    assert linears == ({f"model.layers.{i}.self_attn.kv_b_proj" for i in range(4)} if preset == "tiny-moe" else set())
    assert "lm_head" in int8 and len(int8) == len(int8_targets(ref)) > 20
    assert all(m.weight_int8.dtype == torch.int8 for n, m in q.named_modules() if n in int8)

    ids = torch.randint(0, ref.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ref(ids), q(ids)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert (a - b).norm() / a.norm() <= REL_RMS_TOL
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= TOP1_MIN

    # the KV cache path of the quantized model agrees with its own full forward, and greedy decoding starts alike
    prompt = ids[:1, :16].tolist()
    out_q = Engine(q).generate(prompt, max_new_tokens=12)[0].tokens
    out_ref = Engine(ref).generate(prompt, max_new_tokens=12)[0].tokens
    with torch.no_grad():
        full = q(torch.tensor([prompt[0] + out_q[:-1]]))[0, 15:].argmax(-1).tolist()
    assert full == out_q
    assert out_q[:4] == out_ref[:4]


def test_bad_quantize_value_and_layer_without_int8_path(tmp_path):
    folder = _folder(tmp_path, "tiny")
    with pytest.raises(UserError, match="unknown quantize 'int4'"):
        dscoder.load_model(folder, quantize="int4")
    torch.manual_seed(0)
    # down_proj in_features 100, not a multiple of 16, in a bf16 model: torch's kernel runs bf16, and it cannot
    model = build_model(get_preset("tiny", intermediate_size=100)).to(torch.bfloat16)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(UserError, match=r"no int8 path for 4 layer\(s\): model\.layers\.0\.mlp\.down_proj "
                                        r"\(in_features 100\)"):
        quantize_int8(model)
    assert not any(isinstance(m, Int8Linear) for m in model.modules())   # nothing half-quantized
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
