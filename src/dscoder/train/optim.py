"""AdamW and the learning-rate schedules of DeepSeek-Coder pretraining (v1 paper §3.4; V2 paper §3.2).

* Optimizer: AdamW, beta1 0.9, beta2 0.95, eps 1e-8 (v1 §3.4). Weight decay 0.1 (V2-Lite README; v1 does not state
  it -- not stated in the v1 paper). Decay applies to every parameter with >= 2 dimensions (all matmul weights,
  the embedding and the LM head, as nanoGPT/litgpt do) and never to 1-D parameters (RMSNorm scales, biases):
  shrinking a norm scale toward 0 only fights the next layer's weights and buys no regularisation.
* Schedules are pure functions of the step, so a resumed run recomputes the exact rate from the step number and
  needs no scheduler object in the checkpoint:
  - "step" (v1 §3.4, "three-stage"): linear warmup, then the peak; x sqrt(min_ratio) (= 0.316 for 0.1) at 80% of
    the steps and x sqrt(min_ratio) again at 90%, ending at min_ratio (10%) of the peak. The 80%/90% boundaries
    come from DeepSeek-LLM / V2-Lite practice (not stated in the v1 paper).
  - "cosine" (V2 §3.2): linear warmup, then cosine decay from the peak to min_ratio x peak at the last step.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError

BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1
SCHEDULES = ("step", "cosine")


def param_groups(model: nn.Module, weight_decay: float = WEIGHT_DECAY) -> list[dict]:
    """Two AdamW groups: >= 2-D parameters decay, 1-D ones (norms, biases) do not. Order follows named_parameters,
    so the optimizer state layout is identical between a fresh run and a resumed one."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = WEIGHT_DECAY) -> torch.optim.AdamW:
    """AdamW with the paper's betas. `foreach=False` keeps the update a plain per-tensor loop: same numbers on
    every device count, and nothing fused whose reduction order could differ after a resume."""
    if lr <= 0:
        raise UserError(f"--lr must be positive, got {lr}")
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=BETAS, eps=EPS, foreach=False)


def lr_at(step: int, total: int, peak: float, warmup: int, kind: str = "step", min_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step `step` (0-based, 0 <= step < total).

    Warmup is linear over the first `warmup` steps: peak * (step + 1) / warmup, so step 0 already moves the
    weights. After warmup, "step" holds the peak until 80% of `total`, then peak * sqrt(min_ratio) until 90%,
    then peak * min_ratio; "cosine" goes from the peak (at step == warmup) to peak * min_ratio (at the last step).
    """
    if kind not in SCHEDULES:
        raise UserError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if total <= 0 or not 0 <= step < total:
        raise ValueError(f"step {step} outside [0, {total})")
    if warmup < 0 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"bad schedule: warmup {warmup}, min_ratio {min_ratio}")
    if step < warmup:
        return peak * (step + 1) / warmup
    if kind == "step":
        if step < int(0.8 * total):
            return peak
        if step < int(0.9 * total):
            return peak * math.sqrt(min_ratio)
        return peak * min_ratio
    span = total - 1 - warmup
    progress = 1.0 if span <= 0 else (step - warmup) / span
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
