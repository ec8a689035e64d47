"""DeepSeek-V2 parity with transformers' DeepseekV2ForCausalLM and checkpoint interop in the released layout.

Tiny random configs, fp32, YaRN on in every variant; max |Δlogits| <= 1e-4. Three folder kinds: one transformers
saves, one in the released (remote-code) layout, and dscoder's own export read back by transformers."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import DeepseekV2ForCausalLM

import dscoder
from dscoder.models.deepseek_v2 import DeepseekV2
from dscoder.models.hf import save_pretrained

from test_deepseek_v2 import random_model, tiny

VARIANTS = {
    "greedy": dict(),
    "q_lora": dict(q_lora_rank=24),
    "group_limited": dict(topk_method="group_limited_greedy", n_group=4, topk_group=2, num_experts_per_tok=3,
                          routed_scaling_factor=1.7),
    "all_moe_2_shared": dict(first_k_dense_replace=0, q_lora_rank=24, n_shared_experts=2),
}


def hf_logits(folder, ids, mask=None):
    ref = DeepseekV2ForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return ref(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("name", VARIANTS)
def test_export_loads_in_transformers_with_same_logits(name, tmp_path):
    cfg = tiny(**VARIANTS[name])
    model = random_model(cfg, seed=3)
    save_pretrained(model, tmp_path)
    ids = torch.randint(0, cfg.vocab_size, (2, 13))
    with torch.no_grad():
        ours = model(ids)
    assert (ours - hf_logits(tmp_path, ids)).abs().max().item() <= 1e-4
    back = dscoder.load_model(tmp_path)                                      # and our own round trip
    assert isinstance(back, DeepseekV2) and back.config == cfg
    with torch.no_grad():
        assert (back(ids) - ours).abs().max().item() <= 1e-6


def test_transformers_saved_folder_loads(tmp_path):
    cfg = tiny(q_lora_rank=24)
    save_pretrained(random_model(cfg, seed=4), tmp_path / "seed")
    ref = DeepseekV2ForCausalLM.from_pretrained(tmp_path / "seed", dtype=torch.float32).eval()
    ref.save_pretrained(tmp_path / "hf")                                     # transformers' own config + weights
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "rope_parameters" in written
    model = dscoder.load_model(tmp_path / "hf")
    ids = torch.randint(0, cfg.vocab_size, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0                                                          # left padding
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref_logits = ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        ours = model(ids, attn_mask=mask.bool(), positions=pos)
    assert (ours[0] - ref_logits[0]).abs().max().item() <= 1e-4
    assert (ours[1, 3:] - ref_logits[1, 3:]).abs().max().item() <= 1e-4


def test_released_layout_folder_loads(tmp_path):
    """config.json as the released remote-code checkpoints write it: rope_scaling block, "gready", auto_map."""
    cfg = tiny()
    model = random_model(cfg, seed=5)
    save_pretrained(model, tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    for k in ("rope_parameters", "torch_dtype"):
        d.pop(k, None)
    d.update(topk_method="gready", ep_size=1, torch_dtype="bfloat16",
             auto_map={"AutoConfig": "configuration_deepseek.DeepseekV2Config",
                       "AutoModelForCausalLM": "modeling_deepseek.DeepseekV2ForCausalLM"})
    (tmp_path / "config.json").write_text(json.dumps(d))
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert "model.layers.1.mlp.experts.7.gate_proj.weight" in keys and "model.layers.1.mlp.gate.weight" in keys
    loaded = dscoder.load_model(tmp_path)
    assert loaded.config.topk_method == "greedy"
    ids = torch.randint(0, cfg.vocab_size, (1, 9))
    with torch.no_grad():
        assert (loaded(ids) - model(ids)).abs().max().item() <= 1e-6


def test_norm_topk_prob_follows_original_not_transformers(tmp_path):
    """Documented deviation: transformers 5.23's router ignores norm_topk_prob (always scales by
    routed_scaling_factor); the original remote code normalises the top-k weights instead (V2's
    modeling_deepseek.py), and so
    do we. Both released configs set norm_topk_prob=false, where the two agree (the parity variants above)."""
    cfg = tiny(norm_topk_prob=True, routed_scaling_factor=3.0)
    model = random_model(cfg, seed=6)
    save_pretrained(model, tmp_path)
    ids = torch.randint(0, cfg.vocab_size, (1, 8))
    with torch.no_grad():
        ours = model(ids)
    assert (ours - hf_logits(tmp_path, ids)).abs().max().item() > 1e-3


def test_transformers_reads_the_same_lite_softmax_scale_and_rope_gain():
    """Config value parity on the real Lite settings: transformers turns our config.json into the same attention
    scale (mscale_all_dim²) and YaRN cos/sin gain (mscale / mscale_all_dim) as the original code."""
    from transformers import DeepseekV2Config as HFConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import yarn_apply_mscale

    from dscoder.models.deepseek_v2 import rope_table, softmax_scale
    from dscoder.models.presets import get_preset

    lite = get_preset("deepseek-coder-v2-lite")
    d = {k: v for k, v in lite.to_hf().items() if k not in ("model_type", "architectures", "torch_dtype")}
    hf = HFConfig(**d)
    assert yarn_apply_mscale(hf.rope_parameters, 192 ** -0.5) == pytest.approx(softmax_scale(lite), rel=1e-9)
    inv_freq, gain = ROPE_INIT_FUNCTIONS["yarn"](hf)
    ours = rope_table(lite)
    assert gain == pytest.approx(ours.scaling) and gain == pytest.approx(1.0)
    torch.testing.assert_close(inv_freq, ours.inv_freq, rtol=1e-6, atol=0)
