"""Named model presets: the released DeepSeek-Coder configs, plus tiny ones for CPU tests and the demo.

Sources: the released v1 config.json files (cross-checked with the v1 paper's Table 2) and the released V2 config.json.
`get_preset("tiny", vocab_size=4096)` returns a fresh config with overrides applied (unknown override -> error).
"""
from __future__ import annotations

from .config import DeepseekV2Config, ModelConfig

_V1 = dict(vocab_size=32256, max_position_embeddings=16384, rope_theta=100000.0, rope_scaling_factor=4.0,
           rms_norm_eps=1e-6, bos_token_id=32013, eos_token_id=32014)

PRESETS: dict[str, ModelConfig | DeepseekV2Config] = {
    # deepseek-ai/deepseek-coder-1.3b-base config.json: 1.35B params
    "deepseek-coder-1.3b": ModelConfig(**_V1, hidden_size=2048, intermediate_size=5504, num_hidden_layers=24,
                                       num_attention_heads=16, num_key_value_heads=16),
    # deepseek-coder-5.7bmqa-base (config seen only through a GPTQ copy): MQA, one KV head
    "deepseek-coder-5.7b-mqa": ModelConfig(**_V1, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                           num_attention_heads=32, num_key_value_heads=1),
    # deepseek-coder-6.7b-base: 6.74B params
    "deepseek-coder-6.7b": ModelConfig(**_V1, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=32),
    # deepseek-coder-33b-base: GQA with 8 KV heads; 33.3B params
    "deepseek-coder-33b": ModelConfig(**_V1, hidden_size=7168, intermediate_size=19200, num_hidden_layers=62,
                                      num_attention_heads=56, num_key_value_heads=8),
    # CPU demo / tests: a few M params; GQA so the grouped path is always exercised. vocab set from the tokenizer.
    "tiny": ModelConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
                        rope_theta=100000.0, rope_scaling_factor=1.0, bos_token_id=None, eos_token_id=None),
    # DeepSeek-Coder-V2-Lite-Base: 15.7B total / 2.4B active
    "deepseek-coder-v2-lite": DeepseekV2Config(),
    # DeepSeek-Coder-V2-Base (236B total / 21B active): q compression, 160 experts, group-limited routing
    "deepseek-coder-v2": DeepseekV2Config(hidden_size=5120, intermediate_size=12288, moe_intermediate_size=1536,
                                          num_hidden_layers=60, num_attention_heads=128, num_key_value_heads=128,
                                          q_lora_rank=1536, n_routed_experts=160, topk_method="group_limited_greedy",
                                          n_group=8, topk_group=3, routed_scaling_factor=16.0),
    # CPU tests / demo for the MoE path: MLA + 8 routed experts (top-2) + 1 shared, YaRN on.
    "tiny-moe": DeepseekV2Config(vocab_size=4096, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                 q_lora_rank=None, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16,
                                 v_head_dim=32, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                                 max_position_embeddings=4096,
                                 rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
                                               "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707,
                                               "mscale_all_dim": 0.707},
                                 bos_token_id=None, eos_token_id=None),
}


def get_preset(name: str, **overrides) -> ModelConfig | DeepseekV2Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
