"""GRPO: the loss against TRL's formulas, log-probs against plain forwards, rewards through the real sandbox, and
`dscoder grpo` as a real process (the toy run's reward rises; exact resume; bad input is one line, exit 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dscoder.errors import UserError
from dscoder.train.grpo import completion_logps, group_advantages, grpo_loss, tasks_for_step
from dscoder.train.rewards import load_tasks, make_task, sandbox_reward

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


# ------------------------------------------------------------------ TRL's formulas, written out independently
def trl_advantages(rewards: torch.Tensor, G: int, scale: str) -> torch.Tensor:
    """trl/trainer/grpo_trainer.py `_generate_and_score_completions`: r - group mean, / (std + 1e-4) with the
    Bessel-corrected (torch.std default) std of the group or of the batch, unless scale_rewards == "none"."""
    mean = rewards.view(-1, G).mean(dim=1).repeat_interleave(G)
    if scale == "batch":
        std = rewards.std().expand_as(rewards)
    else:
        std = rewards.view(-1, G).std(dim=1).repeat_interleave(G)
    adv = rewards - mean
    return adv if scale == "none" else adv / (std + 1e-4)


def trl_loss(logps, old, ref, adv, mask, beta, eps_low, eps_high, loss_type, max_len):
    """trl/trainer/grpo_trainer.py `_compute_loss` (token-level importance sampling, no vLLM, one process, no
    gradient accumulation): coef_1 = exp(logp - old), coef_2 = clamp(coef_1, 1-ε_low, 1+ε_high),
    -min(coef_1 A, coef_2 A) + β k3; grpo: per-sequence masked mean then mean; dapo: masked sum /
    num_items_in_batch; dr_grpo: masked sum / (B max_completion_length)."""
    a = adv.unsqueeze(1)
    coef_1 = torch.exp(logps - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    ptl = -torch.min(coef_1 * a, coef_2 * a)
    if beta != 0.0:
        ptl = ptl + beta * (torch.exp(ref - logps) - (ref - logps) - 1)
    if loss_type == "grpo":
        return ((ptl * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "dapo":
        return (ptl * mask).sum() / mask.sum().clamp(min=1.0)
    return (ptl * mask).sum() / (ptl.size(0) * max_len)


def fixed_batch(B=6, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logps + (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.5)   # ratios 0.6 ... 1.65: clipping fires
    ref = logps + (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.5)
    mask = torch.ones(B, T, dtype=torch.float64)
    for b, n in enumerate([5, 3, 1, 4, 2, 5][:B]):
        mask[b, n:] = 0
    adv = torch.tensor([1.2, -0.7, 0.3, -1.5, 0.9, 0.0][:B], dtype=torch.float64)
    return logps, old, ref, adv, mask


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta,eps_low,eps_high", [(0.0, 0.2, 0.2), (0.04, 0.2, 0.28), (0.5, 0.1, 0.3)])
def test_loss_matches_trl(loss_type, beta, eps_low, eps_high):
    logps, old, ref, adv, mask = fixed_batch()
    ours, m = grpo_loss(logps, old, ref if beta else None, adv, mask, beta=beta, epsilon_low=eps_low,
                        epsilon_high=eps_high, loss_type=loss_type, max_completion_length=7)
    want = trl_loss(logps, old, ref, adv, mask, beta, eps_low, eps_high, loss_type, 7)
    assert torch.allclose(ours, want, rtol=1e-12, atol=1e-12), (float(ours), float(want))
    ratio = torch.exp(logps - old)
    a = adv[:, None]
    region = (((ratio < 1 - eps_low) & (a < 0)) | ((ratio > 1 + eps_high) & (a > 0))).double()
    assert m["clip_frac"] == pytest.approx(float((region * mask).sum() / mask.sum()))
    assert 0 < m["clip_frac"] < 1
    if beta:
        k3 = torch.exp(ref - logps) - (ref - logps) - 1
        assert m["kl"] == pytest.approx(float((k3 * mask).sum() / mask.sum())) and m["kl"] > 0
    else:
        assert m["kl"] is None


def test_loss_aggregations_differ_as_documented():
    """One long and one short completion with the same per-token loss: grpo weights sequences equally, dapo
    weights tokens equally, dr_grpo divides by B x max length."""
    logps = torch.zeros(2, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)     # per-token loss -1 and +1 (ratio 1)
    kw = dict(beta=0.0, epsilon_low=0.2, epsilon_high=0.2, max_completion_length=8)
    assert float(grpo_loss(logps, logps, None, adv, mask, loss_type="grpo", **kw)[0]) == pytest.approx(0.0)
    assert float(grpo_loss(logps, logps, None, adv, mask, loss_type="dapo", **kw)[0]) == pytest.approx(-3 / 5)
    assert float(grpo_loss(logps, logps, None, adv, mask, loss_type="dr_grpo", **kw)[0]) == pytest.approx(-3 / 16)


def test_on_policy_gradient_is_advantage_times_grad_logp():
    """μ = 1: old = logps.detach(), ratio 1, loss value 0 with zero-mean A, gradient -A/|o| per token (grpo)."""
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    adv = torch.tensor([0.5, -0.5], dtype=torch.float64)
    loss, _ = grpo_loss(logps, logps.detach(), None, adv, mask, beta=0.0, epsilon_low=0.2, epsilon_high=0.2,
                        loss_type="grpo")
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.0)
    want = torch.tensor([[-0.5 / 2 / 2, -0.5 / 2 / 2], [0.5 / 1 / 2, 0.0]], dtype=torch.float64)
    assert torch.allclose(logps.grad, want)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_trl(scale):
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    adv, zero = group_advantages(rewards, 4, scale)
    assert torch.allclose(adv, trl_advantages(rewards, 4, scale), atol=1e-6)
    assert zero.tolist() == [False, True, False]
    assert torch.all(adv[4:8] == 0)


def test_advantages_skip_missing_verdicts():
    """A NaN reward (sandbox failure) is left out of the group's mean and std and gets advantage 0."""
    adv, _ = group_advantages(torch.tensor([1.0, 0.0, float("nan"), 0.0]), 4)
    assert adv[2] == 0
    assert torch.allclose(adv[[0, 1, 3]], trl_advantages(torch.tensor([1.0, 0.0, 0.0]), 3, "group"), atol=1e-6)


def test_bad_loss_arguments():
    logps, old, ref, adv, mask = fixed_batch()
    kw = dict(epsilon_low=0.2, epsilon_high=0.2)
    with pytest.raises(UserError, match="beta must be >= 0"):
        grpo_loss(logps, old, ref, adv, mask, beta=-0.1, loss_type="grpo", **kw)
    with pytest.raises(UserError, match="needs ref_logps"):
        grpo_loss(logps, old, None, adv, mask, beta=0.04, loss_type="grpo", **kw)
    with pytest.raises(UserError, match="loss_type"):
        grpo_loss(logps, old, None, adv, mask, beta=0.0, loss_type="bnpo", **kw)
    with pytest.raises(UserError, match="max_completion_length"):
        grpo_loss(logps, old, None, adv, mask, beta=0.0, loss_type="dr_grpo", **kw)
    with pytest.raises(UserError, match="group"):
        group_advantages(torch.zeros(6), 1)


def test_completion_logps_equal_unpadded_forwards():
    from dscoder.models.hf import build_model
    from dscoder.models.presets import get_preset

    torch.manual_seed(0)
    model = build_model(get_preset("tiny", vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))
    prompts, comps = [[1, 5, 7], [1, 9], [1, 3, 4, 8, 2]], [[4, 4], [6, 7, 8, 9], [11]]
    logps, mask = completion_logps(model, prompts, comps, temperature=0.7)
    assert logps.shape == mask.shape == (3, 4)
    for b, (p, c) in enumerate(zip(prompts, comps)):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([p + c]))[0] / 0.7, -1)
        want = torch.stack([lp[len(p) - 1 + i, t] for i, t in enumerate(c)])
        assert torch.allclose(logps[b, :len(c)].detach(), want, atol=1e-5)
        assert mask[b].tolist() == [i < len(c) for i in range(4)]


def test_task_order_covers_every_task_each_epoch():
    seen = [i for s in range(5) for i in tasks_for_step(s, 10, 2, seed=3)]
    assert sorted(seen) == list(range(10))
    assert tasks_for_step(7, 10, 2, seed=3) == tasks_for_step(7, 10, 2, seed=3) != tasks_for_step(7, 10, 2, seed=4)


# ------------------------------------------------------------------ rewards: the real two-process sandbox
ADD = {"task_id": "add", "prompt": "def add(a, b):\n", "tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0"}


@pytest.mark.parametrize("completion,reward", [
    ("    return a + b\n", 1.0),
    ("    return a - b\n", 0.0),
    ("    import sys; sys.exit(0)\nimport sys\nsys.exit(0)\n", 0.0),
    ("    return 0\nprint('PASS')\n", 0.0),
    ("    class Eq:\n        def __eq__(self, o): return True\n    return Eq()\n", 0.0),
])
def test_reward_cannot_be_forged(completion, reward):
    assert sandbox_reward(make_task(ADD, "t:1"), completion, timeout=10)[0] == reward


def test_chat_task_scores_the_first_python_block():
    task = make_task({"instruction": "Write add.", "tests": ["assert add(2, 3) == 5"]}, "t:1")
    answer = "Here:\n```python\ndef add(a, b):\n    return a + b\n```\nand a wrong one:\n```python\nadd = 0\n```"
    assert sandbox_reward(task, answer, 10) == (1.0, "passed")
    he = make_task({"prompt": "def inc(x):\n", "entry_point": "inc",
                    "tests": "def check(candidate):\n    assert candidate(1) == 2\n"}, "t:2")
    assert sandbox_reward(he, "    return x + 1\n", 10)[0] == 1.0
    assert sandbox_reward(he, "    return x\n", 10)[0] == 0.0


@pytest.mark.parametrize("line,msg", [
    ('{"prompt": "x", "tests": "assert f(1) ==="}', "not valid Python"),
    ('{"prompt": "x", "instruction": "y", "tests": "assert f()"}', "exactly one of"),
    ('{"prompt": "x", "tests": "assert 1 == 1"}', "call no function"),
    ('{"prompt": "x", "tests": "assert f()", "language": "java"}', "Python tests only"),
    ('not json', "not JSON"),
])
def test_bad_task_records(tmp_path, line, msg):
    f = tmp_path / "tasks.jsonl"
    f.write_text('{"prompt": "def f():\\n", "tests": "assert f() == 1"}\n' + line + "\n")
    with pytest.raises(UserError, match=msg) as e:
        load_tasks(f)
    assert f"{f}:2" in str(e.value)


# ------------------------------------------------------------------ dscoder grpo as a process
def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """The documented toy run (scripts/grpo_toy.py), 20 steps: ~30-60 s on one thread."""
    out = tmp_path_factory.mktemp("toy")
    r = run(str(ROOT / "scripts" / "grpo_toy.py"), "--out", str(out), "--steps", "20")
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_toy_reward_rises(toy):
    m = rows(toy / "run" / "metrics.jsonl")
    assert [r["step"] for r in m] == list(range(1, 21))
    first, last = [r["reward_mean"] for r in m[:5]], [r["reward_mean"] for r in m[-5:]]
    assert sum(last) / 5 > sum(first) / 5 + 0.15, (first, last)
    for key in ("reward_std", "pass_rate", "kl", "clip_frac", "completion_len_mean", "completion_len_max",
                "truncated_frac", "frac_reward_zero_std", "rollout_s", "learn_s"):
        assert key in m[-1], key
    roll = rows(toy / "run" / "rollouts.jsonl")
    assert len(roll) == 20 * 16 * 4
    assert {"step", "task_id", "completion", "reward", "passed"} <= set(roll[0])
    assert all(r["passed"] == (r["completion"].strip().isdigit() and len(r["completion"].strip()) == 1)
               for r in roll)
    assert (toy / "run" / "reward.png").stat().st_size > 1000
    assert (toy / "run" / "final" / "model.safetensors").is_file()


def cli(*args: str) -> tuple[int, str]:
    """`dscoder ARGS` in this process, through the CLI's own entry point: (exit status, stderr)."""
    import contextlib
    import io

    from dscoder.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


def small_run(toy: Path, out: Path, steps: int, *extra: str) -> tuple[int, str]:
    return cli("grpo", "--model", str(toy / "setup" / "model"), "--tasks", str(toy / "setup" / "tasks.jsonl"),
               "--out", str(out), "--steps", str(steps), "--group-size", "4", "--prompts-per-step", "2",
               "--max-new-tokens", "3", "--lr", "3e-3", "--mu", "2", "--save-every", "2", "--device", "cpu", *extra)


def test_resume_is_exact_and_refuses_changed_hyperparameters(toy, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert small_run(toy, straight, 4)[0] == 0
    assert small_run(toy, resumed, 2)[0] == 0
    before = (resumed / "metrics.jsonl").read_text()
    code, err = small_run(toy, resumed, 4, "--resume", "--beta", "0.1")
    assert code == 2 and "beta: 0.04 -> 0.1" in err and len(err.strip().splitlines()) == 1, err
    assert (resumed / "metrics.jsonl").read_text() == before
    code, err = small_run(toy, resumed, 4, "--resume")
    assert code == 0, err[-2000:]
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(resumed / "final" /
                                                                                   "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "rollouts.jsonl").read_text() == (resumed / "rollouts.jsonl").read_text()
    strip = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows(straight / "metrics.jsonl")]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows(resumed / "metrics.jsonl")]
    code, err = small_run(toy, straight, 4)
    assert code == 2 and "--resume" in err


@pytest.mark.parametrize("extra,tasks,msg", [
    (("--group-size", "1"), None, "--group-size"),
    (("--beta", "-0.5"), None, "--beta"),
    ((), '{"prompt": "def f():\\n", "tests": "assert f( =="}\n', "not valid Python"),
    ((), '{"instruction": "hi", "tests": "assert f() == 1"}\n', "exceeds the model's context"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(toy, tmp_path, extra, tasks, msg):
    """The last case: the chat template's system prompt alone does not fit the toy model's 64-token context."""
    task_file = toy / "setup" / "tasks.jsonl"
    if tasks is not None:
        task_file = tmp_path / "tasks.jsonl"
        task_file.write_text(tasks)
    out = tmp_path / "out"
    code, err = cli("grpo", "--model", str(toy / "setup" / "model"), "--tasks", str(task_file), "--out", str(out),
                    "--steps", "1", "--max-new-tokens", "8", *extra)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and msg in err, err
    assert not out.exists()


def test_mbpp_train_split_is_the_default_task_set(benchmarks_dir):
    """Task ids 601-974 only; the reference solutions of a sample pass through the reward, wrong ones do not."""
    from dscoder.train.rewards import mbpp_train_tasks, score_all

    tasks = mbpp_train_tasks(benchmarks_dir / "mbpp" / "mbpp.jsonl")
    ids = [int(t.task_id.split("/")[1]) for t in tasks]
    assert len(tasks) == 372 and min(ids) >= 601 and max(ids) == 974 and 601 not in ids
    refs = {r["task_id"]: r["code"] for r in map(json.loads, (benchmarks_dir / "mbpp" / "mbpp.jsonl").open())}
    sample = tasks[::37]
    answers = [f"```python\n{refs[int(t.task_id.split('/')[1])]}\n```" for t in sample]
    assert [r for r, _ in score_all(sample, answers, 10, 2)] == [1.0] * len(sample)
    assert [r for r, _ in score_all(sample, ["```python\nx = 1\n```"] * len(sample), 10, 2)] == [0.0] * len(sample)


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_matches(toy, tmp_path):
    import signal
    import time

    args = ["--model", str(toy / "setup" / "model"), "--tasks", str(toy / "setup" / "tasks.jsonl"),
            "--group-size", "4", "--prompts-per-step", "2", "--max-new-tokens", "3", "--lr", "3e-3", "--mu", "2",
            "--save-every", "1000", "--device", "cpu"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "dscoder.cli", "grpo", *args, "--out", str(killed),
                             "--steps", "1000"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    step = len(rows(metrics))
    assert (killed / "checkpoints" / f"step-{step:08d}" / "manifest.json").is_file() and "--resume" in err
    assert cli("grpo", *args, "--out", str(killed), "--steps", str(step + 2), "--resume")[0] == 0
    straight = tmp_path / "straight"
    assert cli("grpo", *args, "--out", str(straight), "--steps", str(step + 2))[0] == 0
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(killed / "final" /
                                                                                 "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "rollouts.jsonl").read_text() == (killed / "rollouts.jsonl").read_text()


def test_chat_rollouts_end_with_the_template_end_token(toy):
    """Chat tasks are rendered by the tokenizer's chat template and stop at <|EOT|>, which ends the completion's
    ids (so its log-prob is trained) but not its text."""
    from dscoder.infer.engine import Engine
    from dscoder.infer.text import chat_ids
    from dscoder.models.hf import build_model
    from dscoder.models.presets import get_preset
    from dscoder.tokenizer.bpe import load_tokenizer
    from dscoder.tokenizer.special import special_ids
    from dscoder.train.grpo import rollout

    tok = load_tokenizer(str(toy / "setup" / "model"))
    eot = special_ids(tok).eot
    torch.manual_seed(0)
    model = build_model(get_preset("tiny", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=512))
    with torch.no_grad():             # make <|EOT|> likely, so that some rows stop before the length cap
        model.lm_head.weight[eot] = 0.5
    task = make_task({"instruction": "Write f.", "tests": "assert f() == 1"}, "t:1")
    prompt = chat_ids(tok, [{"role": "user", "content": task.instruction}])
    ids, texts, reasons = rollout(Engine(model), tok, [prompt] * 8, ["chat"] * 8, 6, 1.0, seed=1)
    assert "stop" in reasons
    for i, t, r in zip(ids, texts, reasons):
        assert (i[-1] == eot) == (r == "stop") and len(i) <= 6
        assert t == tok.decode(i[:-1] if r == "stop" else i, skip_special_tokens=True)


def test_skip_zero_std_groups_and_other_aggregations(toy, tmp_path):
    """With --skip-zero-std, groups whose rewards all tie are counted and left out of the update; a step where
    every group ties makes no update (loss None). dapo aggregation and batch scaling run through the CLI."""
    out = tmp_path / "skip"
    code, err = small_run(toy, out, 3, "--skip-zero-std", "--loss-type", "dapo", "--scale-rewards", "batch",
                          "--beta", "0")
    assert code == 0, err
    m = rows(out / "metrics.jsonl")
    for r in m:
        assert r["groups_skipped"] == round(r["frac_reward_zero_std"] * 2)
        assert (r["loss"] is None) == (r["groups_skipped"] == 2)
        assert r["kl"] is None
    assert any(r["groups_skipped"] for r in m)
