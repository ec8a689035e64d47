"""Atomic checkpoints: fault injection (torn / .tmp / bad hash / missing manifest) and retention."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from dscoder.errors import UserError
from dscoder.models.presets import get_preset
from dscoder.train.checkpoint import (latest_checkpoint, list_checkpoints, load_train_state, save_checkpoint,
                                      verify)
from dscoder.train.optim import build_optimizer


@pytest.fixture
def tiny():
    from dscoder.models.hf import build_model

    torch.manual_seed(0)
    cfg = get_preset("tiny", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1)
    model = build_model(cfg)
    opt = build_optimizer(model, 1e-3)
    model(torch.randint(0, 64, (2, 8))).sum().backward()
    opt.step()
    return model, opt


def _save(path, step, model, opt, keep=5):
    return save_checkpoint(path, step, model, opt, {"tokens": step * 10, "data": {"buffer": torch.arange(3)}},
                           keep_last=keep)


def test_save_layout_and_roundtrip(tmp_path, tiny):
    from dscoder.models.hf import load_model

    model, opt = tiny
    p = _save(tmp_path, 3, model, opt)
    assert p.name == "step-00000003" and verify(p) is None
    man = json.loads((p / "manifest.json").read_text())
    assert {"config.json", "model.safetensors", "train_state.pt"} <= set(man["files"])
    st = load_train_state(p)
    assert st["step"] == 3 and st["tokens"] == 30 and torch.equal(st["data"]["buffer"], torch.arange(3))
    opt2 = build_optimizer(load_model(p), 1e-3)
    opt2.load_state_dict(st["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    loaded = load_model(p)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("fault", ["truncate", "flip", "no_manifest", "tmp"])
def test_torn_newest_falls_back_to_previous(tmp_path, tiny, fault):
    model, opt = tiny
    good = _save(tmp_path, 4, model, opt)
    bad = _save(tmp_path, 8, model, opt)
    weights = bad / "model.safetensors"
    if fault == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif fault == "flip":
        raw = bytearray(weights.read_bytes())
        raw[-5] ^= 0xFF
        weights.write_bytes(bytes(raw))
    elif fault == "no_manifest":
        (bad / "manifest.json").unlink()
    else:                                                    # killed before the rename
        bad.rename(tmp_path / "step-00000012.tmp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert latest_checkpoint(tmp_path) == good
    assert (fault == "tmp") or any("skipping checkpoint" in str(w.message) for w in caught)
    # the next save clears the leftover .tmp and can overwrite a torn step-N folder
    again = _save(tmp_path, 12 if fault == "tmp" else 8, model, opt)
    assert latest_checkpoint(tmp_path) == again and not list(tmp_path.glob("*.tmp"))


def test_retention_keeps_newest_complete(tmp_path, tiny):
    model, opt = tiny
    for s in (1, 2, 3, 4):
        _save(tmp_path, s, model, opt, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    with pytest.raises(UserError):
        _save(tmp_path, 5, model, opt, keep=0)
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    assert latest_checkpoint(tmp_path / "nothing") is None
