"""`dscoder grpo`: Group Relative Policy Optimization against unit tests run in the sandbox (DeepSeekMath
arXiv 2402.03300 §4.1 eq. 3-4; DeepSeek-Coder-V2 §3.5 uses it for code with test-case rewards).

Each step: P tasks (`train.rewards`), G completions each sampled by the inference `Engine` (batched, a seed per
batch of --rollout-batch tasks), each scored by the sandbox's two-process test verdict; advantages normalised
within each group; then μ AdamW updates of the clipped surrogate with a k3 KL penalty to the frozen starting model
(`grpo_loss`).

    loss, metrics = grpo_loss(logps, old_logps, ref_logps, advantages, mask, beta=0.04, epsilon_low=0.2,
                              epsilon_high=0.2, loss_type="grpo")      # (B, T) tensors, advantages (B,)

The formulas are TRL's `GRPOTrainer._compute_loss` (trl/trainer/grpo_trainer.py) and its advantage computation
(`scale_rewards`): per token -min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A) + β(exp(ref-logp) - (ref-logp) - 1), with
ρ = exp(logp - old_logp); aggregated per `loss_type`: "grpo" (mean over each completion's tokens, then over
completions: the paper's 1/G Σ 1/|o_i| Σ_t), "dapo" (sum over all tokens / their number) or "dr_grpo" (sum /
(B x max_completion_length), Dr. GRPO arXiv 2503.20783). With μ = 1, old_logps is logps.detach(): the ratio is
exactly 1, so the loss is near 0 while its gradient is A·∇log π. Watch the reward, not the loss.

Several processes (torchrun): the step's tasks are dealt out to the processes, each samples and scores its
groups, and every process gathers all rewards, so group statistics are those of one process. The update runs
over the step's completions dealt out again evenly, in micro-batches, through the pretraining loop's DDP/FSDP2
wrapping (`parallel.parallelize`, `parallel.grad_sync`); each micro-batch's loss is weighted by its share of the
loss's normaliser (`policy_backward`), so any split gives the gradient of one `grpo_loss` over the whole batch.
DAPO's dynamic sampling (arXiv 2503.14476 §3.2, `--dynamic-sampling`) draws more groups until P of them have
rewards that differ. Run folder, checkpoints, exact resume and SIGTERM handling are pretraining's (`pretrain`).
Usage is in `main`'s docstring (= `dscoder grpo --help`).
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..args import (Parser, add_device_args, finite_float, int_range, non_negative_float, out_dir, positive_float,
                    positive_int, resolve_device_dtype)
from ..args import seed as seed_int
from ..errors import UserError
from . import checkpoint as ckpt
from . import parallel
from .loop import GracefulStop, TrainState, set_rng_state
from .metrics import MetricsLog, Progress, read_metrics, save_figure
from .pretrain import RunFolder, gathered_model, plan_start, save_run_checkpoint, seed_all, stopped_status
from .rewards import task_at, task_prompts

PROG = "dscoder grpo"
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


# ------------------------------------------------------------------------------------------- the update
@dataclass(frozen=True)
class PolicyLoss:
    """One run's `grpo_loss` settings, and the temperature its completions were sampled at."""
    beta: float
    epsilon_low: float
    epsilon_high: float
    loss_type: str
    max_completion_length: int
    temperature: float = 1.0

    def units(self, completion: Sequence[int]) -> int:
        """A completion's weight in the loss's normaliser: its tokens for "dapo" (a token mean over the batch),
        1 for "grpo" (a mean over completions) and "dr_grpo" (a sum / (completions x max length))."""
        return len(completion) if self.loss_type == "dapo" else 1


@dataclass
class MicroBatch:
    """Completions that go through one forward/backward on one process."""
    prompts: list[list[int]]
    completions: list[list[int]]
    advantages: torch.Tensor                   # (b,)
    units: int                                 # their share of the loss's normaliser; 0: a padding pass
    old: torch.Tensor | None = None            # (b, T) log-probs before this batch's first update (μ > 1)
    ref: torch.Tensor | None = None            # (b, T) the reference model's log-probs (β > 0)


def micro_batches(rows: Sequence[int], prompts: Sequence[list[int]], completions: Sequence[list[int]],
                  advantages: torch.Tensor, loss: PolicyLoss, micro_batch_size: int | None, rank: int = 0,
                  world: int = 1) -> list[MicroBatch]:
    """This process's micro-batches of the completions `rows` (indices into prompts/completions/advantages):
    rows rank, rank + world, ... in chunks of `micro_batch_size` (None: one chunk). Every process gets the same
    number of micro-batches, because each one's backward is a collective under DDP/FSDP: a process with fewer
    rows runs padding passes (one row, weight 0)."""
    mine = list(rows[rank::world])
    per_rank = -(-len(rows) // world)
    size = micro_batch_size or max(1, per_rank)
    out = []
    for i in range(max(1, -(-per_rank // size))):
        chunk = mine[i * size:(i + 1) * size]
        units = sum(loss.units(completions[b]) for b in chunk)
        chunk = chunk or list(rows[:1])
        out.append(MicroBatch([prompts[b] for b in chunk], [completions[b] for b in chunk], advantages[chunk],
                              units))
    return out


def policy_backward(model: torch.nn.Module, micro: list[MicroBatch], loss: PolicyLoss, total_units: int,
                    world: int = 1) -> dict[str, float]:
    """Forward and backward of every micro-batch; gradients are reduced across processes on the last one only
    (`parallel.grad_sync`). Each micro-batch's loss is weighted by units / total_units x world, so after DDP's
    (or FSDP's) mean over processes the gradient is that of `grpo_loss` over all the rows at once, whatever the
    micro-batch size and the number of processes. Returns this process's sums: its part of the loss ("loss"),
    k3 KL and clipped tokens summed over completion tokens ("kl", "clip"), and those tokens ("tokens")."""
    device = next(model.parameters()).device
    sums = {"loss": 0.0, "kl": 0.0, "clip": 0.0, "tokens": 0.0}
    for i, m in enumerate(micro):
        with parallel.grad_sync(model, i == len(micro) - 1):
            logps, mask = completion_logps(model, m.prompts, m.completions, loss.temperature)
            value, figures = grpo_loss(logps, logps.detach() if m.old is None else m.old, m.ref,
                                       m.advantages.to(device), mask, beta=loss.beta, epsilon_low=loss.epsilon_low,
                                       epsilon_high=loss.epsilon_high, loss_type=loss.loss_type,
                                       max_completion_length=loss.max_completion_length)
            part = value * (m.units / max(total_units, 1))
            (part * world).backward()
        if m.units:
            n = float(mask.sum())
            sums["loss"] += float(part.detach())
            sums["kl"] += (figures["kl"] or 0.0) * n
            sums["clip"] += figures["clip_frac"] * n
            sums["tokens"] += n
    return sums


# ------------------------------------------------------------------------------------------- rollouts
def group_seed(seed: int, slot: int) -> int:
    """The sampling seed of the Engine batch whose first group has slot `slot`: a hash of the run seed and the slot
    (0 ... 2**63-1). Seeds follow the batches, not the processes, so how batches are spread over processes does
    not change what they sample."""
    return int.from_bytes(hashlib.sha256(f"grpo-{seed}-{slot}".encode()).digest()[:8], "big") >> 1


def rollout(engine, tokenizer, prompt_ids: list[list[int]], kinds: list[str], max_new_tokens: int,
            temperature: float, seed: int) -> tuple[list[list[int]], list[str], list[str]]:
    """Sample one completion per row in a batched, seeded `Engine.generate`: (ids incl. the end token when one was
    produced, texts, finish reasons). Rows of the two kinds (completion, chat) are generated apart: each kind has
    its own end token (EOS for a completion, the chat template's, <|EOT|> for v1, for a chat prompt)."""
    from ..infer.text import decoder, stop_ids

    ids: list[list[int]] = [[] for _ in prompt_ids]
    texts, reasons = [""] * len(prompt_ids), [""] * len(prompt_ids)
    dec = decoder(tokenizer)
    for kind in ("completion", "chat"):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        if not rows:
            continue
        end = stop_ids(tokenizer, kind)[0]
        outs = engine.generate([prompt_ids[i] for i in rows], max_new_tokens=max_new_tokens,
                               temperature=temperature, stop_ids=[end], seed=seed + (kind == "chat"))
        for i, o in zip(rows, outs):
            ids[i] = o.tokens + ([end] if o.finish_reason == "stop" else [])
            texts[i], reasons[i] = dec(o.tokens), o.finish_reason
    return ids, texts, reasons


# ------------------------------------------------------------------------------------------- the run
class _Run:
    """One process's share of a GRPO run: the policy (as `parallel.parallelize` wrapped it), its optimizer, the
    frozen reference, the engine that samples, the tasks and their prompt ids, and the task cursor (the next
    group slot: the run's data position, saved in checkpoints)."""

    def __init__(self, args, tasks, prompt_ids, kinds, tokenizer, model, ref, optimizer, cfg, dist):
        from ..infer.engine import Engine
        self.args, self.tasks, self.prompt_ids, self.kinds = args, tasks, prompt_ids, kinds
        self.tokenizer, self.model, self.ref, self.optimizer, self.dist = tokenizer, model, ref, optimizer, dist
        self.loss = PolicyLoss(args.beta, args.epsilon, args.epsilon_high, args.loss_type, args.max_new_tokens,
                               args.temperature)
        self.cursor = 0
        if dist.fsdp:       # FSDP2 shards the policy: each process samples from a full copy, refreshed every step
            from ..models.hf import build_model
            self.sampler = build_model(cfg).to(dist.device)
        else:
            self.sampler = parallel.unwrap(model)
        self.engine = Engine(self.sampler)
        self.cache: dict = {}
        self.rm = None
        if args.reward.startswith("rm:"):
            from .reward_model import load_reward_model
            self.rm = load_reward_model(args.reward[3:], device=dist.device)

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, st: dict) -> None:
        self.cursor = int(st["cursor"])

    def step(self, step: int) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
        """One GRPO step (0-based `step`): rollouts, rewards, μ updates. Returns (metrics row, rollout rows,
        completion tokens sampled). Every process gets the same answer."""
        a, G, P = self.args, self.args.group_size, self.args.prompts_per_step
        t0 = time.perf_counter()
        if self.dist.fsdp:
            full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in self.model.state_dict().items()}
            self.sampler.load_state_dict(full)
        groups: list[dict[str, Any]] = []
        while True:     # one round of P groups; with --dynamic-sampling, more rounds until P groups teach something
            slots = list(range(self.cursor, self.cursor + P))
            self.cursor += P
            batches = [slots[i:i + a.rollout_batch] for i in range(0, P, a.rollout_batch)]
            mine = self._sample(batches[self.dist.rank::self.dist.world])
            groups += sorted((g for part in parallel.all_gather_objects(mine, self.dist) for g in part),
                             key=lambda g: g["slot"])
            rewards = torch.tensor([r for g in groups for r in g["rewards"]], dtype=torch.float32)
            adv, zero_std = group_advantages(rewards, G, a.scale_rewards)
            if len(groups) >= P * max(1, a.dynamic_sampling) or int((~zero_std).sum()) >= P:
                break
        t1 = time.perf_counter()
        skip = a.skip_zero_std or a.dynamic_sampling > 0
        kept = [j for j in range(len(groups)) if not (skip and zero_std[j])][:P]
        rows = [j * G + i for j in kept for i in range(G)]
        prompts = [self.prompt_ids[g["task"]] for g in groups for _ in range(G)]
        comps = [c for g in groups for c in g["completions"]]
        figures = self._learn(rows, prompts, comps, adv) if rows else dict.fromkeys(("loss", "kl", "clip_frac",
                                                                                     "grad_norm"))
        t2 = time.perf_counter()
        scored = [s for g in groups for s in g["scored"]]
        reasons = [r for g in groups for r in g["reasons"]]
        n_tok = [len(c) for c in comps]
        row = {"step": step + 1, "reward_mean": _nanmean(rewards), "reward_std": _nanstd_value(rewards),
               "pass_rate": sum(r == 1.0 for r, _ in scored) / len(scored),
               "infra_errors": sum(s == "infra_error" for _, s in scored), **figures,
               "completion_len_mean": sum(n_tok) / len(n_tok), "completion_len_max": max(n_tok),
               "truncated_frac": sum(r == "length" for r in reasons) / len(reasons),
               "frac_reward_zero_std": float(zero_std.float().mean()), "groups_sampled": len(groups),
               "groups_skipped": len(groups) - len(kept), "rollout_s": round(t1 - t0, 3),
               "learn_s": round(t2 - t1, 3), "completion_tokens_per_s": round(sum(n_tok) / max(t1 - t0, 1e-9), 1)}
        logged = []
        for j, g in enumerate(groups):
            t = self.tasks[g["task"]]
            for i in range(G):
                r, status = g["scored"][i]
                rw = rewards[j * G + i].item()
                logged.append({"step": step + 1, "task_id": t.task_id, "prompt": t.prompt if t.prompt is not None
                               else t.instruction, "kind": self.kinds[g["task"]], "completion": g["texts"][i],
                               "reward": None if math.isnan(rw) else rw, "passed": r == 1.0, "status": status,
                               "finish_reason": g["reasons"][i]})
        return row, logged, sum(n_tok)

    def _sample(self, batches: list[list[int]]) -> list[dict[str, Any]]:
        """This process's groups (G completions of each slot's task, one Engine batch per list of slots), with
        their test verdicts and rewards."""
        a, G = self.args, self.args.group_size
        self.sampler.eval()
        groups = []
        for slots in batches:
            tasks = [task_at(k, len(self.tasks), a.seed) for k in slots]
            ids, texts, reasons = rollout(self.engine, self.tokenizer, [self.prompt_ids[t] for t in tasks for _ in
                                                                         range(G)],
                                          [self.kinds[t] for t in tasks for _ in range(G)], a.max_new_tokens,
                                          a.temperature, group_seed(a.seed, slots[0]))
            groups += [{"slot": k, "task": t, "completions": ids[j * G:(j + 1) * G], "texts": texts[j * G:(j + 1) * G],
                        "reasons": reasons[j * G:(j + 1) * G]} for j, (k, t) in enumerate(zip(slots, tasks))]
        if groups:
            rows = [(g, i) for g in groups for i in range(G)]
            scored, rewards = self._rewards([self.tasks[g["task"]] for g, _ in rows],
                                            [self.prompt_ids[g["task"]] for g, _ in rows],
                                            [g["completions"][i] for g, i in rows], [g["texts"][i] for g, i in rows],
                                            [g["reasons"][i] for g, i in rows])
            for j, g in enumerate(groups):
                g["scored"], g["rewards"] = scored[j * G:(j + 1) * G], rewards[j * G:(j + 1) * G]
        return groups

    def _rewards(self, tasks, prompts, comp, texts, reasons) -> tuple[list[tuple[float, str]], list[float]]:
        """(test verdicts, rewards): the verdicts' 0/1, or with --reward rm:DIR the reward model's scores (the
        tests still run: pass_rate and `passed` say what the reward-model-driven policy really does)."""
        from .rewards import score_all

        scored = score_all(tasks, texts, self.args.timeout, self.args.workers, self.cache)
        if self.rm is None:
            return scored, [r for r, _ in scored]
        from .reward_model import rm_rewards
        ends = [c[:-1] if r == "stop" else c for c, r in zip(comp, reasons)]     # as rollout_ids encodes the text
        return scored, rm_rewards(self.rm, [p + e for p, e in zip(prompts, ends)])

    def _learn(self, rows: list[int], prompts, comps, adv: torch.Tensor) -> dict[str, Any]:
        """μ AdamW updates of the GRPO loss over the completions `rows`, spread over the processes and their
        micro-batches (`micro_batches`, `policy_backward`)."""
        a, dist = self.args, self.dist
        micro = micro_batches(rows, prompts, comps, adv, self.loss, a.micro_batch_size, dist.rank, dist.world)
        total = sum(self.loss.units(comps[b]) for b in rows)
        self.model.train()
        with torch.no_grad():
            for m in micro:
                if a.mu > 1:
                    m.old = completion_logps(parallel.unwrap(self.model), m.prompts, m.completions, a.temperature)[0]
                if self.ref is not None:
                    m.ref = completion_logps(self.ref, m.prompts, m.completions, a.temperature)[0]
        per_update = []
        for _ in range(a.mu):
            sums = policy_backward(self.model, micro, self.loss, total, dist.world)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.clip)
            if hasattr(norm, "full_tensor"):                   # FSDP2 returns a DTensor
                norm = norm.full_tensor()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            t = torch.tensor([sums["loss"], sums["kl"], sums["clip"], sums["tokens"]], dtype=torch.float64,
                             device=dist.device)
            loss, kl, clip, tokens = parallel.all_reduce_sum_(t, dist).tolist()
            per_update.append((loss, kl / max(tokens, 1.0), clip / max(tokens, 1.0), float(norm)))
        n = len(per_update)
        return {"loss": sum(u[0] for u in per_update) / n,
                "kl": sum(u[1] for u in per_update) / n if a.beta > 0 else None,
                "clip_frac": sum(u[2] for u in per_update) / n, "grad_norm": per_update[-1][3]}


def _nanmean(x: torch.Tensor) -> float | None:
    v = float(torch.nanmean(x))
    return None if math.isnan(v) else v


def _nanstd_value(x: torch.Tensor) -> float | None:
    v = float(_nanstd(x)) if x.numel() > 1 else math.nan
    return None if math.isnan(v) else v


# ------------------------------------------------------------------------------------------- CLI
# settings a resumed run must share with its checkpoint: they decide what each step samples and how it learns
_RESUME_FIXED = ("model", "tasks", "tasks_sha256", "group_size", "prompts_per_step", "beta", "epsilon",
                 "epsilon_high", "mu", "loss_type", "scale_rewards", "temperature", "max_new_tokens", "reward",
                 "lr", "clip", "skip_zero_std", "dynamic_sampling", "rollout_batch", "fsdp", "seed")


def _run_args(args, tasks_digest: str) -> dict[str, Any]:
    return {"model": str(Path(args.model).resolve()), "tasks": str(Path(args.tasks).resolve()) if args.tasks
            else "mbpp-train", "tasks_sha256": tasks_digest, "group_size": args.group_size,
            "prompts_per_step": args.prompts_per_step, "beta": args.beta, "epsilon": args.epsilon,
            "epsilon_high": args.epsilon_high, "mu": args.mu, "loss_type": args.loss_type,
            "scale_rewards": args.scale_rewards, "temperature": args.temperature,
            "max_new_tokens": args.max_new_tokens, "reward": args.reward, "lr": args.lr, "clip": args.clip,
            "skip_zero_std": bool(args.skip_zero_std), "dynamic_sampling": args.dynamic_sampling,
            "rollout_batch": args.rollout_batch,
            "fsdp": bool(args.fsdp), "micro_batch_size": args.micro_batch_size, "seed": args.seed,
            "steps": args.steps}


def plot_reward(metrics_path: Path, png_path: Path) -> None:
    """Mean reward (and its moving mean) per step, written atomically (Agg backend)."""
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


def _reward_spec(text: str) -> str:
    import argparse
    if text == "tests" or (text.startswith("rm:") and len(text) > 3):
        return text
    raise argparse.ArgumentTypeError(f"expected tests or rm:DIR, got {text!r}")


_reward_spec.metavar = "tests|rm:DIR"  # type: ignore[attr-defined]


def _parser() -> Parser:
    p = Parser(PROG, main.__doc__)
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
    a("--dynamic-sampling", type=int_range(0), default=0, metavar="ROUNDS",
      help="DAPO's dynamic sampling: leave out groups whose rewards are all equal and sample more rounds of P "
           "tasks, up to ROUNDS rounds in all, until P groups are left (0: off)")
    a("--rollout-batch", type=positive_int, default=1, metavar="K",
      help="tasks sampled together in one Engine batch (K x G completions); the batches of a step are dealt out to "
           "the processes, each with its own seed, so a run samples the same on any number of processes")
    a("--micro-batch-size", type=positive_int, default=None, metavar="N",
      help="completions per forward/backward on each process; gradients are accumulated, the update is the "
           "same (default: all of them at once)")
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
    a("--workers", type=positive_int, default=2, help="sandboxed test runs at a time, on each process")
    a("--fsdp", action="store_true", help="FSDP2 fully_shard instead of DDP under torchrun")
    add_device_args(p)
    return p


def _load_tasks(args):
    from .rewards import load_tasks, mbpp_train_tasks
    if args.tasks is None:
        return mbpp_train_tasks(), "mbpp-train"
    data = Path(args.tasks).read_bytes() if Path(args.tasks).is_file() else b""
    return load_tasks(args.tasks), hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Reinforcement learning against unit tests (GRPO, DeepSeekMath §4.1; DeepSeek-Coder-V2 §3.5).

    dscoder grpo --model DIR [--tasks FILE] --out DIR --steps N [--group-size G] [--prompts-per-step P]
                 [--beta F] [--epsilon F] [--epsilon-high F] [--mu N] [--loss-type grpo|dapo|dr_grpo]
                 [--scale-rewards group|batch|none] [--skip-zero-std | --dynamic-sampling ROUNDS]
                 [--rollout-batch K] [--micro-batch-size N] [--temperature T] [--max-new-tokens N]
                 [--reward tests|rm:DIR] [--lr F] [--save-every N] [--resume] [--seed N] [--fsdp]
Several processes (DDP; --fsdp for FSDP2):
    python -m torch.distributed.run --nproc-per-node 2 -m dscoder.cli grpo ...

Tasks JSONL, one per line: {"prompt": CODE, "tests": PY} (the program is prompt + completion) or
{"instruction": TEXT, "tests": PY} (rendered with the model's chat template; the program is the answer's first
```python block), optional "entry_point" (the tests end with check(entry_point)), "task_id", "language".
Each step samples --group-size completions for each of --prompts-per-step tasks (one seeded Engine batch per
--rollout-batch tasks; the batches of a step are dealt out to the processes: on N processes, --rollout-batch
P/N keeps them all busy), scores them with the sandbox's two-process test verdict (the one `dscoder eval` uses),
normalises the rewards within each group, and applies --mu AdamW updates of the GRPO loss over all the step's
completions (in --micro-batch-size chunks on each process; the gradient is the same).
Writes OUT/rollouts.jsonl (every completion: step, task_id, completion, reward, passed), OUT/metrics.jsonl
(per step: reward_mean/std, pass_rate, kl, clip_frac, completion_len_mean/max, truncated_frac,
frac_reward_zero_std, groups_sampled/skipped, rollout_s, learn_s), OUT/reward.png, OUT/checkpoints/step-N/
(atomic; exact resume with --resume, which refuses changed hyperparameters) and OUT/final/ (an HF folder).
SIGTERM: checkpoint, exit 143 (continue with --resume).

Toy run that learns on CPU in minutes (a random tiny model; see scripts/grpo_toy.py):
    python scripts/grpo_toy.py --out runs/grpo-toy --steps 20"""
    args = _parser().parse_args(argv)
    args.epsilon_high = args.epsilon if args.epsilon_high is None else args.epsilon_high
    if args.skip_zero_std and args.dynamic_sampling:
        raise UserError("--skip-zero-std and --dynamic-sampling: give one (dynamic sampling skips those groups too)")
    if args.reward.startswith("rm:"):
        from .reward_model import INFO_FILE
        if not (Path(args.reward[3:]) / INFO_FILE).is_file():
            raise UserError(f"--reward {args.reward}: not a reward model folder (train one with dscoder rm train)")
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"--model {args.model}: not a Hugging Face model folder (no config.json)")
    if args.dtype not in ("auto", "float32"):
        raise UserError(f"--dtype {args.dtype}: GRPO trains in float32")
    tasks, digest = _load_tasks(args)
    device = resolve_device_dtype(args)[0]
    import dscoder
    from ..models.config import config_from_hf
    tokenizer = dscoder.load_tokenizer(str(model_dir))
    cfg = config_from_hf(json.loads((model_dir / "config.json").read_text()))
    prompt_ids, kinds = task_prompts(tasks, tokenizer, cfg.max_position_embeddings, args.max_new_tokens)
    run_args = _run_args(args, digest)
    with parallel.training_process(None, device.type) as dist:
        with GracefulStop(dist) as stop, RunFolder(Path(args.out), dist) as folder:
            start = folder.decide(lambda: plan_start(args, cfg, folder.path, run_args, _RESUME_FIXED, PROG))
            if start.done:
                return 0
            return _train(args, cfg, run_args, tasks, prompt_ids, kinds, tokenizer, dist, start.resume_from, stop)


def _setup(args, cfg, dist, saved: dict | None, resume_from: Path | None):
    """(policy wrapped by `parallel.parallelize`, frozen reference or None, AdamW): from --model, or from the
    checkpoint being resumed (weights, optimizer moments); the reference is always --model."""
    from ..models.hf import load_model
    from .optim import build_optimizer

    seed_all(args.seed)
    model = load_model(str(resume_from or args.model), device=dist.device)
    ref = None
    if args.beta > 0:
        ref = load_model(args.model, device=dist.device).eval()
        ref.requires_grad_(False)
    model = parallel.parallelize(model, dist, fsdp=args.fsdp)
    optimizer = build_optimizer(model, args.lr, weight_decay=0.0)
    if saved is not None:
        parallel.load_optimizer_state(model, optimizer, saved["optimizer"], dist)
    return model, ref, optimizer


def _train(args, cfg, run_args, tasks, prompt_ids, kinds, tokenizer, dist, resume_from, stop) -> int:
    out = Path(args.out)
    ck_dir = out / "checkpoints"
    saved = ckpt.load_train_state(resume_from) if resume_from else None
    model, ref, optimizer = _setup(args, cfg, dist, saved, resume_from)
    run = _Run(args, tasks, prompt_ids, kinds, tokenizer, model, ref, optimizer, cfg, dist)
    state = TrainState()
    if saved is not None:
        run.load_state_dict(saved["data"])
        set_rng_state(saved["rng"][min(dist.rank, len(saved["rng"]) - 1)])
        state = TrainState(step=int(saved["step"]), tokens=int(saved["tokens"]), elapsed_s=float(saved["elapsed_s"]))
    main_rank = dist.is_main
    logs = [MetricsLog(out / name, resume_step=state.step if saved else None)
            for name in ("metrics.jsonl", "rollouts.jsonl")] if main_rank else []
    progress = Progress(args.steps, state.step, every=1) if main_rank else None

    def save(st: TrainState) -> None:
        save_run_checkpoint(out, ck_dir, st, model, optimizer, run, tokenizer, cfg, run_args, dist, args.keep_last)

    saved_step = state.step
    try:
        while state.step < args.steps and not stop():
            t0 = time.perf_counter()
            row, rollouts, n_tokens = run.step(state.step)
            state.step += 1
            state.tokens += n_tokens
            state.elapsed_s += time.perf_counter() - t0
            if main_rank:
                for r in rollouts:
                    logs[1].log(r)
                logs[0].log(row)
                reward = row["reward_mean"]
                progress.update(state.step, row["loss"] if row["loss"] is not None else float("nan"),
                                row["completion_tokens_per_s"],
                                f" | reward {'n/a' if reward is None else round(reward, 3)}")
            if (args.save_every and state.step % args.save_every == 0) or state.step == args.steps:
                save(state)
                saved_step = state.step
        if state.step != saved_step:
            save(state)
    finally:
        for log in logs:
            log.close()
    if main_rank:                  # the curve is drawn once, when the run ends or stops (metrics.jsonl is live)
        plot_reward(out / "metrics.jsonl", out / "reward.png")
    if state.step < args.steps:
        return stopped_status(stop.received, state.step, args.steps, ck_dir, dist, PROG)
    final = gathered_model(model, cfg, dist)
    if main_rank:
        ckpt.save_hf_folder(out / "final", final, tokenizer, meta={"step": state.step})
        rows = read_metrics(out / "metrics.jsonl")
        print(f"{PROG}: {state.step} steps; mean reward {rows[0]['reward_mean']} at step 1 -> "
              f"{rows[-1]['reward_mean']} at step {state.step}; final model in {out / 'final'}", file=sys.stderr)
    parallel.barrier(dist)
    return 0
