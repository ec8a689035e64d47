"""Data parallelism applied from outside the model (STYLE principle 6; torchtitan's `parallelize_*`).

Launch with torchrun (`python -m torch.distributed.run --nproc-per-node N -m dscoder.cli pretrain ...`):
`init_distributed` reads RANK / WORLD_SIZE / LOCAL_RANK from the environment and opens a process group (gloo on
CPU, nccl on CUDA). A plain `python -m dscoder.cli pretrain` is the same code path with world size 1.

`parallelize(model, dist, fsdp=..., activation_checkpointing=...)` wraps a single-device model, in this order:
  1. activation checkpointing (`--activation-checkpointing`): each decoder layer keeps only its input and recomputes
     its activations during backward (torch's composable `checkpoint`: parameter names do not change);
  2. torch.compile -- not applied (determinism of the resume test comes first);
  3. FSDP2 `fully_shard` on every decoder layer, then the root (`--fsdp`; gloo on CPU or nccl on CUDA), or
     DDP (default; every rank holds the full model and optimizer state, gradients are all-reduced).
With gradient accumulation, `grad_sync(model, False)` skips the gradient all-reduce (DDP `no_sync`) or
reduce-scatter (FSDP2 `set_requires_gradient_sync`) on every micro-batch but the last.
Only rank 0 logs and writes checkpoints; the logged loss is all-reduced so it is the global-batch mean.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn

from ..errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "cpu") -> Dist:
    """Process group from torchrun's environment; world size 1 (no group) when not launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is visible (use --device cpu)")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    if world > 1 and not tdist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        tdist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30))
    return Dist(rank=rank, world=world, local_rank=local, device=dev)


def parallelize(model: nn.Module, dist: Dist, fsdp: bool = False, activation_checkpointing: bool = False) -> nn.Module:
    """Wrap `model` (already on dist.device) in the order of the module docstring; unchanged when world size is 1
    and neither option is set."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if (fsdp or activation_checkpointing) and layers is None:
        raise UserError("--fsdp / --activation-checkpointing: the model has no .model.layers")
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for layer in layers:
            checkpoint(layer)
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        if not tdist.is_initialized():
            raise UserError("--fsdp needs a process group: launch with torchrun (even --nproc-per-node 1)")
        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
        dist.fsdp = True
        return model
    if dist.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def grad_sync(model: nn.Module, sync: bool):
    """Context for one micro-batch's forward + backward: gradients are reduced across ranks only when `sync`."""
    if hasattr(model, "set_requires_gradient_sync"):           # FSDP2
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if not sync and hasattr(model, "no_sync"):                 # DDP
        return model.no_sync()
    return contextlib.nullcontext()


def shard_rows(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's disjoint slice of a global batch: rows rank, rank + world, ..."""
    return batch[rank::world]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (FSDP2 shards in place: the module is itself)."""
    return getattr(model, "module", model)


def all_reduce_mean(value: float, dist: Dist) -> float:
    if not dist.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t)
    return t.item() / dist.world


def all_reduce_sum_(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.active:
        tdist.all_reduce(t)
    return t


def any_rank(flag: bool, dist: Dist) -> bool:
    """True on every rank when `flag` is true on at least one."""
    if not dist.active:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=dist.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_objects(obj, dist: Dist) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank (picklable objects, e.g. lists of token ids)."""
    if not dist.active:
        return [obj]
    out = [None] * dist.world
    tdist.all_gather_object(out, obj)
    return out


def barrier(dist: Dist) -> None:
    if dist.active:
        tdist.barrier()


def broadcast_object(obj, dist: Dist):
    """Rank 0's `obj` on every rank (e.g. 'resume from this checkpoint')."""
    if not dist.active:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup(dist: Dist) -> None:
    if dist.active and tdist.is_initialized():
        tdist.destroy_process_group()


@contextlib.contextmanager
def training_process(threads: int | None, device: str):
    """A training run's process-wide settings: torch threads, deterministic algorithms (deterministic cuBLAS for
    exact resume) and the process group; all put back on exit, so an in-process caller (a test, a notebook) is
    unaffected. Yields the `Dist`."""
    prev = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())
    if threads:
        torch.set_num_threads(threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    dist = init_distributed(device)
    try:
        yield dist
    finally:
        cleanup(dist)
        torch.set_num_threads(prev[0])
        torch.use_deterministic_algorithms(prev[1], warn_only=prev[2])


# --------------------------------------------------------------------------------- state for checkpoints
def full_model_state(model: nn.Module, dist: Dist) -> dict[str, torch.Tensor]:
    """A full, unsharded CPU state dict (every rank must call this under FSDP: it all-gathers)."""
    if dist.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict()


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, dist: Dist) -> dict:
    if dist.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, dist: Dist) -> None:
    if dist.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
        return
    optimizer.load_state_dict(state)
