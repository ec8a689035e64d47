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
from dscoder.train.grpo import (MicroBatch, PolicyLoss, completion_logps, group_advantages, grpo_loss, micro_batches,
                                policy_backward)
from dscoder.train.rewards import load_tasks, make_task, sandbox_reward, task_at

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


def tiny_model(seed: int = 0, vocab: int = 50):
    from dscoder.models.hf import build_model
    from dscoder.models.presets import get_preset

    torch.manual_seed(seed)
    return build_model(get_preset("tiny", vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_and_processes_give_the_unbatched_update(loss_type):
    """The gradient of one `grpo_loss` over every completion equals: the micro-batched accumulation (any size), and
    the sum of what two processes compute on their rows (DDP then averages), with a padding pass where one
    process has run out of rows. μ > 1 (old log-probs of an earlier policy) and β > 0 (a reference) included."""
    import copy

    model, ref = tiny_model(0), tiny_model(1)
    old_model = copy.deepcopy(model)
    with torch.no_grad():
        for p in old_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (3, 5, 2, 4, 6, 3, 2)]
    comps = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (1, 4, 2, 3, 1, 4, 2)]
    adv = torch.randn(7, generator=g)
    rows = [0, 1, 3, 4, 6]                          # rows 2 and 5 left out (a skipped group)
    loss = PolicyLoss(beta=0.04, epsilon_low=0.2, epsilon_high=0.28, loss_type=loss_type, max_completion_length=4,
                      temperature=0.7)

    def grads():
        out = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return out

    def fill(micro):
        with torch.no_grad():
            for m in micro:
                m.old = completion_logps(old_model, m.prompts, m.completions, 0.7)[0]
                m.ref = completion_logps(ref, m.prompts, m.completions, 0.7)[0]
        return micro

    whole = fill([MicroBatch([prompts[b] for b in rows], [comps[b] for b in rows], adv[rows], 0)])[0]
    logps, mask = completion_logps(model, whole.prompts, whole.completions, 0.7)
    want_loss, _ = grpo_loss(logps, whole.old, whole.ref, whole.advantages, mask, beta=0.04, epsilon_low=0.2,
                             epsilon_high=0.28, loss_type=loss_type, max_completion_length=4)
    want_loss.backward()
    want = grads()
    total = sum(loss.units(comps[b]) for b in rows)
    for size in (None, 1, 2, 3):
        micro = fill(micro_batches(rows, prompts, comps, adv, loss, size))
        sums = policy_backward(model, micro, loss, total)
        assert sums["loss"] == pytest.approx(float(want_loss.detach()), abs=1e-6)
        got = grads()
        assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want), size
    per_rank = [fill(micro_batches(rows, prompts, comps, adv, loss, 2, rank=r, world=2)) for r in (0, 1)]
    assert [len(m) for m in per_rank] == [2, 2] and per_rank[1][1].units == 0       # rank 1: rows 1, 4; padding
    summed = {k: torch.zeros_like(v) for k, v in want.items()}
    for micro in per_rank:
        policy_backward(model, micro, loss, total, world=2)
        for k, v in grads().items():
            summed[k] += v / 2                                                       # DDP's mean over processes
    assert all(torch.allclose(summed[k], want[k], atol=1e-6) for k in want)


def test_task_order_covers_every_task_each_epoch():
    seen = [task_at(k, 10, seed=3) for k in range(10)]
    assert sorted(seen) == list(range(10))
    assert sorted(task_at(k, 10, seed=3) for k in range(10, 20)) == list(range(10))
    assert [task_at(k, 10, 3) for k in range(14, 16)] == [task_at(k, 10, 3) for k in range(14, 16)] != \
        [task_at(k, 10, 4) for k in range(14, 16)]


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


TOY_STEPS = 12


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """The documented toy run (scripts/grpo_toy.py), 12 steps. Its step-10 checkpoint, a policy about half of whose
    answers pass, starts the shorter runs below (so that groups differ and updates happen); its rollouts train
    the reward model."""
    out = tmp_path_factory.mktemp("toy")
    r = run(str(ROOT / "scripts" / "grpo_toy.py"), "--out", str(out), "--steps", str(TOY_STEPS))
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def policy(toy: Path) -> Path:
    return toy / "run" / "checkpoints" / "step-00000010"


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_toy_reward_rises(toy):
    m = rows(toy / "run" / "metrics.jsonl")
    assert [r["step"] for r in m] == list(range(1, TOY_STEPS + 1))
    first, last = [r["reward_mean"] for r in m[:4]], [r["reward_mean"] for r in m[-4:]]
    assert sum(last) / 4 > sum(first) / 4 + 0.3, (first, last)
    for key in ("reward_std", "pass_rate", "kl", "clip_frac", "completion_len_mean", "completion_len_max",
                "truncated_frac", "frac_reward_zero_std", "groups_sampled", "rollout_s", "learn_s"):
        assert key in m[-1], key
    roll = rows(toy / "run" / "rollouts.jsonl")
    assert len(roll) == TOY_STEPS * 16 * 4
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


def small_args(toy: Path, *extra: str) -> list[str]:
    return ["grpo", "--model", str(policy(toy)), "--tasks", str(toy / "setup" / "tasks.jsonl"), "--group-size",
            "4", "--prompts-per-step", "2", "--max-new-tokens", "1", "--lr", "3e-3", "--mu", "2", "--device", "cpu",
            *extra]


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


def test_sigterm_checkpoint_then_exact_resume_that_refuses_changed_hyperparameters(toy, tmp_path):
    import signal
    import time

    killed = tmp_path / "killed"
    args = ["--out", str(killed), "--steps", "1000", "--save-every", "1000", "--rollout-batch", "2"]   # one batch
    proc = subprocess.Popen([sys.executable, "-m", "dscoder.cli", *small_args(toy, *args)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    step = len(rows(metrics))
    assert (killed / "checkpoints" / f"step-{step:08d}" / "manifest.json").is_file() and "--resume" in err
    before = metrics.read_text()
    args = ["--out", str(killed), "--steps", str(step + 2), "--save-every", "1000", "--rollout-batch", "2"]
    code, err = cli(*small_args(toy, *args, "--resume", "--beta", "0.1"))
    assert code == 2 and "beta: 0.04 -> 0.1" in err and len(err.strip().splitlines()) == 1, err
    assert metrics.read_text() == before
    assert cli(*small_args(toy, *args, "--resume"))[0] == 0
    straight = tmp_path / "straight"
    assert cli(*small_args(toy, *args[2:], "--out", str(straight)))[0] == 0
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(killed / "final" /
                                                                                 "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "rollouts.jsonl").read_text() == (killed / "rollouts.jsonl").read_text()
    strip = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows(straight / "metrics.jsonl")]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows(metrics)]
    assert any(r["loss"] for r in strip)                    # updates happened: the comparison is not vacuous
    code, err = cli(*small_args(toy, *args[2:], "--out", str(straight)))
    assert code == 2 and "--resume" in err


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


def test_skip_zero_std_and_dapo_dynamic_sampling(toy, tmp_path):
    """--skip-zero-std: groups whose rewards all tie are counted and left out of the update; a step where every
    group ties makes no update (loss None). --dynamic-sampling 3: more rounds of P tasks are sampled (and logged)
    until P groups whose rewards differ are found, at most 3 rounds; only P groups are trained on. dapo
    aggregation and batch scaling run through the CLI."""
    out = tmp_path / "skip"
    code, err = cli(*small_args(toy, "--out", str(out), "--steps", "3", "--skip-zero-std", "--loss-type", "dapo",
                                "--scale-rewards", "batch", "--beta", "0"))
    assert code == 0, err
    m = rows(out / "metrics.jsonl")
    for r in m:
        assert r["groups_sampled"] == 2 and r["groups_skipped"] == round(r["frac_reward_zero_std"] * 2)
        assert (r["loss"] is None) == (r["groups_skipped"] == 2)
        assert r["kl"] is None
    out = tmp_path / "dynamic"
    code, err = cli(*small_args(toy, "--out", str(out), "--steps", "4", "--dynamic-sampling", "3"))
    assert code == 0, err
    m, roll = rows(out / "metrics.jsonl"), rows(out / "rollouts.jsonl")
    for r in m:
        groups = [roll[i:i + 4] for i in range(0, len(roll), 4) if roll[i]["step"] == r["step"]]
        ties = [len({g["reward"] for g in group}) == 1 for group in groups]
        assert len(groups) == r["groups_sampled"] and r["groups_sampled"] in (2, 4, 6)
        assert r["frac_reward_zero_std"] == pytest.approx(sum(ties) / len(ties))
        assert r["groups_sampled"] - r["groups_skipped"] == min(2, ties.count(False))
        assert r["groups_sampled"] == 6 or ties.count(False) >= 2       # stopped early only when P were found
    assert any(r["groups_sampled"] > 2 for r in m)


def test_rollouts_then_reward_model_then_grpo_on_its_rewards(toy, tmp_path):
    """The V2 loop end to end: `dscoder rm train` on the toy run's OUT/rollouts.jsonl (test verdicts), then
    `dscoder grpo --reward rm:DIR` with the reward model's scores as rewards."""
    rm = tmp_path / "rm"
    code, err = cli("rm", "train", "--model", str(toy / "setup" / "model"), "--data",
                    str(toy / "run" / "rollouts.jsonl"), "--out", str(rm), "--epochs", "2", "--lr", "1e-3",
                    "--batch-size", "16", "--device", "cpu")
    assert code == 0, err
    info = json.loads((rm / "reward_model.json").read_text())
    pairs = {(r["prompt"], r["completion"]) for r in rows(toy / "run" / "rollouts.jsonl")}
    assert info["train_pairs"] + info["heldout_pairs"] == len(pairs) and info["heldout_pairs"] > 10
    assert info["heldout_accuracy"] > info["heldout_majority_baseline"], info
    out = tmp_path / "grpo"
    code, err = cli(*small_args(toy, "--out", str(out), "--steps", "2", "--reward", f"rm:{rm}", "--beta", "0"))
    assert code == 0, err
    roll = rows(out / "rollouts.jsonl")
    assert len(roll) == 16 and all(0 < r["reward"] < 1 for r in roll)        # sigmoid scores, not 0/1 verdicts
    assert all(r["passed"] == (r["completion"].strip().isdigit() and len(r["completion"].strip()) == 1)
               for r in roll)                                                # the tests still ran
    assert all(r["loss"] is not None for r in rows(out / "metrics.jsonl"))


# ------------------------------------------------------------------ torchrun: 2 processes (gloo)
def dist_args(toy: Path, out: Path, *extra: str) -> list[str]:
    """3 tasks per step over 2 processes (one samples 2 groups, the other 1), DAPO dynamic sampling (the task
    cursor moves by the rounds sampled), μ 2, micro-batches of 4, dapo aggregation, a checkpoint every step."""
    return ["grpo", "--model", str(policy(toy)), "--tasks", str(toy / "setup" / "tasks.jsonl"), "--out", str(out),
            "--steps", "4", "--group-size", "4", "--prompts-per-step", "3", "--max-new-tokens", "1", "--lr", "3e-3",
            "--mu", "2", "--micro-batch-size", "4", "--dynamic-sampling", "3", "--loss-type", "dapo",
            "--save-every", "1", "--keep-last", "4", "--device", "cpu", *extra]


def torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "dscoder.cli", *args]


@pytest.fixture(scope="module")
def two_procs(toy, tmp_path_factory) -> tuple[Path, Path]:
    """(an uninterrupted 2-process run, the same run SIGKILLed as a whole job once its first checkpoint is written
    and resumed with --resume). The two jobs start together."""
    import signal
    import time

    root = tmp_path_factory.mktemp("torchrun")
    straight, killed = root / "straight", root / "killed"
    jobs = [subprocess.Popen(torchrun(dist_args(toy, out)), env=ENV, stdout=subprocess.DEVNULL,
                             stderr=open(root / f"{out.name}.err", "w"), start_new_session=True)
            for out in (straight, killed)]
    first = killed / "checkpoints" / "step-00000001" / "manifest.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and jobs[1].poll() is None and not first.exists():
            time.sleep(0.02)
        assert jobs[1].poll() is None, "the job ended before it could be killed"
    finally:
        os.killpg(jobs[1].pid, signal.SIGKILL)          # the launcher and both processes at once
        jobs[1].wait()
    assert not (killed / "final").exists()
    resumed = subprocess.run(torchrun(dist_args(toy, killed, "--resume")), env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert jobs[0].wait(timeout=300) == 0, (root / "straight.err").read_text()[-3000:]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return straight, killed


def test_two_processes_match_one_and_fsdp(toy, two_procs, tmp_path):
    """The same groups are sampled (one seed per group, whichever process samples it), the same rewards and
    advantages follow, and the update is the same up to the order of fp32 sums. Adam's first step moves every
    weight by about lr x sign(gradient), so gradients at the level of rounding noise move by up to 2 lr: the
    weights are compared by how far they moved, the losses with a relative tolerance. FSDP2 (a gloo group of
    one, in this process) samples from a gathered copy and gives the same run."""
    import socket

    import torch.distributed as tdist

    straight = two_procs[0]
    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    code, err = cli(*dist_args(toy, one))
    assert code == 0, err[-2000:]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        code, err = cli(*dist_args(toy, fsdp, "--fsdp"))
    finally:
        tdist.destroy_process_group()
    assert code == 0, err[-2000:]
    start = load_file(str(policy(toy) / "model.safetensors"))
    w1 = load_file(str(one / "final" / "model.safetensors"))
    moved = sum(float(((w1[k] - start[k]) ** 2).sum()) for k in w1) ** 0.5
    for other in (straight, fsdp):
        assert (one / "rollouts.jsonl").read_text() == (other / "rollouts.jsonl").read_text()
        a, b = rows(one / "metrics.jsonl"), rows(other / "metrics.jsonl")
        assert [r["step"] for r in b] == [1, 2, 3, 4]
        assert any(r["groups_sampled"] > 3 for r in b) and sum(r["loss"] is not None for r in b) >= 2
        for x, y in zip(a, b):
            assert (x["reward_mean"], x["groups_sampled"], x["groups_skipped"], x["clip_frac"]) == \
                (y["reward_mean"], y["groups_sampled"], y["groups_skipped"], y["clip_frac"])
            for k in ("loss", "kl", "grad_norm") if x["loss"] is not None else ():
                assert x[k] == pytest.approx(y[k], rel=2e-3), (k, x, y)
        w2 = load_file(str(other / "final" / "model.safetensors"))
        apart = sum(float(((w1[k] - w2[k]) ** 2).sum()) for k in w1) ** 0.5
        assert apart < 0.01 * moved, (other.name, apart, moved)


def test_two_processes_resume_after_sigkill_is_exact(two_procs):
    straight, resumed = two_procs
    assert (resumed / "rollouts.jsonl").read_text() == (straight / "rollouts.jsonl").read_text()
    strip = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows(straight / "metrics.jsonl")]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows(resumed / "metrics.jsonl")]
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(resumed / "final" /
                                                                                    "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
