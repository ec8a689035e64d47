"""Shared by the side-by-side benchmarks: one random v1 model, the same weights in dscoder and in transformers."""
from __future__ import annotations


def llama_pair(args):
    """(dscoder Transformer, transformers LlamaForCausalLM) with identical fp32 weights, from the usual flags
    (--vocab --hidden --intermediate --layers --heads --kv-heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dscoder.models.config import ModelConfig
    from dscoder.models.hf import build_model

    cfg = ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=4096,
                      bos_token_id=None, eos_token_id=None)
    ours = build_model(cfg).float()
    hf = LlamaForCausalLM(LlamaConfig.from_dict(cfg.to_hf())).float()
    result = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not result.missing_keys and not result.unexpected_keys, result
    return ours, hf
