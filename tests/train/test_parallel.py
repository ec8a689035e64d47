"""parallelize: activation checkpointing gives the same loss and gradients; FSDP2 gradient accumulation does not
reduce gradients until the last micro-batch (one process, a real gloo group)."""
from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.distributed as tdist

from dscoder.models.hf import build_model
from dscoder.models.presets import get_preset
from dscoder.train.loop import lm_loss
from dscoder.train.parallel import Dist, grad_sync, parallelize

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)
SMALL_MOE = dict(vocab_size=96, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
                 kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss, out = lm_loss(model, batch[:, :-1], batch[:, 1:])
    total = loss if out.aux_loss is None else loss + out.aux_loss
    total.backward()
    return total.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_for_backward(model, batch) -> int:
    """Bytes autograd keeps from the forward pass (what activation checkpointing saves)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lm_loss(model, batch[:, :-1], batch[:, 1:])
    return total


@pytest.mark.parametrize("preset,small", [("tiny", SMALL), ("tiny-moe", SMALL_MOE)])
def test_activation_checkpointing_same_loss_and_grads(preset, small):
    torch.manual_seed(0)
    plain = build_model(get_preset(preset, **small)).train()
    ac = parallelize(copy.deepcopy(plain), Dist(), activation_checkpointing=True)
    assert [n for n, _ in ac.named_parameters()] == [n for n, _ in plain.named_parameters()]   # names unchanged
    batch = torch.randint(0, 96, (3, 17), generator=torch.Generator().manual_seed(1))
    loss_a, grads_a = _loss_and_grads(plain, batch)
    loss_b, grads_b = _loss_and_grads(ac, batch)
    assert abs(loss_a - loss_b) < 1e-6
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    assert max((grads_a[k] - grads_b[k]).abs().max().item() for k in grads_a) < 1e-6
    assert _saved_for_backward(ac, batch) < 0.7 * _saved_for_backward(plain, batch)   # it is really on


@pytest.fixture
def gloo_world_of_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield Dist()
    tdist.destroy_process_group()


def test_fsdp_accumulation_reduces_only_on_the_last_micro_batch(gloo_world_of_one):
    torch.manual_seed(0)
    plain = build_model(get_preset("tiny", **SMALL)).train()
    sharded = parallelize(copy.deepcopy(plain), gloo_world_of_one, fsdp=True)
    gen = torch.Generator().manual_seed(2)
    micro = [torch.randint(0, 96, (2, 9), generator=gen) for _ in range(2)]
    for i, b in enumerate(micro):
        loss, _ = lm_loss(plain, b[:, :-1], b[:, 1:])
        (loss / 2).backward()
        with grad_sync(sharded, i == len(micro) - 1):
            loss, _ = lm_loss(sharded, b[:, :-1], b[:, 1:])
            (loss / 2).backward()
        if i == 0:      # not synced: FSDP2 keeps the unsharded gradient aside, the sharded .grad is not written
            assert all(p.grad is None for p in sharded.parameters())
    for (name, p), q in zip(plain.named_parameters(), sharded.parameters()):
        assert torch.allclose(p.grad, q.grad.full_tensor(), atol=1e-6), name
