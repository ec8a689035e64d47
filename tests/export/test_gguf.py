"""GGUF export (`export/gguf.py`): read the file back with `gguf.GGUFReader` and check every tensor (q/k permutation
undone for llama; experts unstacked and kv_b re-joined for deepseek2; Q8_0 dequantised within its rounding bound)
and the tokenizer metadata against the source folder; the permutation matches GGML's RoPE; bad input writes
nothing."""
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from dscoder.errors import UserError
from dscoder.export.gguf import export_gguf, permute_qk, unpermute_qk
from dscoder.models.hf import build_model, load_state_dict_from_folder, save_pretrained
from dscoder.models.layers import apply_rope, rope_cos_sin
from dscoder.models.presets import get_preset
from dscoder.tokenizer.bpe import load_tokenizer, train_tokenizer
from dscoder.tokenizer.special import special_ids

HEADS, KV_HEADS, HIDDEN = 4, 2, 64


CODE = ["def add(a, b):\n    return a + b\n", "class Stack:\n    def __init__(self):\n        self.items = []\n",
        "for i in range(10):\n    print(i * 2)\n", "import os\nprint(os.path.join('a', 'b'))\n"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "tok"
    train_tokenizer(CODE * 20, 300, out)
    return out


def checkpoint(tok_dir: Path, out: Path, **overrides) -> Path:
    shutil.copytree(tok_dir, out)
    torch.manual_seed(0)
    cfg = get_preset("tiny", **{**dict(vocab_size=320, hidden_size=HIDDEN, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                                       max_position_embeddings=256, rope_scaling_factor=4.0, head_dim=0), **overrides})
    save_pretrained(build_model(cfg), out)
    return out


def fields(reader: gguf.GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items()}


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              # DeepSeek-V2
              "self_attn.kv_a_proj_with_mqa": "attn_kv_a_mqa", "self_attn.kv_a_layernorm": "attn_kv_a_norm",
              "mlp.gate": "ffn_gate_inp", "mlp.shared_experts.gate_proj": "ffn_gate_shexp",
              "mlp.shared_experts.up_proj": "ffn_up_shexp", "mlp.shared_experts.down_proj": "ffn_down_shexp"}


def gguf_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        _, _, i, rest = hf.split(".", 3)
        return f"blk.{i}.{GGUF_NAMES[rest.removesuffix('.weight')]}.weight"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}[hf]


def check_close(got: np.ndarray, w: np.ndarray, kind: str, what: str) -> None:
    if kind == "f32":
        assert np.array_equal(got, w), what
    elif kind == "f16":
        assert np.array_equal(got, w.astype(np.float16).astype(np.float32)), what
    else:   # Q8_0: blocks of 32 with scale d = max|block| / 127 in f16; error <= d/2 plus d's f16 rounding
        bound = np.abs(w).max(axis=-1, keepdims=True) * (0.5 / 127 + 2 ** -10)
        assert np.all(np.abs(got - w) <= bound), what
        assert np.abs(got - w).max() > 0, what   # it really was quantised


def read(t) -> np.ndarray:
    return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0"])
def test_every_tensor_reads_back(tok_dir, tmp_path, kind):
    ckpt = checkpoint(tok_dir, tmp_path / "ckpt")
    out = export_gguf(ckpt, tmp_path / "m.gguf", kind)
    assert out == tmp_path / "m.gguf" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "m.gguf"]
    reader = gguf.GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    sd = load_state_dict_from_folder(ckpt)
    assert set(tensors) == {gguf_name(k) for k in sd}
    want_type = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[kind]
    for hf, w in sd.items():
        t = tensors[gguf_name(hf)]
        w = w.float().numpy()
        if w.ndim == 1:
            assert t.tensor_type.name == "F32" and np.array_equal(t.data, w), hf
            continue
        assert t.tensor_type.name == want_type, (hf, t.tensor_type.name)
        got = read(t).reshape(w.shape)
        if hf.endswith("q_proj.weight"):
            got = unpermute_qk(got, HEADS)
        elif hf.endswith("k_proj.weight"):
            got = unpermute_qk(got, KV_HEADS)
        check_close(got, w, kind, hf)


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_deepseek_v2_every_tensor_reads_back(tok_dir, tmp_path, kind):
    ckpt = tmp_path / "v2"
    shutil.copytree(tok_dir, ckpt)
    torch.manual_seed(0)
    cfg = get_preset("tiny-moe", vocab_size=320)
    save_pretrained(build_model(cfg), ckpt)
    reader = gguf.GGUFReader(export_gguf(ckpt, tmp_path / "v2.gguf", kind))
    tensors = {t.name: t for t in reader.tensors}
    sd = {k: v.float().numpy() for k, v in load_state_dict_from_folder(ckpt).items()}
    h, d_nope, d_v, d_c = 4, cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    seen = set()
    for hf, w in sd.items():
        parts = hf.split(".")
        if ".mlp.experts." in hf:                                # routed expert e: slice e of the stacked tensor
            name = f"blk.{parts[2]}.ffn_{parts[6].removesuffix('_proj')}_exps.weight"
            got = read(tensors[name]).reshape(cfg.n_routed_experts, *w.shape)[int(parts[5])]
        elif hf.endswith("kv_b_proj.weight"):                    # k_b (H, d_c, d_nope) and v_b (H, d_v, d_c)
            kv_b = w.reshape(h, d_nope + d_v, d_c)
            for part, want in (("k_b", kv_b[:, :d_nope].transpose(0, 2, 1)), ("v_b", kv_b[:, d_nope:])):
                name = f"blk.{parts[2]}.attn_{part}.weight"
                check_close(read(tensors[name]).reshape(want.shape), want, kind, name)
                seen.add(name)
            continue
        else:
            name = gguf_name(hf)
            got = read(tensors[name]).reshape(w.shape)
        seen.add(name)
        if w.ndim == 1 or name.endswith("ffn_gate_inp.weight"):
            assert tensors[name].tensor_type.name == "F32" and np.array_equal(got, w), hf
        else:
            check_close(got, w, kind, hf)
    assert seen == set(tensors)
    f = fields(reader)
    assert f["general.architecture"] == "deepseek2" and f["tokenizer.ggml.pre"] == "deepseek-coder"
    a = "deepseek2."
    assert (f[a + "block_count"], f[a + "attention.head_count"], f[a + "attention.head_count_kv"],
            f[a + "leading_dense_block_count"], f[a + "attention.kv_lora_rank"], f[a + "attention.key_length"],
            f[a + "attention.value_length"], f[a + "attention.key_length_mla"], f[a + "attention.value_length_mla"],
            f[a + "expert_count"], f[a + "expert_used_count"], f[a + "expert_shared_count"],
            f[a + "expert_feed_forward_length"], f[a + "feed_forward_length"], f[a + "rope.dimension_count"]) == \
        (4, 4, 1, 1, 64, 80, 64, 48, 32, 8, 2, 1, 128, 512, 16)
    assert f[a + "attention.q_lora_rank"] == 0          # no q compression; llama.cpp refuses a file without the key
    assert f[a + "rope.scaling.type"] == "yarn" and f[a + "rope.scaling.factor"] == 4.0
    assert f[a + "rope.scaling.original_context_length"] == 1024
    assert abs(f[a + "rope.scaling.yarn_log_multiplier"] - 0.0707) < 1e-6
    assert f[a + "expert_gating_func"] == gguf.ExpertGatingFuncType.SOFTMAX


def test_tokenizer_and_hyperparameters(tok_dir, tmp_path):
    ckpt = checkpoint(tok_dir, tmp_path / "ckpt")
    f = fields(gguf.GGUFReader(export_gguf(ckpt, tmp_path / "m.gguf", "f16")))
    assert f["general.architecture"] == "llama" and f["general.file_type"] == 1
    assert (f["llama.block_count"], f["llama.context_length"], f["llama.embedding_length"],
            f["llama.feed_forward_length"], f["llama.attention.head_count"], f["llama.attention.head_count_kv"],
            f["llama.rope.dimension_count"], f["llama.attention.key_length"], f["llama.attention.value_length"],
            f["llama.vocab_size"]) == (2, 256, HIDDEN, 128, HEADS, KV_HEADS, 16, 16, 16, 320)
    assert f["llama.rope.freq_base"] == 100000.0 and f["llama.rope.scaling.type"] == "linear"
    assert f["llama.rope.scaling.factor"] == 4.0
    assert abs(f["llama.attention.layer_norm_rms_epsilon"] - 1e-6) < 1e-12

    tok = load_tokenizer(ckpt)
    sp = special_ids(tok)
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "deepseek-coder"
    vocab = {i: t for t, i in tok.get_vocab().items()}
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 320
    assert all(tokens[i] == vocab[i] for i in vocab) and len(vocab) == 309
    assert tokens[309:] == [f"[PAD{i}]" for i in range(309, 320)] and set(types[309:]) == {gguf.TokenType.UNUSED}
    control = {i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL}
    assert {sp.bos, sp.eos, sp.eot, sp.fim_begin, sp.fim_hole, sp.fim_end} <= control
    assert set(types[:300]) == {gguf.TokenType.NORMAL}
    merges = json.loads((ckpt / "tokenizer.json").read_text())["model"]["merges"]
    assert f["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"], f["tokenizer.ggml.eot_token_id"]) == \
        (sp.bos, sp.eos, sp.eot)
    assert (f["tokenizer.ggml.fim_pre_token_id"], f["tokenizer.ggml.fim_suf_token_id"],
            f["tokenizer.ggml.fim_mid_token_id"]) == (sp.fim_begin, sp.fim_hole, sp.fim_end)
    assert f["tokenizer.ggml.add_bos_token"] is True
    assert f["tokenizer.chat_template"] == tok.chat_template and "### Instruction" in tok.chat_template


def test_qk_permutation_turns_half_split_rope_into_ggmls_adjacent_pairs():
    """GGML's default RoPE rotates pairs (x[2i], x[2i+1]) by angle pos * theta_i; HF's rotates (x[i], x[i+d/2]).
    Permuted rows under GGML's rotation must equal the permuted result of HF's rotation."""
    d, n_head, pos = 16, 3, 7
    q = torch.randn(n_head * d, dtype=torch.float64)                          # one query, every head
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    cos, sin = rope_cos_sin(torch.tensor([[pos]]), inv, dtype=torch.float64)   # (1, 1, d)
    hf = apply_rope(q.view(1, n_head, 1, d), cos, sin).reshape(-1)           # HF rotation, then permute
    want = torch.from_numpy(permute_qk(hf.numpy()[:, None], n_head)[:, 0])
    x = torch.from_numpy(permute_qk(q.numpy()[:, None], n_head)[:, 0])       # what the permuted rows compute
    pairs = x.view(n_head, d // 2, 2)
    angle = pos * inv                                                         # (d/2,)
    ggml = torch.stack((pairs[..., 0] * angle.cos() - pairs[..., 1] * angle.sin(),
                        pairs[..., 0] * angle.sin() + pairs[..., 1] * angle.cos()), dim=-1).reshape(-1)
    assert torch.allclose(ggml, want, atol=1e-9)
    w = np.random.default_rng(0).normal(size=(n_head * d, 5))
    assert np.array_equal(unpermute_qk(permute_qk(w, n_head), n_head), w)


def test_tied_embeddings_have_no_output_tensor(tok_dir, tmp_path):
    ckpt = checkpoint(tok_dir, tmp_path / "ckpt", tie_word_embeddings=True)
    names = {t.name for t in gguf.GGUFReader(export_gguf(ckpt, tmp_path / "m.gguf", "f32")).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names


def test_bad_input_writes_nothing(tok_dir, tmp_path):
    other = checkpoint(tok_dir, tmp_path / "other")
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral"}))
    with pytest.raises(UserError, match="unsupported model_type 'mistral'"):
        export_gguf(other, tmp_path / "other.gguf")
    ckpt = checkpoint(tok_dir, tmp_path / "ckpt")
    with pytest.raises(UserError, match="unknown GGUF type 'q4_0'"):
        export_gguf(ckpt, tmp_path / "m.gguf", "q4_0")
    with pytest.raises(UserError, match="is a folder"):
        export_gguf(ckpt, tmp_path, "f16")
    with pytest.raises(UserError, match="does not exist"):
        export_gguf(ckpt, tmp_path / "no" / "m.gguf", "f16")
    # a failure after writing began (no tokenizer in the folder): no output, no temporary file
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="tokenizer"):
        export_gguf(ckpt, tmp_path / "m.gguf", "f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "other"]
