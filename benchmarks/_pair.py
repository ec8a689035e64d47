"""Shared by the side-by-side benchmarks: the model-shape flags, one random v1 model with the same weights in dscoder
and in transformers, and the bytes a batch-1 decode step reads."""
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


def add_shape_args(p, *, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int,
                   vocab: int) -> None:
    """The model-shape flags every side-by-side benchmark takes, with that benchmark's defaults."""
    p.add_argument("--hidden", type=int, default=hidden)
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--heads", type=int, default=heads)
    p.add_argument("--kv-heads", type=int, default=kv_heads)
    p.add_argument("--intermediate", type=int, default=intermediate)
    p.add_argument("--vocab", type=int, default=vocab)


def decode_bytes(model, prompt: int, new: int) -> tuple[float, float]:
    """(weight bytes, mean fp32 K/V-cache bytes) one batch-1 decode step reads: every parameter and buffer (int8
    weights are buffers) but the embedding table, plus the one row looked up; K/V averaged over the decode steps."""
    emb = model.model.embed_tokens.weight
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    weights += emb.shape[1] * emb.element_size() - emb.numel() * emb.element_size()
    c = model.config
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4 * (prompt + (new + 1) / 2)
    return float(weights), kv
