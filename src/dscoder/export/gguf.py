"""GGUF export: a dscoder / Hugging Face checkpoint folder as one file that llama.cpp and Ollama load.

    dscoder export gguf --model DIR --out model.gguf [--type f32|f16|q8_0]
    export_gguf("ckpt", "model.gguf", "q8_0")            # the same from Python

Written with the `gguf` package (the writer llama.cpp ships in gguf-py), following llama.cpp's
`convert_hf_to_gguf.py` for `LlamaForCausalLM` (DeepSeek-Coder v1's released config.json names it):
* architecture `llama`; tensor names from `gguf.get_tensor_name_map` (`model.layers.0.self_attn.q_proj.weight`
  -> `blk.0.attn_q.weight`, ...); q_proj and k_proj rows permuted from the HF half-split RoPE layout to the
  interleaved pairs GGML rotates (`LlamaModel.permute`); a tied checkpoint has no `output.weight`;
* 1-D tensors (the norms) stay F32; the matrices take `--type` (Q8_0 = blocks of 32 weights with one f16 scale;
  a matrix whose rows are not a multiple of 32 falls back to F16, as the converter does);
* hyperparameters: context, embedding, feed-forward and block counts, heads and KV heads, head size, RoPE base
  and dimension, RMSNorm epsilon, vocabulary size, and linear RoPE scaling (type + factor) when the factor is
  not 1;
* tokenizer: `tokenizer.ggml.model` "gpt2" (byte-level BPE) with pre-tokenizer "deepseek-coder" (the regexes of
  `tokenizer/bpe.py`, the released tokenizer.json), every token with its type (added special tokens CONTROL, other
  added tokens
  USER_DEFINED, ids past the tokenizer `[PAD{i}]` UNUSED), the merges, BOS / EOS / EOT and the FIM prefix /
  suffix / middle ids from `tokenizer/special.py` (PSM: fim▁begin, fim▁hole, fim▁end), add-BOS, the chat template.

DeepSeek-V2 folders follow the converter's `DeepseekV2Model` (architecture `deepseek2`): MLA written as
multi-query attention (head_count_kv 1, key length d_c + d_r, value length d_c, plus the per-head MLA lengths);
`kv_b_proj` split into `attn_k_b` (heads, d_c, d_nope) and `attn_v_b` (heads, d_v, d_c) for the absorbed decode;
each layer's routed experts stacked into one (experts, out, in) tensor per projection; the router
(`ffn_gate_inp`) kept F32; leading dense blocks, expert counts and sizes, routed scaling, YaRN (factor, original
context, betas, log-multiplier 0.1 x mscale_all_dim). No q/k permutation: V2 checkpoints already store RoPE
dimensions as adjacent pairs, which is GGML's layout. The pre-tokenizer is "deepseek-coder" when tokenizer.json
holds `tokenizer/bpe.py`'s regexes, else "deepseek-llm", the released V2 tokenizer's (the released tokenizer.json).

`scripts/check_llamacpp.py` runs both architectures' files through llama.cpp (llama-cpp-python 0.3.36): F32
logits equal dscoder's within fp32 rounding, greedy and fill-in-the-middle tokens are identical.

The file is written under a temporary name in the output's folder and renamed into place when complete, so a
failed or interrupted export leaves nothing at the output path.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserError

TYPES = ("f32", "f16", "q8_0")
ARCHS = {"llama": "llama", "deepseek_v2": "deepseek2"}     # config.json model_type -> GGUF architecture


def permute_qk(w, n_head: int):
    """HF half-split RoPE rows -> GGML's interleaved pairs, per head (llama.cpp `LlamaModel.permute`).
    w: (n_head * head_dim, hidden); inverse: `unpermute_qk`."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w, n_head: int):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_out(out: str | os.PathLike) -> Path:
    path = Path(out)
    if path.is_dir():
        raise UserError(f"--out {str(path)!r} is a folder; give a file name such as model.gguf")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"--out {str(path)!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {str(path)!r}: folder {str(parent)!r} is not writable")
    return path


def _llama_tensors(sd: dict, config) -> Iterator[tuple[str, Any]]:
    """(HF-style name, fp32 numpy array) for every tensor, q/k rows permuted."""
    for hf_name, t in sd.items():
        data = t.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute_qk(data, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_qk(data, config.num_key_value_heads)
        yield hf_name, data


_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


def _v2_tensors(sd: dict, config) -> Iterator[tuple[str, Any]]:
    """(HF-style name, fp32 numpy array): kv_b_proj split into k_b_proj (H, d_c, d_nope) and v_b_proj
    (H, d_v, d_c); each layer's routed experts stacked per projection as `mlp.experts.{proj}.weight` (E, out, in)."""
    import numpy as np

    experts: dict[tuple[int, str], dict[int, Any]] = {}
    h, d_nope, d_v = config.num_attention_heads, config.qk_nope_head_dim, config.v_head_dim
    for hf_name, t in sd.items():
        data = t.detach().float().cpu().numpy()
        m = _EXPERT.fullmatch(hf_name)
        if m:
            experts.setdefault((int(m[1]), m[3]), {})[int(m[2])] = data
        elif hf_name.endswith("kv_b_proj.weight"):
            kv_b = data.reshape(h, d_nope + d_v, data.shape[-1])                  # (H, d_nope + d_v, d_c)
            yield hf_name.replace("kv_b_proj", "k_b_proj"), np.ascontiguousarray(kv_b[:, :d_nope].transpose(0, 2, 1))
            yield hf_name.replace("kv_b_proj", "v_b_proj"), np.ascontiguousarray(kv_b[:, d_nope:])
        else:
            yield hf_name, data
    for (layer, proj), per in sorted(experts.items()):
        if sorted(per) != list(range(config.n_routed_experts)):
            raise UserError(f"layer {layer} has {proj} weights for {len(per)} of {config.n_routed_experts} experts")
        yield f"model.layers.{layer}.mlp.experts.{proj}.weight", np.stack([per[e] for e in range(len(per))])


def _tensors(sd: dict, config) -> Iterator[tuple[str, Any]]:
    """(GGUF name, fp32 numpy array) for every tensor of the checkpoint."""
    import gguf

    arch = gguf.MODEL_ARCH.LLAMA if config.model_type == "llama" else gguf.MODEL_ARCH.DEEPSEEK2
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    for hf_name, data in (_llama_tensors if config.model_type == "llama" else _v2_tensors)(sd, config):
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"cannot export tensor {hf_name!r}: no {ARCHS[config.model_type]} GGUF name for it")
        yield name, data


def _add_tensor(writer, name: str, data, kind: str) -> None:
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    # the converter keeps 1-D tensors, norms and the MoE router in F32
    f32 = data.ndim <= 1 or name.endswith(("_norm.weight", "ffn_gate_inp.weight")) or kind == "f32"
    qtype = Q.F32 if f32 else \
        Q.F16 if kind == "f16" else Q.Q8_0
    try:
        raw = gguf.quants.quantize(data.astype(np.float32), qtype)
    except gguf.QuantError:     # rows not a multiple of the block size: F16, as convert_hf_to_gguf.py does
        qtype = Q.F16
        raw = gguf.quants.quantize(data.astype(np.float32), qtype)
    writer.add_tensor(name, raw, raw_dtype=qtype)


def _hparams(writer, config, folder: Path, kind: str) -> None:
    import gguf

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind]
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(folder.resolve().name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(file_type)
    writer.add_vocab_size(config.vocab_size)
    (_llama_hparams if config.model_type == "llama" else _v2_hparams)(writer, config)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _llama_hparams(writer, config) -> None:
    import gguf

    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_key_length(config.head_dim)      # config.json carries head_dim, so the converter writes both
    writer.add_value_length(config.head_dim)
    if config.rope_scaling_factor != 1.0:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(config.rope_scaling_factor)


def _v2_hparams(writer, config) -> None:
    import gguf

    if config.moe_layer_freq != 1:
        raise UserError(f"moe_layer_freq {config.moe_layer_freq}: llama.cpp's deepseek2 needs every layer after the "
                        "leading dense ones to be MoE (moe_layer_freq 1)")
    d_c, d_r = config.kv_lora_rank, config.qk_rope_head_dim
    writer.add_head_count_kv(1)                 # MLA runs as multi-query attention over the latent
    writer.add_leading_dense_block_count(config.first_k_dense_replace)
    # 0 = no query compression (V2-Lite's q_proj): llama.cpp 0.3.36 requires the key and reads 0 as "use attn_q"
    writer.add_q_lora_rank(config.q_lora_rank or 0)
    writer.add_kv_lora_rank(d_c)
    writer.add_key_length(d_c + d_r)
    writer.add_value_length(d_c)
    writer.add_key_length_mla(config.qk_nope_head_dim + d_r)
    writer.add_value_length_mla(config.v_head_dim)
    writer.add_expert_feed_forward_length(config.moe_intermediate_size)
    writer.add_expert_count(config.n_routed_experts)
    writer.add_expert_used_count(config.num_experts_per_tok)
    writer.add_expert_shared_count(config.n_shared_experts)
    writer.add_expert_weights_scale(config.routed_scaling_factor)
    if config.norm_topk_prob:
        writer.add_expert_weights_norm(True)
    writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
    if config.topk_method == "group_limited_greedy":
        writer.add_expert_group_count(config.n_group)
        writer.add_expert_group_used_count(config.topk_group)
    writer.add_rope_dimension_count(d_r)
    rs = config.rope_scaling
    if rs:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rs["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rs["original_max_position_embeddings"]))
        writer.add_rope_scaling_yarn_beta_fast(float(rs["beta_fast"]))
        writer.add_rope_scaling_yarn_beta_slow(float(rs["beta_slow"]))
        if rs.get("mscale_all_dim"):
            writer.add_rope_scaling_yarn_log_mul(0.1 * float(rs["mscale_all_dim"]))


def pre_tokenizer(folder: Path, model_type: str) -> str:
    """llama.cpp's pre-tokenizer name for the folder's tokenizer.json (see the module docstring)."""
    from ..tokenizer.bpe import SPLIT_PATTERNS

    try:
        pre = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {folder / 'tokenizer.json'}: {e}") from None
    steps = pre.get("pretokenizers", [pre]) if isinstance(pre, dict) else []
    patterns = tuple(st["pattern"]["Regex"] for st in steps
                     if isinstance(st, dict) and st.get("type") == "Split" and "Regex" in st.get("pattern", {}))
    if patterns == SPLIT_PATTERNS or model_type == "llama":
        return "deepseek-coder"     # ours, or a released DeepSeek-Coder v1 folder (LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_CODER)
    return "deepseek-llm"


def _looks_special(token: str) -> bool:
    """convert_hf_to_gguf.py's `does_token_look_special` for DeepSeek-Coder's added tokens."""
    return token == "<pad>" or (token.startswith("<|") and token.endswith("|>")) or \
        (token.startswith("<\uff5c") and token.endswith("\uff5c>"))


def vocab_entries(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """(tokens, token types) for ids 0 .. vocab_size-1, as the converter's `get_vocab_base` builds them."""
    import gguf

    reverse = {i: tok for tok, i in tokenizer.get_vocab().items()}
    if reverse and max(reverse) >= vocab_size:
        raise UserError(f"the tokenizer has id {max(reverse)} but the model's vocabulary is {vocab_size}")
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        tok = reverse.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif tok in added:
            if decoder[i].special or _looks_special(tok):
                types.append(gguf.TokenType.CONTROL)
            else:
                tok = tok.replace("\u2581", " ")          # pre-normalised user-defined spaces
                types.append(gguf.TokenType.USER_DEFINED)
            tokens.append(tok)
        else:
            tokens.append(tok)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _vocab(writer, folder: Path, config) -> None:
    import gguf

    from ..tokenizer.bpe import load_tokenizer
    from ..tokenizer.special import special_ids

    tokenizer = load_tokenizer(folder)
    sp = special_ids(tokenizer)
    tokens, types = vocab_entries(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(folder, config.model_type))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # merges, add_bos_token and the chat template as the converter reads them; the special ids come from our table
    quiet = logging.getLogger("gguf.vocab")
    level, quiet.level = quiet.level, logging.ERROR   # it warns about the BOS pair template, which GGUF cannot hold
    try:
        special = gguf.SpecialVocab(folder, load_merges=True, special_token_types=())
    finally:
        quiet.setLevel(level)
    if not special.merges:
        raise UserError(f"{folder / 'tokenizer.json'} has no BPE merges: not a byte-level BPE tokenizer")
    special.add_to_gguf(writer, quiet=True)
    writer.add_bos_token_id(sp.bos)
    writer.add_eos_token_id(sp.eos)
    if sp.eot is not None:
        writer.add_eot_token_id(sp.eot)
    if sp.has_fim:
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_PRE_ID, sp.fim_begin)
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_SUF_ID, sp.fim_hole)
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_MID_ID, sp.fim_end)
    template = getattr(tokenizer, "chat_template", None)
    if template and special.chat_template is None:
        writer.add_chat_template(template)


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, kind: str = "f16") -> Path:
    """Write the checkpoint folder `model_dir` (weights, config.json, tokenizer) to the GGUF file `out`."""
    if kind not in TYPES:
        raise UserError(f"unknown GGUF type {kind!r}; use one of: {', '.join(TYPES)}")
    from ..models.hf import load_state_dict_from_folder, read_config

    folder = Path(model_dir)
    config = read_config(folder)
    if config.model_type not in ARCHS:
        raise UserError(f"GGUF export of {config.model_type!r} models is not supported; supported: "
                        f"{', '.join(ARCHS)}")
    path = _check_out(out)
    sd = load_state_dict_from_folder(folder)
    import gguf

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        writer = gguf.GGUFWriter(str(tmp), arch=ARCHS[config.model_type])
        _hparams(writer, config, folder, kind)
        _vocab(writer, folder, config)
        for name, data in _tensors(sd, config):
            _add_tensor(writer, name, data, kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        from ..durable import replace_durably
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def main(argv: list[str]) -> int:
    """Export a checkpoint folder to one GGUF file for llama.cpp / Ollama (architectures llama and deepseek2).

    dscoder export gguf --model DIR --out FILE.gguf [--type f32|f16|q8_0]"""
    from ..args import Parser, out_file

    p = Parser("dscoder export gguf", main.__doc__)
    p.add_argument("--model", required=True, metavar="DIR",
                   help="Hugging Face model folder (config.json, weights, tokenizer)")
    p.add_argument("--out", required=True, type=out_file, help="the GGUF file to write (replaced if it exists)")
    p.add_argument("--type", choices=TYPES, default="f16",
                   help="weight matrices: f32, f16, or q8_0 (8-bit blocks of 32); norms stay f32")
    args = p.parse_args(argv)
    _check_out(args.out)
    path = export_gguf(args.model, args.out, args.type)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.type})")
    return 0
