"""The training loop shared by pretraining and fine-tuning (v1 paper §3.4: AdamW, 3-stage LR, clip 1.0).

One optimizer step = `grad_accum` micro-batches of the global batch; each rank runs its rows r::world of each
micro-batch, DDP (or FSDP2) averages the gradients, so the update equals one process running the whole global batch.
Loss = mean token cross-entropy of the shifted targets (-100 = ignored, for SFT masks) plus, for DeepSeek-V2 MoE
models, the `aux_loss` that `model(inputs, return_aux=True)` returns (the sequence-level balance loss, already
scaled by aux_loss_alpha; V2 paper §2.6).

Exact resume: everything the next step depends on is either in the checkpoint (weights, AdamW moments and step,
data position incl. the shuffle rng, python/numpy/torch/cuda RNG, tokens seen) or a pure function of the step (the LR).
With `torch.use_deterministic_algorithms` and a fixed thread count the resumed losses are bitwise those of an
uninterrupted run (tests/train/test_pretrain_cli.py kills a run with SIGKILL and checks).
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import parallel
from .metrics import MetricsLog, Progress, expert_balance, plot_loss
from .optim import lr_at, set_lr

IGNORE_INDEX = -100


@dataclass
class Batch:
    """Rows that carry their own targets (fine-tuning): `inputs` and `targets` (B, T), target -100 where nothing
    is scored (prompts, padding); for packed rows also `positions` (B, T), restarting at each sample, and a boolean
    `attn_mask` (B, 1, T, T), True where a query may attend (block-diagonal causal). `n_tokens`: the real (not
    padding) input tokens of all rows. A plain (B, T+1) tensor of windows is inputs = [:, :-1], targets = [:, 1:]."""
    inputs: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor | None = None
    attn_mask: torch.Tensor | None = None
    n_tokens: int | None = None

    def rows(self, rank: int, world: int, device: torch.device) -> "Batch":
        """This rank's rows (`parallel.shard_rows`), on `device`."""
        def part(t):
            return None if t is None else parallel.shard_rows(t, rank, world).to(device)
        return Batch(part(self.inputs), part(self.targets), part(self.positions), part(self.attn_mask))


class BatchSource(Protocol):
    def next_windows(self, n: int) -> torch.Tensor | Batch | None: ...      # (n, T+1) windows, or a Batch of n rows
    def state_dict(self) -> dict: ...
    def load_state_dict(self, st: dict) -> None: ...
    # optional: log_fields() -> dict merged into each metrics row, progress_note() -> str appended to the progress
    # line (a corpus mix reports what it has sampled)


@dataclass
class LoopConfig:
    steps: int
    batch_size: int                  # sequences per optimizer step, summed over ranks and micro-batches
    seq_len: int
    lr: float
    warmup: int
    schedule: str = "step"
    min_ratio: float = 0.1
    grad_accum: int = 1
    clip: float = 1.0
    save_every: int = 0              # 0: only the final folder
    eval_every: int = 0              # 0: evaluate once, after the last step
    log_every: int = 10
    dtype: str = "fp32"              # fp32 | bf16 (autocast; master weights stay fp32)


@dataclass
class TrainState:
    step: int = 0                    # optimizer steps completed
    tokens: int = 0                  # training tokens consumed, all ranks
    elapsed_s: float = 0.0           # wall time spent training, across resumes
    initial_eval_loss: float | None = None   # held-out loss of the untrained model (fresh runs with --eval-every)


class GracefulStop:
    """SIGTERM (what `kill` and schedulers send before preemption) asks `run` to stop after the step in progress;
    `run` then writes a checkpoint and returns. Later signals are ignored, so a second SIGTERM cannot interrupt
    the checkpoint being written. Use as a context manager in the main thread (the previous handlers come back on
    exit) and pass the object as `run(..., stop=...)`: calling it agrees across ranks (a rank that got no signal
    stops with the others)."""

    def __init__(self, dist: parallel.Dist, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.dist, self.signals = dist, signals
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            msg = f"\n{name}: finishing the current step, then writing a checkpoint\n"
        else:
            msg = f"\n{name} again: ignored while the checkpoint is written\n"
        os.write(2, msg.encode())        # not print(): the signal may arrive in the middle of a print

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __call__(self) -> bool:
        return parallel.any_rank(self.received is not None, self.dist)


# ------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Every RNG a step could touch, in types torch.load(weights_only=True) reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    st = {"python": random.getstate(), "torch": torch.get_rng_state(),
          "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                    "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    v, internal, gauss = st["python"]
    random.setstate((v, tuple(internal), gauss))
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ------------------------------------------------------------------------------------------- loss / eval
def lm_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor | None = None,
            attn_mask: torch.Tensor | None = None, reduction: str = "mean") -> tuple[torch.Tensor, Any]:
    """(mean token CE -- or the sum, with reduction="sum" --, the model's `LMOutput`: its aux_loss (MoE, training)
    and expert_load (MoE) or None). inputs, targets: (B, T); target -100 is not scored. positions / attn_mask: see
    `Batch`."""
    extra = {k: v for k, v in (("positions", positions), ("attn_mask", attn_mask)) if v is not None}
    out = model(inputs, return_aux=True, **extra)                            # logits (B, T, V)
    loss = F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction=reduction)
    return loss, out


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[torch.Tensor], dtype: str = "fp32") -> float:
    """Mean held-out loss over `batches` of packed windows (n, T+1); every window is full, so the mean of the
    per-batch means is the per-token mean when batches have equal size."""
    if not batches:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    try:
        for b in batches:
            b = b.to(device)
            with _autocast(device, dtype):
                loss, _ = lm_loss(model, b[:, :-1], b[:, 1:])
            total += loss.item()
    finally:
        model.train(was_training)
    return total / len(batches)


# ------------------------------------------------------------------------------------------- one step
def _micro_batches(data: BatchSource, cfg: LoopConfig) -> list[torch.Tensor | Batch]:
    rows = cfg.batch_size // cfg.grad_accum
    out = []
    for _ in range(cfg.grad_accum):
        b = data.next_windows(rows)
        if b is None:
            raise RuntimeError("the data stream ended")      # PackedStream cycles epochs; only a finite source ends
        out.append(b)
    return out


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, micro: list[torch.Tensor | Batch],
               cfg: LoopConfig, dist: parallel.Dist) -> dict[str, Any]:
    """Forward/backward over this rank's rows of each micro-batch, clip, AdamW update. Returns local figures, and
    for `Batch` micro-batches the global counts of real input tokens ("tokens") and scored targets ("scored").

    Windows all score the same number of targets, so the loss is the mean of the micro-batch means. `Batch` rows
    score different numbers (replies differ in length), so each rank backpropagates its CE sum x world / the scored
    targets of the whole step: after DDP's average over ranks the gradient is that of the token mean over the
    global batch, as one process would compute it, and the logged loss (the mean over ranks) is that mean."""
    # running sums stay on the device: no host sync inside the step
    loss_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
    aux_sum, has_aux, load = torch.zeros((), dtype=torch.float64, device=dist.device), False, None
    counts: dict[str, int] = {}
    if isinstance(micro[0], Batch):
        counts["tokens"] = sum(int(m.n_tokens or m.inputs.numel()) for m in micro)
        counts["scored"] = sum(int((m.targets != IGNORE_INDEX).sum()) for m in micro)
    for i, global_rows in enumerate(micro):
        if isinstance(global_rows, Batch):
            b = global_rows.rows(dist.rank, dist.world, dist.device)
        else:
            rows = parallel.shard_rows(global_rows, dist.rank, dist.world).to(dist.device)  # (b, T+1)
            b = Batch(rows[:, :-1], rows[:, 1:])
        last = i == len(micro) - 1
        with parallel.grad_sync(model, last):
            with _autocast(dist.device, cfg.dtype):
                if counts:
                    loss, out = lm_loss(model, b.inputs, b.targets, b.positions, b.attn_mask, reduction="sum")
                    loss = loss * (dist.world / max(1, counts["scored"]))
                else:
                    loss, out = lm_loss(model, b.inputs, b.targets)
            aux, picks = out.aux_loss, out.expert_load
            del out                                          # the logits: not kept alive into the next micro-batch
            if counts:
                total = loss if aux is None else loss + aux / len(micro)
            else:
                total = (loss if aux is None else loss + aux) / len(micro)
            total.backward()
        loss_sum += loss.detach().double()
        if aux is not None:
            aux_sum, has_aux = aux_sum + aux.detach().double(), True
        if picks is not None:                                # (n_moe_layers, E), summed over micro-batches
            load = picks if load is None else load + picks
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
    if hasattr(grad_norm, "full_tensor"):                  # FSDP2 returns a DTensor
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_sum.item() / (1 if counts else len(micro)), "grad_norm": float(grad_norm),
            "aux_loss": aux_sum.item() / len(micro) if has_aux else None,
            "expert_load": None if load is None else load.cpu(), **counts}


# ------------------------------------------------------------------------------------------- the loop
def run(model: nn.Module, optimizer: torch.optim.Optimizer, data: BatchSource, cfg: LoopConfig,
        dist: parallel.Dist, state: TrainState, out_dir: Path, save: Callable[[TrainState], None],
        eval_batches: list[torch.Tensor] | None = None, stop: Callable[[], bool] | None = None) -> TrainState:
    """Train from state.step to cfg.steps. Rank 0 appends OUT/metrics.jsonl, draws OUT/loss.png and shows progress
    on stderr.

    `save(state)` writes a checkpoint (called on every rank; it decides who writes): every `save_every` steps and
    after the last one, so a finished run can be extended with a larger step count. `stop()` is asked before each
    step (on every rank; the answers must agree); when true, the steps run here since the last save are saved and
    the loop returns early, with state.step < cfg.steps."""
    out_dir = Path(out_dir)
    log = MetricsLog(out_dir / "metrics.jsonl", resume_step=state.step if state.step else None) \
        if dist.is_main else None
    progress = Progress(cfg.steps, state.step, every=cfg.log_every) if dist.is_main else None
    shard_eval = [parallel.shard_rows(b, dist.rank, dist.world) for b in (eval_batches or [])]
    tokens_per_step = cfg.batch_size * cfg.seq_len
    if shard_eval and cfg.eval_every and state.step == 0:
        # the untrained model's held-out loss: the baseline every later eval_loss is read against
        initial = parallel.all_reduce_mean(evaluate(model, shard_eval, cfg.dtype), dist)
        state.initial_eval_loss = initial
        if log is not None:
            print(f"held-out loss before training: {initial:.4f}", file=sys.stderr)
    model.train()
    saved_step = state.step                          # a resumed run starts from a checkpoint of this step
    try:
        while state.step < cfg.steps:
            if stop is not None and stop():
                if state.step != saved_step:
                    save(state)
                break
            t0 = time.perf_counter()
            set_lr(optimizer, lr_at(state.step, cfg.steps, cfg.lr, cfg.warmup, cfg.schedule, cfg.min_ratio))
            lr = optimizer.param_groups[0]["lr"]
            res = train_step(model, optimizer, _micro_batches(data, cfg), cfg, dist)
            if dist.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            state.step += 1
            step_tokens = res.get("tokens", tokens_per_step)
            state.tokens += step_tokens
            state.elapsed_s += dt
            row = {"step": state.step, "loss": parallel.all_reduce_mean(res["loss"], dist), "lr": lr,
                   "grad_norm": res["grad_norm"], "tokens_per_s": round(step_tokens / dt, 1),
                   "tokens": state.tokens, "elapsed_s": round(state.elapsed_s, 3)}
            if "scored" in res:
                row["response_tokens"] = res["scored"]
            if res["aux_loss"] is not None:
                row["aux_loss"] = parallel.all_reduce_mean(res["aux_loss"], dist)
            if hasattr(data, "log_fields"):
                row.update(data.log_fields())
            if res["expert_load"] is not None:
                row.update(expert_balance(parallel.all_reduce_sum_(res["expert_load"].to(dist.device), dist).cpu()))
            final = state.step == cfg.steps
            if shard_eval and ((cfg.eval_every and state.step % cfg.eval_every == 0) or final):
                row["eval_loss"] = parallel.all_reduce_mean(evaluate(model, shard_eval, cfg.dtype), dist)
            if log is not None:
                log.log(row)
                progress.update(state.step, row["loss"], row["tokens_per_s"],
                                (f" | eval {row['eval_loss']:.4f}" if "eval_loss" in row else "")
                                + (data.progress_note() if hasattr(data, "progress_note") else ""))
            if cfg.save_every and (state.step % cfg.save_every == 0 or final):
                save(state)
                saved_step = state.step
                if dist.is_main:
                    plot_loss(out_dir / "metrics.jsonl", out_dir / "loss.png")
    finally:
        if log is not None:
            log.close()
    if dist.is_main:
        plot_loss(out_dir / "metrics.jsonl", out_dir / "loss.png")
    return state
