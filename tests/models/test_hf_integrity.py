"""Loading checks what it reads: manifest.json hashes, a file given for a folder, config.json field types, pickled
weights that `weights_only=True` refuses. Every case is one UserError line naming what is wrong."""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from dscoder.errors import UserError
from dscoder.models import hf
from dscoder.models.hf import build_model, load_model, load_state_dict_from_folder, save_pretrained
from dscoder.models.presets import get_preset
from dscoder.train.checkpoint import save_hf_folder

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2)
TINY_MOE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
                kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=4,
                num_experts_per_tok=2)


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch):
    """The digest cache file in this test's folder, and the in-process cache empty: each test starts cold."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(hf, "_SHA256", {})
    return tmp_path / "cache" / "dscoder" / "sha256.json"


@pytest.fixture()
def checkpoint(tmp_path):
    """A folder as training writes it: HF files plus manifest.json (sizes and sha256)."""
    torch.manual_seed(0)
    return save_hf_folder(tmp_path / "final", build_model(get_preset("tiny", **TINY)))


def _flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_manifest_catches_weights_overwritten_in_place(checkpoint):
    ids = torch.tensor([[1, 2, 3]])
    ref = load_model(checkpoint)(ids)                      # intact: loads (and remembers the hashes)
    torch.testing.assert_close(load_model(checkpoint)(ids), ref)
    weights = checkpoint / "model.safetensors"
    size = weights.stat().st_size
    _flip_byte(weights, size - 5)                          # inside the last tensor's data, same size
    assert weights.stat().st_size == size
    with pytest.raises(UserError, match=r"model\.safetensors does not match the sha256 in manifest\.json") as e:
        load_model(checkpoint)
    assert "\n" not in str(e.value)
    _flip_byte(weights, size - 5)                          # restored: loads again
    torch.testing.assert_close(load_model(checkpoint)(ids), ref)


def test_digests_are_reused_until_the_file_changes(checkpoint, hash_cache):
    load_model(checkpoint)
    saved = json.loads(hash_cache.read_text())
    man = json.loads((checkpoint / "manifest.json").read_text())["files"]
    weights_key = next(k for k in saved if k.startswith(str((checkpoint / "model.safetensors").resolve()) + "|"))
    assert saved[weights_key] == man["model.safetensors"]["sha256"] and len(saved) == 2   # + config.json
    # a new process (empty in-process cache) takes the digest from the file: a wrong one there is believed ...
    hf._SHA256.clear()
    hash_cache.write_text(json.dumps(saved | {weights_key: "0" * 64}))
    with pytest.raises(UserError, match=r"model\.safetensors does not match the sha256"):
        load_model(checkpoint)
    # ... only while the file is unchanged: any write gives it a new ctime, so it is hashed again
    hf._SHA256.clear()
    os.utime(checkpoint / "model.safetensors")
    load_model(checkpoint)
    assert json.loads(hash_cache.read_text())[weights_key] == "0" * 64 and len(json.loads(hash_cache.read_text())) == 3


def test_manifest_checks_config_and_size_and_listing(checkpoint):
    text = (checkpoint / "config.json").read_text()
    assert '"rms_norm_eps": 1e-06' in text
    (checkpoint / "config.json").write_text(text.replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    with pytest.raises(UserError, match=r"config\.json does not match the sha256 .*delete manifest\.json"):
        load_model(checkpoint)
    (checkpoint / "config.json").write_text(text)
    with open(checkpoint / "model.safetensors", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match=r"model\.safetensors has \d+ bytes but manifest\.json records"):
        load_state_dict_from_folder(checkpoint)
    man = json.loads((checkpoint / "manifest.json").read_text())
    del man["files"]["model.safetensors"]
    (checkpoint / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(UserError, match=r"model\.safetensors is not listed in .*manifest\.json"):
        load_model(checkpoint)
    (checkpoint / "manifest.json").write_text('{"files": {"config.json"')
    with pytest.raises(UserError, match=r"manifest\.json is unreadable"):
        load_model(checkpoint)


def test_folder_without_manifest_loads(tmp_path):
    save_pretrained(build_model(get_preset("tiny", **TINY)), tmp_path / "m")
    assert not (tmp_path / "m" / "manifest.json").exists()
    assert load_model(tmp_path / "m")(torch.tensor([[1, 2]])).shape == (1, 2, 64)


def test_a_file_is_not_a_model_folder(checkpoint):
    for f in (checkpoint / "model.safetensors", checkpoint / "config.json"):
        with pytest.raises(UserError, match=r"is a file, not a model folder"):
            load_model(f)
    with pytest.raises(UserError, match=r"does not exist"):
        load_model(checkpoint / "nope")


@pytest.mark.parametrize("preset, overrides, changes, message", [
    ("tiny", TINY, {"hidden_size": "32"}, r"config\.json: field 'hidden_size' must be int, got str '32'"),
    ("tiny", TINY, {"num_hidden_layers": 1.0}, r"field 'num_hidden_layers' must be int, got float 1\.0"),
    ("tiny", TINY, {"rms_norm_eps": True}, r"field 'rms_norm_eps' must be float, got bool True"),
    ("tiny", TINY, {"eos_token_id": "2"}, r"field 'eos_token_id' must be int \| list\[int\] \| None, got str"),
    ("tiny-moe", TINY_MOE, {"n_routed_experts": "4"}, r"field 'n_routed_experts' must be int, got str '4'"),
    ("tiny-moe", TINY_MOE, {"seq_aux": "yes"}, r"field 'seq_aux' must be bool, got str 'yes'"),
    ("tiny-moe", TINY_MOE, {"q_lora_rank": [8]}, r"field 'q_lora_rank' must be int \| None, got list"),
])
def test_config_field_of_the_wrong_type_is_named(tmp_path, preset, overrides, changes, message):
    save_pretrained(build_model(get_preset(preset, **overrides)), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text()) | changes
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=message):
        load_model(tmp_path / "m")


def test_refused_pickle_weights_are_one_line(tmp_path):
    save_pretrained(build_model(get_preset("tiny", **TINY)), tmp_path / "m")
    sd = load_state_dict_from_folder(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save({**sd, "extra": argparse.Namespace(x=1)}, tmp_path / "m" / "pytorch_model.bin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # a warning would fail the test
        with pytest.raises(UserError) as e:
            load_model(tmp_path / "m")
    msg = str(e.value)
    assert "\n" not in msg and "pytorch_model.bin" in msg and "refusing to load" in msg
    # and from a fresh interpreter: exactly that one line on stderr, nothing on stdout
    code = ("import sys; from dscoder.errors import UserError; from dscoder.models.hf import load_model\n"
            "try:\n    load_model(sys.argv[1])\nexcept UserError as e:\n    print(f'error: {e}', file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.stdout == "" and r.stderr == f"error: {msg}\n"


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_loading_skips_weight_init_and_leaves_nn_init_as_it_was(tmp_path, preset):
    """The model is built on the meta device with torch.nn.init switched off (the checkpoint overwrites every
    weight; `normal_` on meta would import torch._dynamo, ~0.7 CPU-s per process), then nn.init is restored."""
    torch.manual_seed(0)
    model = build_model(get_preset(preset))
    save_pretrained(model, tmp_path / "m")
    code = ("import sys, torch; from dscoder.models.hf import load_model; m = load_model(sys.argv[1]); "
            "import torch.nn.init as I; t = I.normal_(torch.zeros(4096)); "
            "print('torch._dynamo' in sys.modules, float(t.std()) > 0.5)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]
    loaded = load_model(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    # loads in several threads at once leave the real functions in place afterwards
    real = {name: getattr(torch.nn.init, name) for name in hf._INIT_FUNCTIONS}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: load_model(tmp_path / "m"), range(8)))
    assert {name: getattr(torch.nn.init, name) for name in hf._INIT_FUNCTIONS} == real
