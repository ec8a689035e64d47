"""Training telemetry: metrics.jsonl, the one-line progress display, loss.png, FLOPs/MFU and MoE load balance.

* `MetricsLog`: one JSON object per optimizer step appended to OUT/metrics.jsonl and flushed, so a watcher (or a
  test) sees each step as soon as it ends; on resume, rows past the restored step are dropped first.
* `Progress`: step/total, loss, tok/s, ETA on stderr -- a \\r-updated line on a tty, else a line every N steps.
* `flops_per_token`: the usual 6N + attention estimate (PaLM appendix B / nanoGPT): 6 * active params (forward +
  backward, input embedding excluded) + 6 * layers * heads * (qk_dim + v_dim) * seq_len / 2 for the attention
  scores and weighted sum (causal: half the square); MFU = achieved / peak FLOP/s.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch


class MetricsLog:
    """Append-only metrics.jsonl, written by rank 0."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        self.f = open(self.path, "a", encoding="utf-8")

    def _truncate_after(self, step: int) -> None:
        """Keep only rows up to `step`: the resumed run re-logs the steps a killed run had got past."""
        rows = read_metrics(self.path) if self.path.exists() else []
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= step))
        os.replace(tmp, self.path)

    def log(self, row: dict[str, Any]) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (killed mid-write) is ignored."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """One-line progress on stderr: \\r-rewritten on a terminal, else printed every `every` steps."""

    def __init__(self, total: int, start_step: int = 0, stream: TextIO | None = None, every: int = 10):
        self.total, self.start_step, self.every = total, start_step, max(1, every)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()

    def update(self, step: int, loss: float, tok_s: float, extra: str = "") -> None:
        done = step - self.start_step
        eta = (time.perf_counter() - self.t0) / max(done, 1) * (self.total - step)
        line = f"step {step}/{self.total} | loss {loss:.4f} | {tok_s:,.0f} tok/s | ETA {format_eta(eta)}{extra}"
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
            if step == self.total:
                self.stream.write("\n")
        elif step % self.every == 0 or step == self.total or done == 1:
            self.stream.write(line + "\n")
        self.stream.flush()


def plot_loss(metrics_path: Path, png_path: Path, initial_eval: float | None = None) -> None:
    """Train (and eval, where logged; `initial_eval` at step 0) loss vs step, written atomically (Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss", lw=1)
    ev = ([{"step": 0, "eval_loss": initial_eval}] if initial_eval is not None else []) + \
        [r for r in rows if "eval_loss" in r]
    if ev:
        ax.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", label="held-out loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, png_path)


def save_figure(fig, png_path: str | Path) -> None:
    """Write a matplotlib figure as PNG under a temporary name, then rename: a reader never sees half a file."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = Path(png_path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def expert_balance(load: torch.Tensor) -> dict[str, float]:
    """Load-balance figures of a (n_moe_layers, n_experts) pick-count tensor: the max/mean ratio (1.0 = perfectly
    even; worst layer) and the fraction of experts that got no token at all."""
    load = load.double()
    mean = load.mean(dim=1).clamp_min(1e-9)                     # (L,)
    ratio = (load.max(dim=1).values / mean).max().item()
    return {"expert_max_over_mean": round(ratio, 4), "expert_dead_frac": round((load == 0).double().mean().item(), 4)}


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: 6 * active params (embedding lookup excluded) + attention QK^T and AV."""
    n = config.num_params(active=True) if hasattr(config, "n_routed_experts") else config.num_params()
    if not hasattr(config, "n_routed_experts"):
        n -= config.vocab_size * config.hidden_size       # the input embedding is a lookup, not a matmul
        head_dim = config.head_dim
        qk = v = head_dim
    else:
        qk, v = config.qk_head_dim, config.v_head_dim
    attn = 6 * config.num_hidden_layers * config.num_attention_heads * (qk + v) * seq_len / 2  # causal: half
    return 6.0 * n + attn


def mfu(tokens_per_s: float, config, seq_len: int, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over `peak_flops` (nan when the peak is unknown)."""
    return tokens_per_s * flops_per_token(config, seq_len) / peak_flops if peak_flops > 0 else math.nan
