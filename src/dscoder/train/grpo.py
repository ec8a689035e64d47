"""`dscoder grpo`: Group Relative Policy Optimization against unit tests run in the sandbox (DeepSeekMath
arXiv 2402.03300 §4.1 eq. 3-4; DeepSeek-Coder-V2 §3.5 uses it for code with test-case rewards).

Each step: P tasks (`train.rewards`), G completions each sampled by the inference `Engine` (batched, seeded),
each scored by the sandbox's two-process test verdict; advantages normalised within each group; then μ AdamW
updates of the clipped surrogate with a k3 KL penalty to the frozen starting model (`grpo_loss`).

    loss, metrics = grpo_loss(logps, old_logps, ref_logps, advantages, mask, beta=0.04, epsilon_low=0.2,
                              epsilon_high=0.2, loss_type="grpo")      # (B, T) tensors, advantages (B,)

The formulas are TRL's `GRPOTrainer._compute_loss` (trl/trainer/grpo_trainer.py) and its advantage computation
(`scale_rewards`): per token -min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A) + β(exp(ref-logp) - (ref-logp) - 1), with
ρ = exp(logp - old_logp); aggregated per `loss_type`: "grpo" (mean over each completion's tokens, then over
completions: the paper's 1/G Σ 1/|o_i| Σ_t), "dapo" (sum over all tokens / their number) or "dr_grpo" (sum /
(B x max_completion_length), Dr. GRPO arXiv 2503.20783). With μ = 1, old_logps is logps.detach(): the ratio is
exactly 1, so the loss is near 0 while its gradient is A·∇log π. Watch the reward, not the loss.
Usage is in `main`'s docstring (= `dscoder grpo --help`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..args import (Parser, add_device_args, finite_float, int_range, non_negative_float, out_dir, positive_float,
                    positive_int, resolve_device_dtype)
from ..args import seed as seed_int
from ..durable import lock_run_folder
from ..errors import UserError
from . import checkpoint as ckpt
from .metrics import MetricsLog, Progress, read_metrics, save_figure

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")
STD_EPS = 1e-4                    # TRL: advantages / (std + 1e-4)


# ------------------------------------------------------------------------------------------- the math
def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected standard deviation ignoring NaNs (TRL's `nanstd`); NaN where fewer than 2 values."""
    ok = ~torch.isnan(x)
    n = ok.sum() if dim is None else ok.sum(dim)
    mean = torch.nanmean(x) if dim is None else torch.nanmean(x, dim=dim, keepdim=True)
    sq = torch.where(ok, (x - mean) ** 2, torch.zeros_like(x))
    return ((sq.sum() if dim is None else sq.sum(dim)) / (n - 1)).sqrt()


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages (N,), zero_std (N / group_size,) bool) for rewards (N,) laid out group after group.

    A = r - mean(group); / (std + 1e-4) with the group's ("group") or the whole batch's ("batch") Bessel-corrected
    std, or not scaled ("none"). NaN rewards (no verdict) are left out of means and stds and get A = 0.
    zero_std marks groups whose rewards are all equal: their advantages are 0 and they teach nothing."""
    if scale not in SCALE_REWARDS:
        raise UserError(f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}, got {scale!r}")
    if group_size < 2 or rewards.dim() != 1 or rewards.numel() % group_size:
        raise UserError(f"rewards ({tuple(rewards.shape)}) must be whole groups of size >= 2, got {group_size}")
    grouped = rewards.view(-1, group_size)                                   # (P, G)
    mean = torch.nanmean(grouped, dim=1)                                     # (P,)
    group_std = _nanstd(grouped, dim=1)                                      # (P,)
    adv = grouped - mean[:, None]
    if scale == "group":
        adv = adv / (group_std[:, None] + STD_EPS)
    elif scale == "batch":
        adv = adv / (_nanstd(rewards) + STD_EPS)
    zero_std = torch.nan_to_num(group_std, nan=0.0) == 0
    return torch.nan_to_num(adv.reshape(-1), nan=0.0), zero_std


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, beta: float, epsilon_low: float,
              epsilon_high: float, loss_type: str, max_completion_length: int | None = None
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO objective (see the module docstring) as a loss to minimise, and its figures: `kl` (mean k3 over
    the completion tokens; None when beta is 0), `clip_frac` (tokens whose ratio left the trust region in the
    direction of their advantage), `clip_low_frac`, `clip_high_frac`. logps, old_logps, ref_logps, mask: (B, T);
    advantages: (B,); mask is 1 on completion tokens."""
    if loss_type not in LOSS_TYPES:
        raise UserError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    if not beta >= 0:
        raise UserError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logps is None:
        raise UserError("beta > 0 needs ref_logps (the reference model's log-probs)")
    if logps.shape != old_logps.shape or logps.shape != mask.shape or advantages.shape != logps.shape[:1]:
        raise UserError(f"shapes do not match: logps {tuple(logps.shape)}, old_logps {tuple(old_logps.shape)}, "
                        f"mask {tuple(mask.shape)}, advantages {tuple(advantages.shape)}")
    if loss_type == "dr_grpo" and not max_completion_length:
        raise UserError("loss_type 'dr_grpo' needs max_completion_length")
    mask = mask.to(logps.dtype)
    adv = advantages.to(logps.dtype)[:, None]                                # (B, 1)
    ratio = torch.exp(logps - old_logps)                                     # (B, T)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if beta > 0:
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1                                            # k3, >= 0 (eq. 4)
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "dapo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    else:
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length)

    def masked_mean(x: torch.Tensor) -> float:
        return float((x * mask).sum() / mask.sum().clamp(min=1.0))

    with torch.no_grad():
        low = ((ratio < 1 - epsilon_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + epsilon_high) & (adv > 0)).to(mask.dtype)
        metrics = {"kl": masked_mean(kl) if kl is not None else None, "clip_frac": masked_mean(low + high),
                   "clip_low_frac": masked_mean(low), "clip_high_frac": masked_mean(high)}
    return loss, metrics


def completion_logps(model: torch.nn.Module, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                     temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(token | everything before it) of each completion token (B, T), mask (B, T)), T = longest completion.

    Rows are prompt + completion, right-padded: under a causal mask the padding after a row never reaches its
    real tokens. Logits are divided by the sampling temperature, as TRL does, so the log-probs are those of the
    distribution the completions were drawn from."""
    device = next(model.parameters()).device
    lens = [len(p) + len(c) for p, c in zip(prompts, completions)]
    T = max(len(c) for c in completions)
    ids = torch.zeros(len(prompts), max(lens), dtype=torch.long)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        ids[b, :lens[b]] = torch.tensor([*p, *c])
    ids = ids.to(device)
    logits = model(ids[:, :-1]).float() / temperature                        # (B, L-1, V)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]   # (B, L-1)
    start = torch.tensor([len(p) - 1 for p in prompts], device=device)[:, None]
    col = torch.arange(T, device=device)[None, :]
    mask = col < torch.tensor([len(c) for c in completions], device=device)[:, None]  # (B, T)
    index = (start + col).clamp(max=logp.shape[1] - 1)
    return logp.gather(1, index) * mask, mask


# ------------------------------------------------------------------------------------------- rollouts
def tasks_for_step(step: int, n_tasks: int, per_step: int, seed: int) -> list[int]:
    """The task indices of optimizer step `step` (0-based): epochs of seeded permutations, read in order, so a
    resumed run draws exactly the tasks an uninterrupted one would."""
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(k, n_tasks)
        order = list(range(n_tasks))
        random.Random(f"grpo-tasks-{seed}-{epoch}").shuffle(order)
        out.append(order[i])
    return out


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of one step: a hash of the run seed and the step (0 ... 2**63-1)."""
    return int.from_bytes(hashlib.sha256(f"grpo-{seed}-{step}".encode()).digest()[:8], "big") >> 1


def rollout(engine, tokenizer, prompt_ids: list[list[int]], kinds: list[str], max_new_tokens: int,
            temperature: float, seed: int) -> tuple[list[list[int]], list[str], list[str]]:
    """Sample one completion per row: (completion ids incl. the end token when one was produced, texts, finish
    reasons). Rows of the two kinds (completion, chat) are generated apart: each kind has its own end token."""
    from ..infer.text import decoder, stop_ids

    ids: list[list[int]] = [[] for _ in prompt_ids]
    texts, reasons = [""] * len(prompt_ids), [""] * len(prompt_ids)
    dec = decoder(tokenizer)
    for kind in ("completion", "chat"):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        if not rows:
            continue
        end = stop_ids(tokenizer, kind)[0]      # EOS for completion, <|EOT|> for the v1 chat template
        outs = engine.generate([prompt_ids[i] for i in rows], max_new_tokens=max_new_tokens,
                               temperature=temperature, stop_ids=[end], seed=seed + (kind == "chat"))
        for i, o in zip(rows, outs):
            ids[i] = o.tokens + ([end] if o.finish_reason == "stop" else [])
            texts[i], reasons[i] = dec(o.tokens), o.finish_reason
    return ids, texts, reasons


# ------------------------------------------------------------------------------------------- the run
# settings a resumed run must share with its checkpoint: they decide what each step samples and how it learns
_RESUME_FIXED = ("model", "tasks", "tasks_sha256", "group_size", "prompts_per_step", "beta", "epsilon",
                 "epsilon_high", "mu", "loss_type", "scale_rewards", "temperature", "max_new_tokens", "reward",
                 "lr", "clip", "skip_zero_std", "seed")


def _run_args(args, tasks_digest: str) -> dict[str, Any]:
    return {"model": str(Path(args.model).resolve()), "tasks": str(Path(args.tasks).resolve()) if args.tasks
            else "mbpp-train", "tasks_sha256": tasks_digest, "group_size": args.group_size,
            "prompts_per_step": args.prompts_per_step, "beta": args.beta, "epsilon": args.epsilon,
            "epsilon_high": args.epsilon_high, "mu": args.mu, "loss_type": args.loss_type,
            "scale_rewards": args.scale_rewards, "temperature": args.temperature,
            "max_new_tokens": args.max_new_tokens, "reward": args.reward, "lr": args.lr, "clip": args.clip,
            "skip_zero_std": bool(args.skip_zero_std), "seed": args.seed, "steps": args.steps}


def _plan_start(args, out: Path, run_args: dict) -> tuple[Path | None, bool]:
    """(checkpoint to resume from or None, nothing left to do); refusals are UserErrors and touch nothing."""
    ck_dir, final = out / "checkpoints", out / "final"
    if not args.resume:
        found = [n for n in ("checkpoints", "final", "metrics.jsonl", "rollouts.jsonl") if (out / n).exists()]
        if found:
            raise UserError(f"{out} already holds a run ({', '.join(found)}): pass --resume to continue it, "
                            "or choose a new --out")
        return None, False
    latest, rejected = ckpt.latest_checkpoint(ck_dir)
    if latest is None and rejected:
        why = "".join(f"\n  {p.name}: {r}" for p, r in rejected)
        raise UserError(f"--resume: no usable checkpoint under {ck_dir}; every one was rejected:{why}")
    for p, reason in rejected:
        print(f"dscoder grpo: skipping damaged checkpoint {p.name}: {reason}", file=sys.stderr)
    if latest is None:
        if final.exists() or (out / "metrics.jsonl").exists():
            raise UserError(f"--resume: {out} has no checkpoint to continue from; use a new --out")
        print(f"dscoder grpo: no checkpoint under {ck_dir}; starting at step 0", file=sys.stderr)
        return None, False
    saved = ckpt.load_train_state(latest)
    bad = [k for k in _RESUME_FIXED if saved["args"].get(k) != run_args.get(k)]
    if bad:
        detail = ", ".join(f"{k}: {saved['args'].get(k)!r} -> {run_args.get(k)!r}" for k in bad)
        raise UserError(f"--resume: {detail} differ from the checkpoint; keep them, or start a new --out")
    step = int(saved["step"])
    if args.steps < step:
        raise UserError(f"--resume --steps {args.steps}: {latest} already holds step {step}")
    done = step == args.steps and ckpt.checkpoint_step(final) == step
    return latest, done


def plot_reward(metrics_path: Path, png_path: Path) -> None:
    """Mean reward (and its group std band) per step, written atomically (Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    if not rows:
        return
    x = [r["step"] for r in rows]
    y = [r["reward_mean"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, y, lw=1, label="mean reward (pass rate of the step's rollouts)")
    if len(y) >= 5:
        k = max(2, len(y) // 10)
        smooth = [sum(y[max(0, i - k + 1):i + 1]) / len(y[max(0, i - k + 1):i + 1]) for i in range(len(y))]
        ax.plot(x, smooth, lw=2, label=f"moving mean over {k} steps")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, png_path)


class _Run:
    """The state of one GRPO run: policy, optimizer, frozen reference, engine, tasks and their prompt ids."""

    def __init__(self, args, tasks, prompt_ids, kinds, tokenizer, model, ref, optimizer):
        from ..infer.engine import Engine
        self.args, self.tasks, self.prompt_ids, self.kinds = args, tasks, prompt_ids, kinds
        self.tokenizer, self.model, self.ref, self.optimizer = tokenizer, model, ref, optimizer
        self.engine = Engine(model)
        self.cache: dict = {}
        self.rm = None
        if args.reward.startswith("rm:"):
            from .reward_model import load_reward_model
            self.rm = load_reward_model(args.reward[3:], device=next(model.parameters()).device)

    def step(self, step: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One GRPO step (0-based `step`): rollouts, rewards, μ updates. Returns (metrics row, rollout rows)."""
        a, G = self.args, self.args.group_size
        rows = [i for i in tasks_for_step(step, len(self.tasks), a.prompts_per_step, a.seed) for _ in range(G)]
        prompts = [self.prompt_ids[i] for i in rows]
        t0 = time.perf_counter()
        self.model.eval()
        comp, texts, reasons = rollout(self.engine, self.tokenizer, prompts, [self.kinds[i] for i in rows],
                                       a.max_new_tokens, a.temperature, step_seed(a.seed, step))
        scored, rewards = self._rewards([self.tasks[i] for i in rows], prompts, comp, texts, reasons)
        adv, zero_std = group_advantages(rewards, G, a.scale_rewards)
        t1 = time.perf_counter()
        keep = [b for b in range(len(rows)) if not (a.skip_zero_std and zero_std[b // G])]
        figures = self._learn(prompts, comp, adv, keep) if keep else dict.fromkeys(("loss", "kl", "clip_frac",
                                                                                    "grad_norm"))
        t2 = time.perf_counter()
        n_tok = [len(c) for c in comp]
        row = {"step": step + 1, "reward_mean": _nanmean(rewards), "reward_std": _nanstd_value(rewards),
               "pass_rate": sum(r == 1.0 for r, _ in scored) / len(scored),
               "infra_errors": sum(s == "infra_error" for _, s in scored), **figures,
               "completion_len_mean": sum(n_tok) / len(n_tok), "completion_len_max": max(n_tok),
               "truncated_frac": sum(r == "length" for r in reasons) / len(reasons),
               "frac_reward_zero_std": float(zero_std.float().mean()),
               "groups_skipped": int(zero_std.sum()) if a.skip_zero_std else 0, "rollout_s": round(t1 - t0, 3),
               "learn_s": round(t2 - t1, 3), "completion_tokens_per_s": round(sum(n_tok) / max(t1 - t0, 1e-9), 1)}
        logged = []
        for i, text, (r, status), fr, rw in zip(rows, texts, scored, reasons, rewards.tolist()):
            t = self.tasks[i]
            logged.append({"step": step + 1, "task_id": t.task_id, "prompt": t.prompt if t.prompt is not None
                           else t.instruction, "kind": self.kinds[i], "completion": text,
                           "reward": None if math.isnan(rw) else rw, "passed": r == 1.0, "status": status,
                           "finish_reason": fr})
        return row, logged

    def _rewards(self, tasks, prompts, comp, texts, reasons) -> tuple[list[tuple[float, str]], torch.Tensor]:
        """(test verdicts, rewards (N,)): the verdicts' 0/1, or with --reward rm:DIR the reward model's scores
        (the tests still run: pass_rate and `passed` say what the reward-model-driven policy really does)."""
        from .rewards import score_all

        scored = score_all(tasks, texts, self.args.timeout, self.args.workers, self.cache)
        if self.rm is None:
            return scored, torch.tensor([r for r, _ in scored], dtype=torch.float32)
        from .reward_model import rm_rewards
        ends = [c[:-1] if r == "stop" else c for c, r in zip(comp, reasons)]     # as rollout_ids encodes the text
        return scored, torch.tensor(rm_rewards(self.rm, [p + e for p, e in zip(prompts, ends)]), dtype=torch.float32)

    def _learn(self, prompts, comp, adv, keep: list[int]) -> dict[str, Any]:
        a = self.args
        prompts, comp, adv = [prompts[b] for b in keep], [comp[b] for b in keep], adv[keep]
        self.model.train()
        device = next(self.model.parameters()).device
        adv = adv.to(device)
        with torch.no_grad():
            old = completion_logps(self.model, prompts, comp, a.temperature)[0] if a.mu > 1 else None
            ref = completion_logps(self.ref, prompts, comp, a.temperature)[0] if self.ref is not None else None
        losses, kls, clips, norms = [], [], [], []
        for _ in range(a.mu):
            logps, mask = completion_logps(self.model, prompts, comp, a.temperature)
            loss, m = grpo_loss(logps, logps.detach() if old is None else old, ref, adv, mask, beta=a.beta,
                                epsilon_low=a.epsilon, epsilon_high=a.epsilon_high, loss_type=a.loss_type,
                                max_completion_length=a.max_new_tokens)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.clip)))
            self.optimizer.step()
            losses.append(float(loss.detach()))
            kls.append(m["kl"])
            clips.append(m["clip_frac"])
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": sum(losses) / len(losses), "kl": None if kls[0] is None else sum(kls) / len(kls),
                "clip_frac": sum(clips) / len(clips), "grad_norm": norms[-1]}


def _nanmean(x: torch.Tensor) -> float | None:
    v = float(torch.nanmean(x))
    return None if math.isnan(v) else v


def _nanstd_value(x: torch.Tensor) -> float | None:
    v = float(_nanstd(x)) if x.numel() > 1 else math.nan
    return None if math.isnan(v) else v


# ------------------------------------------------------------------------------------------- CLI
def _reward_spec(text: str) -> str:
    import argparse
    if text == "tests" or (text.startswith("rm:") and len(text) > 3):
        return text
    raise argparse.ArgumentTypeError(f"expected tests or rm:DIR, got {text!r}")


_reward_spec.metavar = "tests|rm:DIR"  # type: ignore[attr-defined]


def _parser() -> Parser:
    p = Parser("dscoder grpo", main.__doc__)
    a = p.add_argument
    a("--model", required=True, metavar="DIR", help="the policy to start from (an HF folder with its tokenizer)")
    a("--tasks", default=None, metavar="FILE",
      help="tasks JSONL (default: MBPP's train split, task_ids 601-974, from $DSCODER_BENCHMARKS/mbpp or the hub)")
    a("--out", required=True, type=out_dir, help="run folder")
    a("--group-size", type=int_range(2), default=8, help="completions per task, G")
    a("--prompts-per-step", type=positive_int, default=4, help="tasks per optimizer step, P")
    a("--beta", type=non_negative_float, default=0.04,
      help="KL coefficient (DeepSeekMath 0.04; 0 loads no reference model)")
    a("--epsilon", type=finite_float(0.0, 1.0, lo_open=True), default=0.2, help="clip range below 1, ε_low")
    a("--epsilon-high", type=positive_float, default=None, help="clip range above 1, ε_high (default: --epsilon)")
    a("--mu", type=positive_int, default=1, help="updates per batch of rollouts, μ")
    a("--loss-type", choices=LOSS_TYPES, default="grpo",
      help="grpo: per-completion token mean, then mean; dapo: token sum / tokens; dr_grpo: sum / (B x max tokens)")
    a("--scale-rewards", choices=SCALE_REWARDS, default="group",
      help="divide advantages by the group's or the batch's std (+1e-4), or not")
    a("--skip-zero-std", action="store_true", help="leave groups whose rewards are all equal out of the update")
    a("--temperature", type=positive_float, default=1.0, help="sampling temperature of the rollouts")
    a("--max-new-tokens", type=positive_int, default=512, help="completion length cap, end token included")
    a("--reward", type=_reward_spec, default="tests",
      help="tests: the sandboxed test verdict (1 pass, 0 fail); rm:DIR: a reward model's sigmoid score")
    a("--lr", type=positive_float, default=1e-6, help="AdamW learning rate (constant; TRL's default)")
    a("--clip", type=positive_float, default=1.0, help="gradient-norm clip")
    a("--steps", type=positive_int, required=True, help="optimizer steps in total")
    a("--save-every", type=int_range(0), default=50, help="checkpoint every N steps (0: only at the end)")
    a("--keep-last", type=positive_int, default=2, help="complete checkpoints to keep")
    a("--resume", action="store_true", help="continue from the newest complete checkpoint under OUT/checkpoints")
    a("--seed", type=seed_int, default=0, help="seeds task order and sampling (0 ... 2**64-1)")
    a("--timeout", type=positive_float, default=10.0, help="sandbox seconds per program")
    a("--workers", type=positive_int, default=2, help="sandboxed test runs at a time")
    add_device_args(p)
    return p


def _load_tasks(args):
    from .rewards import load_tasks, mbpp_train_tasks
    if args.tasks is None:
        return mbpp_train_tasks(), "mbpp-train"
    data = Path(args.tasks).read_bytes() if Path(args.tasks).is_file() else b""
    return load_tasks(args.tasks), hashlib.sha256(data).hexdigest()


def _prompt_ids(tasks, tokenizer, context: int, max_new_tokens: int) -> tuple[list[list[int]], list[str]]:
    """Every task's prompt ids (BOS + prompt, or the chat template's rendering) and kind, checked to fit."""
    from ..infer.text import chat_ids, completion_ids
    ids, kinds = [], []
    for t in tasks:
        if t.prompt is not None:
            ids.append(completion_ids(tokenizer, t.prompt))
            kinds.append("completion")
        else:
            ids.append(chat_ids(tokenizer, [{"role": "user", "content": t.instruction}]))
            kinds.append("chat")
        if len(ids[-1]) + max_new_tokens > context:
            raise UserError(f"task {t.task_id}: prompt of {len(ids[-1])} tokens + --max-new-tokens "
                            f"{max_new_tokens} exceeds the model's context of {context} tokens")
    return ids, kinds


def main(argv: list[str] | None = None) -> int:
    """Reinforcement learning against unit tests (GRPO, DeepSeekMath §4.1; DeepSeek-Coder-V2 §3.5).

    dscoder grpo --model DIR [--tasks FILE] --out DIR --steps N [--group-size G] [--prompts-per-step P]
                 [--beta F] [--epsilon F] [--epsilon-high F] [--mu N] [--loss-type grpo|dapo|dr_grpo]
                 [--scale-rewards group|batch|none] [--temperature T] [--max-new-tokens N] [--reward tests|rm:DIR]
                 [--lr F] [--save-every N] [--resume] [--seed N]

Tasks JSONL, one per line: {"prompt": CODE, "tests": PY} (the program is prompt + completion) or
{"instruction": TEXT, "tests": PY} (rendered with the model's chat template; the program is the answer's first
```python block), optional "entry_point" (the tests end with check(entry_point)), "task_id", "language".
Each step samples --group-size completions for each of --prompts-per-step tasks, scores them with the sandbox's
two-process test verdict (the one `dscoder eval` uses), and applies --mu AdamW updates of the GRPO loss.
Writes OUT/rollouts.jsonl (every completion: step, task_id, completion, reward, passed), OUT/metrics.jsonl (per
step: reward_mean/std, pass_rate, kl, clip_frac, completion_len_mean/max, truncated_frac, frac_reward_zero_std,
rollout_s, learn_s), OUT/reward.png, OUT/checkpoints/step-N/ (atomic; exact resume with --resume, which refuses
changed hyperparameters) and OUT/final/ (an HF folder).

Toy run that learns on CPU in minutes (a random tiny model; see scripts/grpo_toy.py):
    python scripts/grpo_toy.py --out runs/grpo-toy --steps 40"""
    args = _parser().parse_args(argv)
    args.epsilon_high = args.epsilon if args.epsilon_high is None else args.epsilon_high
    if args.reward.startswith("rm:"):
        from .reward_model import INFO_FILE
        if not (Path(args.reward[3:]) / INFO_FILE).is_file():
            raise UserError(f"--reward {args.reward}: not a reward model folder (train one with dscoder rm train)")
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"--model {args.model}: not a Hugging Face model folder (no config.json)")
    tasks, digest = _load_tasks(args)
    device, dtype = resolve_device_dtype(args)
    if dtype != torch.float32:
        raise UserError(f"--dtype {str(dtype).split('.')[-1]}: GRPO trains in float32")
    import dscoder
    tokenizer = dscoder.load_tokenizer(str(model_dir))
    context = int(json.loads((model_dir / "config.json").read_text())["max_position_embeddings"])
    prompt_ids, kinds = _prompt_ids(tasks, tokenizer, context, args.max_new_tokens)
    run_args = _run_args(args, digest)
    out = Path(args.out)
    created = not out.exists()
    lock = lock_run_folder(out)
    try:
        resume_from, done = _plan_start(args, out, run_args)
        if done:
            print(f"dscoder grpo: {out / 'final'} already holds step {args.steps}; nothing to do", file=sys.stderr)
            return 0
        return _train(args, run_args, tasks, prompt_ids, kinds, tokenizer, device, resume_from)
    finally:
        lock.release()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _restore(args, device, resume_from: Path | None):
    """(policy, frozen reference or None, AdamW, first step, seconds trained so far): from --model, or from the
    checkpoint being resumed (weights, optimizer moments, RNG states); the reference is always --model."""
    from ..models.hf import load_model
    from .loop import set_rng_state
    from .optim import build_optimizer

    model = load_model(str(resume_from or args.model), device=device)
    ref = None
    if args.beta > 0:
        ref = load_model(args.model, device=device).eval()
        ref.requires_grad_(False)
    optimizer = build_optimizer(model, args.lr, weight_decay=0.0)
    if resume_from is None:
        return model, ref, optimizer, 0, 0.0
    saved = ckpt.load_train_state(resume_from)
    optimizer.load_state_dict(saved["optimizer"])
    set_rng_state(saved["rng"])
    return model, ref, optimizer, int(saved["step"]), float(saved["elapsed_s"])


def _train(args, run_args, tasks, prompt_ids, kinds, tokenizer, device, resume_from) -> int:
    from .loop import GracefulStop, rng_state
    from .parallel import Dist

    out = Path(args.out)
    ck_dir = out / "checkpoints"
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        model, ref, optimizer, start, elapsed = _restore(args, device, resume_from)
        run = _Run(args, tasks, prompt_ids, kinds, tokenizer, model, ref, optimizer)
        metrics = MetricsLog(out / "metrics.jsonl", resume_step=start if resume_from else None)
        rollouts = MetricsLog(out / "rollouts.jsonl", resume_step=start if resume_from else None)
        progress = Progress(args.steps, start, every=1)

        def save(step: int) -> None:
            ckpt.save_checkpoint(ck_dir, step, model, optimizer, {"args": run_args, "rng": rng_state(),
                                 "elapsed_s": elapsed}, tokenizer, keep_last=args.keep_last)
            plot_reward(out / "metrics.jsonl", out / "reward.png")

        step, saved_step = start, start
        with GracefulStop(Dist(device=device)) as stop:
            try:
                while step < args.steps and not stop():
                    t0 = time.perf_counter()
                    row, rows = run.step(step)
                    step += 1
                    elapsed += time.perf_counter() - t0
                    for r in rows:
                        rollouts.log(r)
                    metrics.log(row)
                    reward = row["reward_mean"]
                    progress.update(step, row["loss"] if row["loss"] is not None else float("nan"),
                                    row["completion_tokens_per_s"],
                                    f" | reward {'n/a' if reward is None else round(reward, 3)}")
                    if (args.save_every and step % args.save_every == 0) or step == args.steps:
                        save(step)
                        saved_step = step
                if step != saved_step:
                    save(step)
            finally:
                metrics.close()
                rollouts.close()
        if step < args.steps:
            print(f"dscoder grpo: stopped by {stop.received} at step {step}/{args.steps}; continue with the same "
                  "command + --resume", file=sys.stderr)
            return 143
        ckpt.save_hf_folder(out / "final", model, tokenizer, meta={"step": step})
        plot_reward(out / "metrics.jsonl", out / "reward.png")
        rows = read_metrics(out / "metrics.jsonl")
        print(f"dscoder grpo: {step} steps; mean reward {rows[0]['reward_mean']} at step 1 -> "
              f"{rows[-1]['reward_mean']} at step {step}; final model in {out / 'final'}", file=sys.stderr)
        return 0
    finally:
        torch.use_deterministic_algorithms(prev_det[0], warn_only=prev_det[1])
