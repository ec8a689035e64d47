"""GGUF export: a dscoder / Hugging Face checkpoint folder as one file that llama.cpp and Ollama load.

    dscoder export gguf --model DIR --out model.gguf [--type f32|f16|q8_0]
    export_gguf("ckpt", "model.gguf", "q8_0")            # the same from Python

Written with the `gguf` package (the writer llama.cpp ships in gguf-py), following llama.cpp's
`convert_hf_to_gguf.py` for `LlamaForCausalLM` (DeepSeek-Coder v1 is one, reference §1.1):
* architecture `llama`; tensor names from `gguf.get_tensor_name_map` (`model.layers.0.self_attn.q_proj.weight`
  -> `blk.0.attn_q.weight`, ...); q_proj and k_proj rows permuted from the HF half-split RoPE layout to the
  interleaved pairs GGML rotates (`LlamaModel.permute`); a tied checkpoint has no `output.weight`;
* 1-D tensors (the norms) stay F32; the matrices take `--type` (Q8_0 = blocks of 32 weights with one f16 scale;
  a matrix whose rows are not a multiple of 32 falls back to F16, as the converter does);
* hyperparameters: context, embedding, feed-forward and block counts, heads and KV heads, head size, RoPE base
  and dimension, RMSNorm epsilon, vocabulary size, and linear RoPE scaling (type + factor) when the factor is
  not 1;
* tokenizer: `tokenizer.ggml.model` "gpt2" (byte-level BPE) with pre-tokenizer "deepseek-coder" (the regexes of
  `tokenizer/bpe.py`, reference §1.2), every token with its type (added special tokens CONTROL, other added tokens
  USER_DEFINED, ids past the tokenizer `[PAD{i}]` UNUSED), the merges, BOS / EOS / EOT and the FIM prefix /
  suffix / middle ids from `tokenizer/special.py` (PSM: fim▁begin, fim▁hole, fim▁end), add-BOS, the chat template.
DeepSeek-V2 folders (llama.cpp's `deepseek2` architecture) are refused with a UserError for now.

The file is written under a temporary name in the output's folder and renamed into place when complete, so a
failed or interrupted export leaves nothing at the output path.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserError

TYPES = ("f32", "f16", "q8_0")
PRE_TOKENIZER = "deepseek-coder"        # llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_CODER


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


def _tensors(sd: dict, config) -> Iterator[tuple[str, Any]]:
    """(GGUF name, fp32 numpy array) for every tensor, q/k permuted, in the converter's order."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, t in sd.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"cannot export tensor {hf_name!r}: no llama-architecture GGUF name for it")
        data = t.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute_qk(data, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_qk(data, config.num_key_value_heads)
        yield name, data


def _add_tensor(writer, name: str, data, kind: str) -> None:
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    qtype = Q.F32 if data.ndim <= 1 or name.endswith("_norm.weight") or kind == "f32" else \
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
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(file_type)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_key_length(config.head_dim)      # config.json carries head_dim, so the converter writes both
    writer.add_value_length(config.head_dim)
    if config.rope_scaling_factor != 1.0:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(config.rope_scaling_factor)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


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
    writer.add_tokenizer_pre(PRE_TOKENIZER)
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
    if config.model_type != "llama":
        raise UserError(f"GGUF export of {config.model_type!r} models (llama.cpp's deepseek2 architecture) is not "
                        "supported yet; only DeepSeek-Coder v1 (llama) checkpoints can be exported")
    path = _check_out(out)
    sd = load_state_dict_from_folder(folder)
    import gguf

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        writer = gguf.GGUFWriter(str(tmp), arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
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
    """Export a checkpoint folder to one GGUF file for llama.cpp / Ollama (architecture llama; DeepSeek-V2 not yet).

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
