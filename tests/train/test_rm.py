"""The reward model: padding-independent scores, `dscoder rm train` (held-out accuracy above the majority class on
a balanced set), bad input. The loop rollouts -> reward model -> `dscoder grpo --reward rm:DIR` runs in
test_grpo.py on the toy run's rollouts."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch

from dscoder.train.reward_model import RewardModel, load_reward_model, rm_rewards, rollout_ids

ROOT = Path(__file__).resolve().parents[2]
DIGITS = [str(d) for d in range(10)]
WRONG = ["None", "x", "'a'", "[]", "-", "(", "alpha", "value", "print", "==", "+", "total", "\n", ":", "."]


def toy_module():
    spec = importlib.util.spec_from_file_location("grpo_toy", ROOT / "scripts" / "grpo_toy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cli(*args: str) -> tuple[int, str, str]:
    from dscoder.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    """The toy model and tasks of scripts/grpo_toy.py, and rollouts in `dscoder grpo`'s format: a completion
    passes exactly when it is one digit (what the sandbox says of these tasks), each pair seen twice."""
    toy = toy_module()
    root = tmp_path_factory.mktemp("rm")
    toy.build_model(root / "model", seed=0)
    toy.write_tasks(root / "tasks.jsonl")
    lines = []
    for name in toy.NAMES:
        for c in DIGITS + WRONG:
            rec = {"step": 1, "task_id": f"toy/{name}", "prompt": toy.TASK.format(name=name), "kind": "completion",
                   "completion": c, "reward": float(c in DIGITS), "passed": c in DIGITS}
            lines += [json.dumps(rec)] * 2
    lines.append('{"prompt": "x", "completion": 3}')                 # a bad record: counted, skipped
    (root / "rollouts.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_scores_do_not_depend_on_padding(setup):
    from dscoder.models.hf import load_model
    from dscoder.tokenizer.bpe import load_tokenizer

    torch.manual_seed(0)
    rm = RewardModel(load_model(str(setup / "model"))).eval()
    tok = load_tokenizer(str(setup / "model"))
    rows = [rollout_ids(tok, "def f():\n    return ", "completion", "7"),
            rollout_ids(tok, "def value():\n    return ", "completion", "alpha + 1")]
    with torch.no_grad():
        together = rm(rows)
        alone = torch.cat([rm([r]) for r in rows])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rm_out") / "rm"
    code, stdout, err = cli("rm", "train", "--model", str(setup / "model"), "--data", str(setup / "rollouts.jsonl"),
                            "--out", str(out), "--epochs", "4", "--lr", "1e-3", "--batch-size", "8",
                            "--heldout-every", "4", "--device", "cpu")
    assert code == 0, err
    assert json.loads(stdout) == json.loads((out / "reward_model.json").read_text()) | {"records": 401, "bad": 1,
                                                                                         "unique": 200}
    return out


def test_rm_train_beats_the_majority_class_on_held_out_pairs(trained):
    info = json.loads((trained / "reward_model.json").read_text())
    assert info["heldout_pairs"] > 20 and info["train_pairs"] + info["heldout_pairs"] == 200
    assert info["heldout_accuracy"] > info["heldout_majority_baseline"] + 0.05, info
    assert info["heldout_accuracy"] >= 0.9


def test_trained_rm_prefers_passing_completions(trained):
    from dscoder.tokenizer.bpe import load_tokenizer

    rm, tok = load_reward_model(trained), load_tokenizer(str(trained))
    p = rm_rewards(rm, [rollout_ids(tok, "def answer():\n    return ", "completion", c) for c in ("4", "None", "8")])
    assert p[0] > 0.5 > p[1] and p[2] > 0.5


def test_bad_input(setup, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\nnot json\n')
    out = tmp_path / "rm"
    code, _, err = cli("rm", "train", "--model", str(setup / "model"), "--data", str(bad), "--out", str(out))
    assert code == 2 and "no usable record" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = cli("grpo", "--model", str(setup / "model"), "--tasks", str(setup / "tasks.jsonl"), "--out",
                       str(out), "--steps", "1", "--reward", f"rm:{tmp_path}")
    assert code == 2 and "not a reward model folder" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
