"""OffloadManager: the ACTIVE <-> OFFLOADED state machine and its byte accounting.

Bytes are computed by hand from shapes. The model is Linear(4, 3) + BatchNorm1d(3), trained one
AdamW step, then ``zero_grad()`` (which sets gradients to None):

- parameters: linear weight 3x4 + bias 3, batchnorm weight 3 + bias 3 = 21 float32 = 84 bytes
- buffers: running_mean 3 + running_var 3 float32 = 24 bytes, num_batches_tracked int64 = 8 bytes
- AdamW state per parameter tensor (4 of them): exp_avg and exp_avg_sq (same shapes, 84 bytes
  each over all four), and ``step``, a 0-dim float32 tensor kept on the CPU = 4 x 4 = 16 bytes.
  On a CPU device the step counters count (they are on the device); on CUDA they stay on the CPU
  and do not.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from roll.devices import OffloadManager, OffloadState
from roll.errors import StateError

PARAM_BYTES = (3 * 4 + 3 + 3 + 3) * 4
BUFFER_BYTES = (3 + 3) * 4 + 8
ADAM_MOMENT_BYTES = 2 * PARAM_BYTES
ADAM_STEP_BYTES = 4 * 4
CPU_TOTAL = PARAM_BYTES + BUFFER_BYTES + ADAM_MOMENT_BYTES + ADAM_STEP_BYTES  # 300


def trained(device: str = "cpu") -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, optimizer)
    return model, optimizer


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    device = next(model.parameters()).device
    loss = model(torch.randn(8, 4, device=device)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def manager(model: nn.Module, optimizer: torch.optim.Optimizer, device: str = "cpu") -> OffloadManager:
    offload = OffloadManager("actor", device)
    offload.track_module("model", model)
    offload.track_optimizer("optim", optimizer)
    return offload


def test_cpu_cycle_counts_bytes_exactly_and_keeps_data():
    model, optimizer = trained()
    offload = manager(model, optimizer)
    assert CPU_TOTAL == 300
    assert offload.tracked_bytes() == CPU_TOTAL
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pointer = model[0].weight.data_ptr()

    assert offload.offload() == CPU_TOTAL
    assert offload.state is OffloadState.OFFLOADED
    stats = offload.stats()
    assert stats["state"] == "offloaded" and stats["offloaded_bytes"] == CPU_TOTAL
    assert stats["total_offloads"] == 1 and stats["bytes_moved_total"] == CPU_TOTAL
    assert stats["last_offload_s"] >= 0 and stats["last_reload_s"] is None
    assert model[0].weight.data_ptr() == pointer  # on the CPU nothing moves

    assert offload.reload() == CPU_TOTAL
    stats = offload.stats()
    assert stats == {
        "state": "active",
        "offloaded_bytes": 0,
        "total_offloads": 1,
        "total_reloads": 1,
        "bytes_moved_total": 2 * CPU_TOTAL,
        "last_offload_s": stats["last_offload_s"],
        "last_reload_s": stats["last_reload_s"],
    }
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    train_step(model, optimizer)  # still trains after the cycle
    offload.offload()
    offload.reload()
    assert offload.stats()["total_offloads"] == 2
    assert offload.stats()["bytes_moved_total"] == 4 * CPU_TOTAL


def test_gradients_that_exist_are_counted():
    model, optimizer = trained()
    model(torch.randn(8, 4)).sum().backward()
    offload = manager(model, optimizer)
    assert offload.offload() == CPU_TOTAL + PARAM_BYTES


def test_shared_tensors_are_counted_once():
    linear = nn.Linear(4, 3)
    offload = OffloadManager("rollout", "cpu")
    offload.track_module("a", linear)
    offload.track_module("b", nn.Sequential(linear))
    assert offload.offload() == (12 + 3) * 4


def test_invalid_transitions_raise_state_error():
    model, optimizer = trained()
    offload = manager(model, optimizer)
    with pytest.raises(
        StateError, match="actor: cannot reload while ACTIVE; nothing is offloaded; call offload"
    ):
        offload.reload()
    offload.offload()
    with pytest.raises(StateError, match="actor: cannot offload while OFFLOADED"):
        offload.offload()
    with pytest.raises(StateError, match="cannot track 'extra' while OFFLOADED"):
        offload.track_module("extra", nn.Linear(1, 1))
    assert offload.stats()["total_offloads"] == 1  # failed calls change nothing


def test_require_active_message():
    model, optimizer = trained()
    offload = manager(model, optimizer)
    offload.require_active("train_step")  # active: no error
    offload.offload()
    with pytest.raises(StateError) as info:
        offload.require_active("train_step")
    assert str(info.value) == "actor: cannot train_step while OFFLOADED; call reload() first"
    offload.reload()
    offload.require_active("train_step")


def test_duplicate_name_rejected():
    offload = OffloadManager("actor", "cpu")
    offload.track_module("model", nn.Linear(1, 1))
    with pytest.raises(ValueError, match="already tracked"):
        offload.track_module("model", nn.Linear(1, 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_offload_frees_device_memory_and_restores():
    model, optimizer = trained("cuda")
    offload = manager(model, optimizer, "cuda")
    before = {k: v.cpu().clone() for k, v in model.state_dict().items()}
    allocated = torch.cuda.memory_allocated()

    # AdamW's step counters stay on the CPU (not capturable): not moved, not counted.
    assert offload.offload() == CPU_TOTAL - ADAM_STEP_BYTES
    assert model[0].weight.device.type == "cpu" and model[0].weight.is_pinned()
    assert all(s["exp_avg"].device.type == "cpu" for s in optimizer.state.values())
    assert torch.cuda.memory_allocated() < allocated

    offload.reload()
    assert model[0].weight.device.type == "cuda"
    assert all(s["exp_avg_sq"].device.type == "cuda" for s in optimizer.state.values())
    assert all(s["step"].device.type == "cpu" for s in optimizer.state.values())
    for key, value in model.state_dict().items():
        assert torch.equal(value.cpu(), before[key]), key
    train_step(model, optimizer)
