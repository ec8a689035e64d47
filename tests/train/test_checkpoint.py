"""Atomic checkpoints: fault injection (torn / .tmp / bad hash / missing manifest), retention, torn deletes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dscoder.errors import UserError
from dscoder.models.presets import get_preset
from dscoder.train.checkpoint import (checkpoint_step, clean_leftovers, latest_checkpoint, list_checkpoints,
                                      load_train_state, remove_dir, save_checkpoint, verify)
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
    found, rejected = latest_checkpoint(tmp_path)
    assert found == good and checkpoint_step(good) == 4
    if fault == "tmp":
        assert rejected == []                                # a .tmp folder is not a checkpoint at all
    else:
        assert [p for p, _ in rejected] == [bad] and checkpoint_step(bad) is None
        assert {"truncate": "truncated", "flip": "sha256 mismatch", "no_manifest": "no manifest"}[fault] \
            in rejected[0][1]
    # the next save clears the leftover .tmp and can overwrite a torn step-N folder
    again = _save(tmp_path, 12 if fault == "tmp" else 8, model, opt)
    assert latest_checkpoint(tmp_path) == (again, []) and not list(tmp_path.glob("*.tmp"))


def test_retention_keeps_newest_complete(tmp_path, tiny):
    model, opt = tiny
    for s in (1, 2, 3, 4):
        _save(tmp_path, s, model, opt, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    with pytest.raises(UserError):
        _save(tmp_path, 5, model, opt, keep=0)
    assert latest_checkpoint(tmp_path)[0].name == "step-00000004"
    assert latest_checkpoint(tmp_path / "nothing") == (None, [])


def test_retention_removes_torn_older_folders(tmp_path, tiny):
    """A step folder left holding only config.json (an in-place delete that was killed) is removed by the next
    retention pass, as is any folder older than the newest keep_last complete ones."""
    model, opt = tiny
    _save(tmp_path, 1, model, opt)
    torn = tmp_path / "step-00000002"
    torn.mkdir()
    (torn / "config.json").write_text("{}")
    for s in (3, 4):
        _save(tmp_path, s, model, opt, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert sorted(os.listdir(tmp_path)) == ["step-00000003", "step-00000004"]


def test_kill_mid_delete_leaves_only_trash_which_is_cleaned(tmp_path, tiny):
    """SIGKILL a process while remove_dir deletes a big checkpoint: the step folder is either whole or gone (renamed
    to .trash-*), never half-emptied; clean_leftovers removes the trash and .tmp leftovers."""
    model, opt = tiny
    victim = _save(tmp_path, 1, model, opt)
    for i in range(3000):                                    # many files: the delete takes long enough to kill
        (victim / f"pad{i:05d}").write_bytes(b"x")
    code = ("import sys, time; from dscoder.train.checkpoint import remove_dir; "
            "print('go', flush=True); remove_dir(sys.argv[1]); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(victim)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "go\n"
    proc.kill()
    proc.wait()
    # whatever instant the kill hit: the step folder is whole (manifest verifies) or gone, never torn
    assert not victim.exists() or verify(victim) is None
    (tmp_path / "step-00000009.tmp").mkdir()
    (tmp_path / "final.tmp").mkdir()
    (tmp_path / "notes.tmp").mkdir()                         # not a name a save writes: kept
    gone = clean_leftovers(tmp_path)
    assert {"final.tmp", "step-00000009.tmp"} <= set(gone) and "notes.tmp" not in gone
    assert sorted(os.listdir(tmp_path)) == ["notes.tmp"] + (["step-00000001"] if victim.exists() else [])


def test_remove_dir(tmp_path):
    d = tmp_path / "step-00000003"
    d.mkdir()
    (d / "a").write_text("x")
    (tmp_path / ".trash-step-00000003").mkdir()                 # an older leftover of the same name
    remove_dir(d)
    assert os.listdir(tmp_path) == []
