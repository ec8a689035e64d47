"""`dscoder pretrain`: next-token + FIM pretraining of a v1 (Llama) or V2 (MLA + MoE) model (v1 paper §3).

Wires the pieces: tokenizer -> model config (preset or --init-from, vocab/bos/eos from the tokenizer, RoPE flags
for long-context extension, v1 §3.6) -> `packing.PackedStream` (FIM at the document level, §3.1.2; several named
corpora interleaved by weight through `packing.MixedStream`, Coder-V2 §2) -> `loop.run`
(AdamW + 3-stage or cosine LR, §3.4) -> `checkpoint` (atomic, verifiable, exact resume) and OUT/final/.
Order of work: every input is checked; rank 0 creates and locks OUT (`RunFolder`) and decides where the run
starts (`plan_start`: fresh, resume, nothing to do, or a refusal that touches nothing); then the model is built,
wrapped (`parallel.parallelize`) and trained under `loop.GracefulStop` (SIGTERM -> checkpoint, exit 143).
Usage is in `main`'s docstring (= `dscoder pretrain --help`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..args import (Parser, add_device_args, finite_float, int_range, non_negative_int, out_dir, positive_float,
                    positive_int, probability, resolve_device_dtype, typed_overrides)
from ..args import seed as seed_int
from ..durable import lock_run_folder
from ..errors import UserError
from . import checkpoint as ckpt
from . import parallel
from .loop import GracefulStop, LoopConfig, TrainState, rng_state, run, set_rng_state
from .optim import SCHEDULES, build_optimizer
from .packing import DocEncoder, MixedStream, PackedStream, check_corpus, source_seed, take_batches

# settings a resumed run must share with the checkpoint: they decide what the data stream and model are
_RESUME_FIXED = ("seq_len", "batch_size", "grad_accum", "fim_rate", "heldout_every", "shuffle_docs",
                 "shuffle_windows", "data", "mix", "fsdp")

_NAME = r"[A-Za-z][A-Za-z0-9_-]*"                              # a data source's name
_SOURCE = re.compile(rf"({_NAME})=(.+)", re.S)                 # NAME=PATH names a data source


def _mix(text: str) -> dict[str, float]:
    """argparse type for `--mix NAME=W,NAME=W`: weights finite and > 0, on any scale (60,10,30 = 0.6,0.1,0.3)."""
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, w = (x.strip() for x in item.partition("="))
        if not sep or not re.fullmatch(_NAME, name):
            raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT,NAME=WEIGHT,..., got {item.strip()!r}")
        if name in out:
            raise argparse.ArgumentTypeError(f"{name} is weighted twice")
        try:
            out[name] = positive_float(w)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{name}: weight {e}") from None
    return out


_mix.metavar = "NAME=W,..."  # type: ignore[attr-defined]


def _data_sources(inputs: list[str], mix: dict[str, float] | None) -> tuple[dict[str, list[str]] | None,
                                                                            dict[str, float] | None]:
    """(name -> paths, name -> weight normalized to sum 1), or (None, None) when no input is named (one corpus,
    every path read in turn: the stream of a run without mixing)."""
    named = [_SOURCE.fullmatch(x) for x in inputs]
    if not any(named):
        if mix:
            raise UserError("--mix weighs named inputs: give each corpus as NAME=PATH (e.g. code=runs/code)")
        return None, None
    if not all(named):
        bare = next(x for x, m in zip(inputs, named) if not m)
        raise UserError(f"data input {bare}: name every input as NAME=PATH or none (write ./{bare} for a path "
                        "that contains '=')")
    sources: dict[str, list[str]] = {}
    for m in named:
        sources.setdefault(m[1], []).append(m[2])
    sources = dict(sorted(sources.items()))
    if mix is None and len(sources) > 1:
        raise UserError(f"{len(sources)} data sources ({', '.join(sources)}): give their weights with --mix "
                        + ",".join(f"{n}=W" for n in sources))
    mix = mix or {n: 1.0 for n in sources}
    unknown = [n for n in mix if n not in sources]
    if unknown:
        raise UserError(f"--mix: unknown source {unknown[0]!r} (the inputs name {', '.join(sources)})")
    missing = [n for n in sources if n not in mix]
    if missing:
        raise UserError(f"--mix: no weight for source {missing[0]!r} (give one for each of {', '.join(sources)})")
    total = sum(mix.values())
    if not math.isfinite(total):
        raise UserError("--mix: the weights add up to more than a float holds; use smaller numbers")
    return sources, {n: round(mix[n] / total, 12) for n in sources}


def _parser() -> argparse.ArgumentParser:
    p = Parser("dscoder pretrain", main.__doc__)
    a = p.add_argument
    a("--preset", required=True, help="model preset (models/presets.py), e.g. tiny, tiny-moe, deepseek-coder-1.3b")
    a("--tokenizer", required=True, metavar="DIR", help="tokenizer folder (dscoder tokenizer train)")
    p.add_inputs("data", "DATA", "folders of source files, .jsonl[.gz] or .parquet with 'text'; NAME=PATH names "
                 "a corpus to mix by --mix (a name may take several paths)", alias="--data")
    a("--mix", type=_mix, default=None,
      help="weights of the named corpora, e.g. code=0.6,web=0.1,math=0.3 (any scale; each window is drawn from one)")
    a("--out", required=True, type=out_dir, metavar="DIR", help="run folder")
    a("--steps", type=positive_int, required=True, metavar="N", help="optimizer steps in total")
    a("--seq-len", type=positive_int, required=True, metavar="N", help="tokens per training sequence")
    a("--batch-size", type=positive_int, required=True, metavar="N",
      help="global batch, sequences per optimizer step")
    a("--save-every", type=non_negative_int, default=1000, metavar="N", help="checkpoint every N steps (0: never)")
    a("--keep-last", type=positive_int, default=3, metavar="N", help="complete checkpoints to keep")
    a("--resume", action="store_true", help="continue from the newest complete checkpoint under OUT/checkpoints")
    a("--fim-rate", type=probability, default=0.5, help="fraction of documents turned into PSM FIM (v1 §3.1.2)")
    a("--seed", type=seed_int, default=0, help="seeds weights, FIM and data order (0 ... 2**64-1)")
    a("--lr", type=positive_float, default=5.3e-4,
      help="peak LR (v1 Table 2: 1.3B 5.3e-4, 6.7B 4.2e-4, 33B 3.5e-4)")
    a("--warmup", type=non_negative_int, default=None, metavar="N",
      help="warmup steps (paper 2000; default min(2000, steps/10))")
    a("--schedule", choices=SCHEDULES, default="step", help="step: v1 3-stage; cosine: V2")
    a("--grad-accum", type=positive_int, default=1, metavar="N", help="micro-batches per optimizer step")
    a("--eval-every", type=non_negative_int, default=0, metavar="N",
      help="held-out loss every N steps (0: only after the last)")
    a("--eval-batches", type=positive_int, default=8, metavar="N", help="batches in each held-out evaluation")
    a("--shuffle-docs", type=non_negative_int, default=4096, metavar="N",
      help="shuffle buffer in documents (0: file order); a corpus this small or smaller is fully shuffled")
    a("--shuffle-windows", type=non_negative_int, default=256, metavar="N",
      help="draw each batch's rows from a pool of this many packed windows (0: consecutive windows)")
    a("--heldout-every", type=int_range(2), default=100, metavar="N",
      help="hold out 1 document in N (by text hash) for eval")
    a("--rope-scaling-factor", type=finite_float(1.0), default=None,
      help="v1: linear factor (4 for 16K); V2: YaRN factor")
    a("--rope-theta", type=positive_float, default=None, help="RoPE base (default: the preset's)")
    a("--init-from", default=None, metavar="DIR",
      help="start from this HF checkpoint folder (long-context extension)")
    a("--set", action="append", default=[], metavar="FIELD=VALUE",
      help="override a preset field, e.g. --set num_hidden_layers=2 (JSON values)")
    add_device_args(p)
    a("--workers", dest="threads", type=positive_int, default=None, metavar="N",
      help="torch CPU threads (default: torch's choice)")
    p.add_alias("--threads", "threads", type=positive_int)
    a("--fsdp", action="store_true", help="FSDP2 fully_shard instead of DDP (gloo on CPU, nccl on CUDA)")
    a("--activation-checkpointing", action="store_true",
      help="recompute each decoder layer's activations in backward: less memory, about a third more compute")
    return p


LOOP_DTYPES = {"float32": "fp32", "bfloat16": "bf16"}    # --dtype -> the loop's autocast setting


def _validate(args) -> None:
    if args.dtype not in ("auto", *LOOP_DTYPES):
        raise UserError(f"--dtype {args.dtype}: pretraining runs in float32 or with bfloat16 autocast")
    if args.batch_size % args.grad_accum:
        raise UserError(f"--batch-size {args.batch_size} is not divisible by --grad-accum {args.grad_accum}")
    args.sources, args.weights = _data_sources(args.data, args.mix)
    for d in _all_paths(args):
        if not Path(d).exists():
            raise UserError(f"data path {d}: no such file or folder")
    tok = Path(args.tokenizer)
    if not tok.is_dir():
        raise UserError(f"--tokenizer {tok}: no such directory (train one with `dscoder tokenizer train`)")
    if args.init_from and not (Path(args.init_from) / "config.json").is_file():
        raise UserError(f"--init-from {args.init_from}: not an HF checkpoint folder (no config.json)")


def _all_paths(args) -> list[str]:
    return args.data if args.sources is None else [p for paths in args.sources.values() for p in paths]


def _check_data(args) -> None:
    """Every corpus (each named source on its own) has a usable training document: before OUT is written."""
    if args.sources is None:
        check_corpus(args.data, args.heldout_every)
        return
    for name, paths in args.sources.items():
        try:
            check_corpus(paths, args.heldout_every)
        except UserError as e:
            raise UserError(f"data source {name}: {e}") from None


def _streams(args, tokenizer, dist) -> tuple[PackedStream | MixedStream, list[torch.Tensor]]:
    """The training stream and the fixed held-out eval batches: one corpus packed as is, or each named source
    packed on its own (its own seeds) and interleaved by --mix, the held-out windows by the same weights."""
    def packed(paths, fim_seed, **kw):
        return PackedStream(paths, DocEncoder(tokenizer, args.fim_rate, seed=fim_seed, dist=dist), args.seq_len,
                            heldout_every=args.heldout_every, **kw)

    train_kw = dict(shuffle_docs=args.shuffle_docs, shuffle_windows=args.shuffle_windows)
    if args.sources is None:
        stream = packed(args.data, args.seed, seed=args.seed, **train_kw)
        held = packed(args.data, args.seed + 1, split="heldout", epochs=1)
    else:
        seeds = {n: source_seed(args.seed, n) for n in args.sources}
        stream = MixedStream({n: packed(p, seeds[n], seed=seeds[n], **train_kw) for n, p in args.sources.items()},
                             args.weights)
        held = MixedStream({n: packed(p, seeds[n] + 1, split="heldout", epochs=1)
                            for n, p in args.sources.items()}, args.weights)
    return stream, take_batches(held, args.eval_batches, args.batch_size // args.grad_accum)


def _parse_sets(items: list[str], base) -> dict:
    return typed_overrides(items, base, "--set")


def _round_up(n: int, k: int = 64) -> int:
    return (n + k - 1) // k * k


def build_config(args, tokenizer, ids):
    """The model config: the preset (or --init-from's config), vocab/bos/eos from the tokenizer, RoPE flags."""
    from ..models.config import config_from_hf
    from ..models.presets import get_preset

    try:
        if args.init_from:
            cfg = config_from_hf(json.loads((Path(args.init_from) / "config.json").read_text()))
            cfg = cfg.replace(**_parse_sets(args.set, cfg)) if args.set else cfg
        else:
            cfg = get_preset(args.preset, **_parse_sets(args.set, get_preset(args.preset)))
            n = len(tokenizer)
            # a model trained from scratch on our tokenizer: rows padded to a multiple of 64 (tensor-core
            # friendly); released presets keep their padded size when the tokenizer fits (32256 for v1)
            vocab = cfg.vocab_size if not args.preset.startswith("tiny") and cfg.vocab_size >= n else _round_up(n)
            cfg = cfg.replace(vocab_size=vocab, bos_token_id=ids.bos, eos_token_id=ids.eos)
        changes = {"max_position_embeddings": max(cfg.max_position_embeddings, args.seq_len)}
        if args.rope_theta is not None:
            changes["rope_theta"] = float(args.rope_theta)
        if args.rope_scaling_factor is not None:
            if hasattr(cfg, "rope_scaling_factor"):
                changes["rope_scaling_factor"] = float(args.rope_scaling_factor)
            else:
                changes["rope_scaling"] = dict(cfg.rope_scaling or {"type": "yarn"},
                                               factor=float(args.rope_scaling_factor))
        cfg = cfg.replace(**changes)
    except ValueError as e:
        raise UserError(str(e)) from e
    if len(tokenizer) > cfg.vocab_size:
        raise UserError(f"tokenizer has {len(tokenizer)} tokens but the model vocab is {cfg.vocab_size}")
    return cfg


def _config_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _check_resume(saved: dict, cfg, run_args: dict, fixed: tuple[str, ...] = _RESUME_FIXED) -> None:
    """Refuse to resume into a different model or data stream: never a silent load (as Megatron-LM's
    check_checkpoint_args)."""
    new = _config_dict(cfg)
    diff = sorted(k for k in set(saved["config"]) | set(new) if saved["config"].get(k) != new.get(k))
    if diff:
        detail = ", ".join(f"{k}: {saved['config'].get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise UserError(f"--resume: model config differs from the checkpoint ({detail}); use a new --out, or "
                        "--init-from CHECKPOINT to start a new run from its weights")
    bad = [k for k in fixed if saved["args"].get(k) != run_args.get(k)]
    if bad:
        detail = ", ".join(f"{k}: {saved['args'].get(k)!r} -> {run_args.get(k)!r}" for k in bad)
        raise UserError(f"--resume: {detail} differ from the checkpoint; they fix the data stream, keep them")


def _setup_model(args, cfg, dist, resume_from: Path | None):
    from ..models.hf import build_model, load_model

    torch.manual_seed(args.seed)
    if resume_from is not None:
        model = load_model(resume_from)
    elif args.init_from:
        src = load_model(args.init_from)
        model = build_model(cfg)
        try:
            missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
        except RuntimeError as e:                        # shapes differ (e.g. --set changed a size)
            raise UserError(f"--init-from {args.init_from}: weights do not fit the model "
                            f"({str(e).splitlines()[-1].strip()})") from None
        if unexpected or any(not k.endswith("inv_freq") for k in missing):
            raise UserError(f"--init-from {args.init_from}: weights do not fit the model "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        del src
    else:
        model = build_model(cfg)
    return model.to(dist.device)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed if seed < 2**32 else [seed & 0xFFFFFFFF, seed >> 32])   # numpy takes 32-bit words
    torch.manual_seed(seed)


def _run_args(args) -> dict:
    return {"seq_len": args.seq_len, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
            "fim_rate": args.fim_rate, "heldout_every": args.heldout_every, "shuffle_docs": args.shuffle_docs,
            "shuffle_windows": args.shuffle_windows,
            "data": [str(Path(d).resolve()) for d in args.data] if args.sources is None else
                    {n: [str(Path(d).resolve()) for d in paths] for n, paths in args.sources.items()},
            "mix": args.weights, "fsdp": bool(args.fsdp), "steps": args.steps,
            "lr": args.lr, "schedule": args.schedule, "preset": args.preset, "seed": args.seed}


def main(argv: list[str] | None = None) -> int:
    """Next-token + FIM pretraining (v1 paper §3), also the long-context extension (§3.6) with --init-from.

Train a tiny model on CPU:
    dscoder pretrain --preset tiny --tokenizer TOK corpus/ --out runs/tiny --steps 200 --seq-len 256 \\
        --batch-size 8 --save-every 50
Resume after a crash, bit-for-bit:    the same command + --resume
Extend a finished run:                the same command + --resume with a larger --steps
Two processes (DDP, or FSDP2):        python -m torch.distributed.run --nproc-per-node 2 -m dscoder.cli pretrain ...
                                      [--fsdp] [--activation-checkpointing]
Long-context extension:               --init-from OUT/final --seq-len 16384 --rope-scaling-factor 4 --rope-theta 1e5
                                      (recipes/long_context.md)
Mix corpora by weight:                dscoder pretrain code=runs/code math=runs/web-math text=runs/text \\
                                          --mix code=0.6,math=0.1,text=0.3 ...   (Coder-V2 §2's mix)
    NAME=PATH names a corpus (a name may repeat to take several paths; name every input or none; write ./a=b for
    a path that contains '='). Each corpus is packed on its own (FIM, shuffle, epochs) and every training window
    comes from one corpus: the one furthest below its weight's share so far (deterministic; within about one
    window of its share at every step). metrics.jsonl's `mix` and the progress line give the windows, tokens,
    running fraction and epochs per corpus; the held-out batches mix the corpora's held-out documents by the
    same weights. --resume keeps the mix.

Writes OUT/metrics.jsonl (one JSON row per optimizer step), OUT/loss.png, OUT/checkpoints/step-N/ (atomic, with
a manifest; every --save-every steps and after the last step; the newest --keep-last are kept), OUT/final/ (an HF
folder `dscoder.load_model` reads) and OUT/summary.json. Every input is checked before OUT is created; OUT is
locked while a run writes there (a second run into it exits 2 naming the holder's pid).
--resume continues from the newest checkpoint whose hashes verify. It refuses (exit 2, nothing touched) when every
checkpoint is damaged (one line per checkpoint says why: start over in a new --out) and when --steps is below a
step the run already reached.
SIGTERM: the step in progress finishes, a checkpoint is written, and the run exits with status 143 (128 + SIGTERM:
the run is not finished; continue it with --resume). A second SIGTERM while the checkpoint is written is ignored.
Under torchrun the launcher sends SIGKILL --shutdown-timeout seconds (default 30) after forwarding SIGTERM; a
checkpoint still being written then is discarded whole and the previous one stays.
Documents get FIM (PSM) at --fim-rate before packing; 1 document in --heldout-every (by a hash of its text) is
held out for the eval loss. --batch-size is the global batch in sequences per optimizer step, split over
--grad-accum micro-batches and over the torchrun processes."""
    args = _parser().parse_args(argv)
    _validate(args)
    from ..tokenizer.bpe import load_tokenizer
    from ..tokenizer.special import special_ids

    try:
        tokenizer = load_tokenizer(args.tokenizer)
    except (OSError, ValueError) as e:
        raise UserError(f"--tokenizer {args.tokenizer}: cannot load ({e})") from e
    ids = special_ids(tokenizer, require_fim=args.fim_rate > 0)
    cfg = build_config(args, tokenizer, ids)
    _check_data(args)                                      # before anything is written under --out
    with parallel.training_process(args.threads, resolve_device_dtype(args)[0].type) as dist:
        micro_rows = args.batch_size // args.grad_accum
        if micro_rows % dist.world:
            raise UserError(f"--batch-size / --grad-accum = {micro_rows} rows per micro-batch is not divisible by "
                            f"{dist.world} processes")
        with GracefulStop(dist) as stop, RunFolder(Path(args.out), dist) as folder:
            start = folder.decide(lambda: plan_start(args, cfg, folder.path))
            if start.done:
                return 0
            return _train(args, cfg, tokenizer, dist, start.resume_from, stop)


class RunFolder:
    """OUT, taken by rank 0 after every input has been checked: created, locked (`durable.lock_run_folder`) and,
    when this process created it and an error leaves it empty, removed again on the way out."""

    def __init__(self, path: Path, dist: parallel.Dist):
        self.path, self.dist, self.lock, self.created = path, dist, None, False

    def __enter__(self) -> "RunFolder":
        error = None
        if self.dist.is_main:
            self.created = not self.path.exists()
            try:
                self.lock = lock_run_folder(self.path)
            except UserError as e:
                error = str(e)
        error = parallel.broadcast_object(error, self.dist)
        if error:
            self._remove_if_empty()
            raise UserError(error)
        return self

    def decide(self, plan: Callable[[], "_Start"]) -> "_Start":
        """Rank 0 runs `plan` (reads OUT under the lock); every rank gets its result or its UserError."""
        result = error = None
        if self.dist.is_main:
            try:
                result = plan()
            except UserError as e:
                error = str(e)
        result, error = parallel.broadcast_object((result, error), self.dist)
        if error:
            raise UserError(error)
        return result

    def _remove_if_empty(self) -> None:
        if self.created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.lock.release()
            self._remove_if_empty()


@dataclasses.dataclass
class _Start:
    resume_from: Path | None = None          # checkpoint to continue from; None: step 0
    done: bool = False                       # OUT/final already holds --steps: nothing to do


def plan_start(args, cfg, out: Path, run_args: dict | None = None, fixed: tuple[str, ...] = _RESUME_FIXED,
                prog: str = "dscoder pretrain") -> _Start:
    """Where the run starts, read from OUT (rank 0, under the lock). Refusals are UserErrors and touch nothing.
    Also `dscoder sft`'s, with its own `run_args` (default: pretraining's) and settings a resume must keep."""
    ck_dir, final = out / "checkpoints", out / "final"
    if not args.resume:
        found = [n for n in ("checkpoints", "final", "metrics.jsonl") if (out / n).exists()]
        if found:
            raise UserError(f"{out} already holds a run ({', '.join(found)}): pass --resume to continue it, "
                            "or choose a new --out")
        return _Start()
    resume_from, rejected = ckpt.latest_checkpoint(ck_dir)
    if resume_from is None and rejected:
        why = "".join(f"\n  {p.name}: {reason}" for p, reason in rejected)
        raise UserError(f"--resume: no usable checkpoint under {ck_dir}; every one was rejected:{why}\n"
                        "start over with a new --out (or --init-from a good HF folder)")
    for p, reason in rejected:
        print(f"{prog}: skipping damaged checkpoint {p.name}: {reason}", file=sys.stderr)
    final_step = ckpt.checkpoint_step(final) if final.exists() else None
    reached = [(s, where) for s, where in ((final_step, final),
                                           (_step_of(resume_from), resume_from)) if s is not None]
    for step, where in reached:
        if args.steps < step:
            raise UserError(f"--resume --steps {args.steps}: {where} already holds step {step}; resuming would "
                            f"move the run backward (pass --steps >= {step}, or use a new --out)")
    if resume_from is not None:
        _check_resume(ckpt.load_train_state(resume_from), cfg, run_args or _run_args(args), fixed)
    if final_step == args.steps:
        print(f"{prog}: {final} already holds step {args.steps}; nothing to do", file=sys.stderr)
        return _Start(resume_from, done=True)
    if resume_from is None and final_step is not None:
        raise UserError(f"--resume: {final} holds step {final_step} but {ck_dir} has no checkpoint to continue "
                        f"from (--save-every 0); start a new run with --init-from {final}")
    if resume_from is None:
        print(f"{prog}: no checkpoint under {ck_dir}; starting at step 0", file=sys.stderr)
    gone = ckpt.clean_leftovers(out) + ckpt.clean_leftovers(ck_dir)
    if gone:
        print(f"{prog}: removed leftovers of an interrupted save: {', '.join(gone)}", file=sys.stderr)
    return _Start(resume_from)


def _step_of(checkpoint: Path | None) -> int | None:
    return None if checkpoint is None else int(checkpoint.name.split("-")[1])


def _train(args, cfg, tokenizer, dist, resume_from: Path | None, stop: GracefulStop) -> int:
    out = Path(args.out)
    ck_dir = out / "checkpoints"
    run_args = _run_args(args)
    saved = ckpt.load_train_state(resume_from) if resume_from else None
    seed_all(args.seed)
    model = _setup_model(args, cfg, dist, resume_from)
    model = parallel.parallelize(model, dist, fsdp=args.fsdp, activation_checkpointing=args.activation_checkpointing)
    optimizer = build_optimizer(model, args.lr)
    stream, evals = _streams(args, tokenizer, dist)
    if not evals and dist.is_main:
        print(f"dscoder pretrain: the held-out split (1 document in {args.heldout_every}) has too few tokens for "
              "one eval batch: no eval loss (lower --heldout-every for a small corpus)", file=sys.stderr)
    state = TrainState()
    if saved is not None:
        parallel.load_optimizer_state(model, optimizer, saved["optimizer"], dist)
        stream.load_state_dict(saved["data"])
        set_rng_state(saved["rng"][min(dist.rank, len(saved["rng"]) - 1)])
        state = TrainState(step=int(saved["step"]), tokens=int(saved["tokens"]), elapsed_s=float(saved["elapsed_s"]),
                           initial_eval_loss=saved.get("initial_eval_loss"))
    warmup = args.warmup if args.warmup is not None else min(2000, max(1, args.steps // 10))
    loop_cfg = LoopConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                          warmup=warmup, schedule=args.schedule, grad_accum=args.grad_accum,
                          save_every=args.save_every, eval_every=args.eval_every,
                          dtype=LOOP_DTYPES.get(args.dtype) or ("bf16" if dist.device.type == "cuda" else "fp32"))

    def save(st: TrainState) -> None:
        save_run_checkpoint(out, ck_dir, st, model, optimizer, stream, tokenizer, cfg, run_args, dist, args.keep_last)

    state = run(model, optimizer, stream, loop_cfg, dist, state, out, save, evals, stop=stop)
    if state.step < args.steps:
        return stopped_status(stop.received, state.step, args.steps, ck_dir, dist)
    final_model = gathered_model(model, cfg, dist)
    if dist.is_main:
        ckpt.save_hf_folder(out / "final", final_model, tokenizer, meta={"step": state.step})
        _write_summary(out, state, stream)
        print(f"dscoder pretrain: {state.step} steps, {state.tokens:,} tokens; final model in {out / 'final'}",
              file=sys.stderr)
    parallel.barrier(dist)
    return 0


def stopped_status(signal_name: str | None, step: int, steps: int, ck_dir: Path, dist,
             prog: str = "dscoder pretrain") -> int:
    """The message and exit status (143 = 128 + SIGTERM: not finished) of a run stopped by a signal."""
    if dist.is_main:
        where = ck_dir / f"step-{step:08d}"
        saved = f"checkpoint {where}" if (where / ckpt.MANIFEST).is_file() else "no checkpoint (no step ran)"
        print(f"{prog}: stopped by {signal_name} at step {step}/{steps}; {saved}; continue with the same "
              "command + --resume", file=sys.stderr)
    return 143


def _write_summary(out: Path, state, stream: PackedStream | MixedStream) -> None:
    """OUT/summary.json: totals, the held-out loss before and after training, what reading --data skipped
    (`data`: records read, bad records and the first one as FILE:LINE (reason), per file; skipped source files by
    reason; counted over the files the training stream read to their end) and, for a mix, the windows each source
    gave (`mix`, as in metrics.jsonl, with its `weight`)."""
    from .metrics import plot_loss, read_metrics

    evals = [r["eval_loss"] for r in read_metrics(out / "metrics.jsonl") if "eval_loss" in r]
    summary = {"steps": state.step, "tokens": state.tokens, "train_seconds": round(state.elapsed_s, 1),
               "initial_eval_loss": state.initial_eval_loss, "final_eval_loss": evals[-1] if evals else None,
               "data": stream.stats.as_dict()}
    if isinstance(stream, MixedStream):
        summary["mix"] = {n: {**v, "weight": stream.weights[n]} for n, v in stream.log_fields()["mix"].items()}
    if state.initial_eval_loss is not None:
        plot_loss(out / "metrics.jsonl", out / "loss.png", state.initial_eval_loss)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "summary.json")


def gathered_model(model, cfg, dist):
    """The plain model to write on rank 0 (under FSDP, a CPU copy built from the all-gathered state)."""
    if not dist.fsdp:
        return parallel.unwrap(model)
    from ..models.hf import build_model

    sd = parallel.full_model_state(model, dist)
    if not dist.is_main:
        return None
    plain = build_model(cfg)
    plain.load_state_dict(sd)
    return plain


def save_run_checkpoint(out, ck_dir, st, model, optimizer, stream, tokenizer, cfg, run_args, dist, keep_last,
                     export: Callable | None = None):
    """`export(plain) -> (model to write, extra train_state entries)`: how a wrapped model (LoRA) is written."""
    # every rank's RNG: identical today (nothing draws per rank), cheap insurance for dropout-like features
    rngs = parallel.all_gather_objects(rng_state(), dist)
    plain = gathered_model(model, cfg, dist)
    opt_state = parallel.full_optimizer_state(model, optimizer, dist)
    if dist.is_main:
        plain, extra = export(plain) if export is not None else (plain, {})
        train_state = {"tokens": st.tokens, "elapsed_s": st.elapsed_s, "initial_eval_loss": st.initial_eval_loss,
                       "data": stream.state_dict(), "rng": rngs, "config": _config_dict(cfg), "args": run_args,
                       "world_size": dist.world, **extra}
        ckpt.save_checkpoint(ck_dir, st.step, plain, opt_state, train_state, tokenizer, keep_last=keep_last)
    parallel.barrier(dist)
