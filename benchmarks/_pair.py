"""Shared by the side-by-side benchmarks: the model-shape flags, one random v1 model with the same weights in dscoder
and in transformers, the bytes a batch-1 decode step reads, and llama.cpp's model loading without extra buffer types.
Nothing here imports torch or dscoder at module level: the llama.cpp venv imports this file too."""
from __future__ import annotations

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def no_extra_buffers() -> None:
    """Load llama.cpp models with `use_extra_bufts` off (llama.cpp's --no-repack): on CPUs with AMX (this machine's
    Xeon), llama.cpp 0.3.36 puts Q8_0 weights in its AMX buffer type, and ggml_backend_amx_mul_mat segfaults on any
    batch of more than one token (gdb backtrace). Without it, Q8_0 runs on ggml's AVX512-VNNI dot products; F32 is
    unaffected. Runs in the llama.cpp venv's Python."""
    import llama_cpp.llama_cpp as C

    default = C.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p
    C.llama_model_default_params = params


def llama_preamble() -> str:
    """Code that a `python -c` in the llama.cpp venv runs first: import this file and call no_extra_buffers()."""
    return f"import sys; sys.path.insert(0, {str(BENCH_DIR)!r}); from _pair import no_extra_buffers; no_extra_buffers()\n"


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
