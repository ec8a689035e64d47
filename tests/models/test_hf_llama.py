"""Parity with the Hugging Face reference (`transformers.LlamaForCausalLM`) both ways, every weight-folder
layout `load_model` reads, and the errors a bad folder gives."""
import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import dscoder
from dscoder.errors import UserError
from dscoder.models.config import ModelConfig
from dscoder.models.hf import build_model, load_model, load_state_dict_from_folder, save_pretrained
from dscoder.models.llama import Transformer
from dscoder.models.presets import get_preset

VOCAB = 128


def hf_llama(kv_heads: int, seed: int = 0, tie: bool = False) -> LlamaForCausalLM:
    """A random tiny HF Llama with the v1 RoPE (theta 1e5, linear x4); std 0.1 so greedy tokens vary."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                      rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 1e5},
                      rms_norm_eps=1e-6, initializer_range=0.1, tie_word_embeddings=tie,
                      bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).float().eval()


def greedy(model: Transformer, prompt: torch.Tensor, n: int) -> list[int]:
    """Greedy decoding through our KV cache: prefill once, then one token per step."""
    cache = model.make_cache(1, prompt.shape[1] + n)
    logits = model(prompt, cache=cache)[:, -1]
    out = []
    for _ in range(n):
        tok = logits.argmax(-1)  # (1,)
        out.append(int(tok))
        logits = model(tok.view(1, 1), cache=cache)[:, -1]
    return out


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_hf_checkpoint_gives_same_logits_and_greedy_tokens(tmp_path, kv_heads):
    ref = hf_llama(kv_heads)
    ref.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["rope_parameters"]["rope_type"] == "linear" and "rope_scaling" not in saved  # transformers 5
    ours = dscoder.load_model(tmp_path)
    assert isinstance(ours, Transformer) and not ours.training
    assert ours.config.rope_scaling_factor == 4.0 and ours.config.rope_theta == 1e5
    assert ours.config.num_key_value_heads == kv_heads
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(ids).logits
        got = ours(ids)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4
    prompt = ids[:1, :10]
    with torch.no_grad():
        hf_tokens = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16,
                                 do_sample=False, eos_token_id=None, pad_token_id=0)[0, 10:].tolist()
        our_tokens = greedy(ours, prompt, 16)
    assert our_tokens == hf_tokens
    assert len(set(hf_tokens)) > 1  # a real continuation, not one token repeated


def test_dscoder_checkpoint_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    ours = build_model(get_preset("tiny", vocab_size=VOCAB, num_hidden_layers=2, initializer_range=0.1,
                                  rope_scaling_factor=4.0, bos_token_id=1, eos_token_id=2)).eval()
    save_pretrained(ours, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "generation_config.json",
                                                        "model.safetensors"]
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert isinstance(ref, LlamaForCausalLM) and ref.config.num_key_value_heads == 4
    ids = torch.randint(0, VOCAB, (2, 33))
    with torch.no_grad():
        assert (ours(ids) - ref(ids).logits).abs().max().item() <= 1e-4
    # and back: ours -> folder -> ours is exact
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path)(ids), ours(ids))


def test_tied_embeddings_round_trip(tmp_path):
    ref = hf_llama(2, tie=True)
    ref.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    ids = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        assert (ours(ids) - ref(ids).logits).abs().max().item() <= 1e-4
    save_pretrained(ours, tmp_path / "again")
    assert "lm_head.weight" not in load_state_dict_from_folder(tmp_path / "again")


def _write_folder(folder, model, files: dict[str, list[str]], fmt: str, extra: dict | None = None):
    """Save `model`'s tensors into `files` (name -> keys) as safetensors or .bin, plus config.json."""
    folder.mkdir()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()} | (extra or {})
    for name, keys in files.items():
        part = {k: sd[k].clone() for k in keys}
        if fmt == "st":
            save_file(part, str(folder / name), metadata={"format": "pt"})
        else:
            torch.save(part, folder / name)
    (folder / "config.json").write_text(json.dumps(model.config.to_hf()))


def test_sharded_safetensors_and_pytorch_bin_folders_load(tmp_path):
    torch.manual_seed(0)
    model = build_model(get_preset("tiny", vocab_size=VOCAB, num_hidden_layers=2)).eval()
    keys = list(model.state_dict())
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    _write_folder(tmp_path / "sharded", model, shards, "st")
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps(index))
    # an old checkpoint: one pickle file, with the rotary inv_freq buffers older transformers saved
    old = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(16)}
    _write_folder(tmp_path / "bin", model, {"pytorch_model.bin": keys + list(old)}, "bin", extra=old)
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        want = model(ids)
        for sub in ("sharded", "bin"):
            assert torch.equal(load_model(tmp_path / sub)(ids), want), sub


def test_dtype_handling(tmp_path):
    model = build_model(get_preset("tiny", vocab_size=VOCAB, num_hidden_layers=1)).to(torch.bfloat16)
    save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert load_state_dict_from_folder(tmp_path)["lm_head.weight"].dtype == torch.bfloat16
    assert load_model(tmp_path).lm_head.weight.dtype == torch.float32  # CPU default: fp32
    bf = load_model(tmp_path, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in bf.parameters())
    assert bf(torch.tensor([[1, 2, 3]])).dtype == torch.float32  # logits always fp32
    with pytest.raises(UserError, match="unknown dtype"):
        load_model(tmp_path, dtype="float7")


# --- bad input ----------------------------------------------------------------------------------------------
@pytest.fixture()
def folder(tmp_path):
    save_pretrained(build_model(get_preset("tiny", vocab_size=VOCAB, num_hidden_layers=1)), tmp_path / "m")
    return tmp_path / "m"


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text()) | changes
    (folder / "config.json").write_text(json.dumps(cfg))


def test_missing_folder_and_config(tmp_path, folder):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope")
    (folder / "config.json").unlink()
    with pytest.raises(UserError, match="config.json"):
        load_model(folder)


def test_truncated_config_json(folder):
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(UserError, match="not valid JSON"):
        load_model(folder)


def test_truncated_safetensors(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="model.safetensors"):
        load_model(folder)


def test_no_weights(folder):
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no weights"):
        load_model(folder)


@pytest.mark.parametrize("changes, message", [
    ({"hiden_size": 64}, "unknown field.*hiden_size"),
    ({"model_type": "gpt2"}, "unsupported model_type 'gpt2'"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e5}, "rope_scaling": None},
     "unsupported rope scaling"),
    ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
    ({"intermediate_size": 100}, "do not fit config.json"),          # shapes disagree with the weights
    ({"num_hidden_layers": 2}, "missing .*model.layers.1"),          # tensors missing
])
def test_bad_config(folder, changes, message):
    _edit_config(folder, **changes)
    with pytest.raises(UserError, match=message):
        load_model(folder)


def test_unexpected_tensor(folder):
    sd = load_state_dict_from_folder(folder) | {"model.layers.0.mlp.extra.weight": torch.zeros(2)}
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="unexpected 1 tensor.*mlp.extra"):
        load_model(folder)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda(folder):
    with pytest.raises(UserError, match="CUDA is not available"):
        load_model(folder, device="cuda")


def test_config_round_trip_is_exact():
    cfg = get_preset("deepseek-coder-33b")
    assert ModelConfig.from_hf(json.loads(json.dumps(cfg.to_hf()))) == cfg
