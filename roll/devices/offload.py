"""Offload/reload of a colocated role's tensors: the ACTIVE <-> OFFLOADED state machine.

Roles colocated on one device take turns: the rollout generates while the actor's weights and
optimizer state sit in host memory, then they swap. ``OffloadManager`` owns that switch for one
role. It tracks modules (parameters, their gradients, buffers) and optimizers (their state tensors)
and moves them between the device and pinned host memory::

    offload = OffloadManager("actor", "cuda:0")
    offload.track_module("model", model)
    offload.track_optimizer("optim", optimizer)
    offload.offload()                    # ACTIVE -> OFFLOADED; device memory freed
    offload.require_active("train_step") # raises StateError while offloaded
    offload.reload()                     # OFFLOADED -> ACTIVE

Tensors are moved in place (``t.data = copy``), so ``nn.Parameter`` objects keep their identity and
the optimizer's per-parameter state stays attached to them.

On a CPU device nothing needs to move: the data stays where it is, but the state machine is real
(``require_active`` still refuses work while offloaded) and the bytes that *would* move are counted,
so CPU runs report the same traffic a GPU run would.

Byte accounting: ``offloaded_bytes`` is the sum of ``numel * element_size`` over every tracked
tensor that lives on the manager's device at offload time — parameters, gradients that exist (none
after ``zero_grad()``, which sets them to None), buffers, and every optimizer-state tensor. AdamW's
``step`` counters are 0-dim float32 tensors that torch keeps on the CPU (unless ``capturable`` or
``fused``): on a CUDA device they are not moved and not counted; on a CPU device they are counted
(4 bytes per parameter tensor), like everything else there.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from typing import Any

import torch

from roll.errors import StateError


class OffloadState(enum.Enum):
    """Where a role's tensors are: on its device (ACTIVE) or in host memory (OFFLOADED)."""

    ACTIVE = "active"
    OFFLOADED = "offloaded"


class OffloadStateMachine:
    """The ACTIVE <-> OFFLOADED states and their counters, shared by every offloadable engine part
    (``OffloadManager`` for torch tensors, the vLLM engine's sleep/wake)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = OffloadState.ACTIVE
        self._offloaded_bytes = 0
        self._total_offloads = 0
        self._total_reloads = 0
        self._bytes_moved_total = 0
        self._last_offload_s: float | None = None
        self._last_reload_s: float | None = None

    def require_active(self, action: str) -> None:
        """Raise StateError unless ACTIVE, e.g. "actor: cannot train_step while OFFLOADED; ..."."""
        self._require(OffloadState.ACTIVE, action, "call reload() first")

    def stats(self) -> dict[str, Any]:
        """Counters: state, offloaded_bytes (now), total_offloads, total_reloads,
        bytes_moved_total (both directions), last_offload_s, last_reload_s (seconds or None)."""
        return {
            "state": self.state.value,
            "offloaded_bytes": self._offloaded_bytes,
            "total_offloads": self._total_offloads,
            "total_reloads": self._total_reloads,
            "bytes_moved_total": self._bytes_moved_total,
            "last_offload_s": self._last_offload_s,
            "last_reload_s": self._last_reload_s,
        }

    def _require(self, state: OffloadState, action: str, fix: str) -> None:
        if self.state is not state:
            raise StateError(f"{self.name}: cannot {action} while {self.state.name}; {fix}")


class OffloadManager(OffloadStateMachine):
    """Moves one role's tracked tensors off its device and back.

    Args:
        name: role name, used in error messages (e.g. "actor").
        device: the device the tensors live on while ACTIVE (e.g. "cuda:0" or "cpu").
    """

    def __init__(self, name: str, device: torch.device | str) -> None:
        super().__init__(name)
        self.device = torch.device(device)
        self._modules: dict[str, torch.nn.Module] = {}
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._moved: list[torch.Tensor] = []

    @property
    def moves_data(self) -> bool:
        """True when offloading really moves tensors (any device other than the CPU)."""
        return self.device.type != "cpu"

    def track_module(self, name: str, module: torch.nn.Module) -> None:
        """Manage ``module``'s parameters, their gradients and its buffers under ``name``."""
        self._check_new_name(name)
        self._modules[name] = module

    def track_optimizer(self, name: str, optimizer: torch.optim.Optimizer) -> None:
        """Manage ``optimizer``'s state tensors (e.g. Adam's exp_avg, exp_avg_sq, step)."""
        self._check_new_name(name)
        self._optimizers[name] = optimizer

    def tracked_bytes(self) -> int:
        """Bytes of the tracked tensors on the device right now (what offload() would move)."""
        return sum(_nbytes(t) for t in self._tensors_on_device())

    def offload(self) -> int:
        """ACTIVE -> OFFLOADED. Returns the bytes offloaded.

        On a non-CPU device every tracked tensor on it is copied to pinned host memory and the
        allocator's cache is emptied; on the CPU the data stays and only the state changes.
        """
        self._require(OffloadState.ACTIVE, "offload", "already offloaded; call reload() first")
        start = time.perf_counter()
        tensors = list(self._tensors_on_device())
        nbytes = sum(_nbytes(t) for t in tensors)
        if self.moves_data:
            pin = self.device.type == "cuda"
            for t in tensors:
                host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
                host.copy_(t.data, non_blocking=pin)
                t.data = host
            self._synchronize()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._moved = tensors
        self.state = OffloadState.OFFLOADED
        self._offloaded_bytes = nbytes
        self._bytes_moved_total += nbytes
        self._total_offloads += 1
        self._last_offload_s = time.perf_counter() - start
        return nbytes

    def reload(self) -> int:
        """OFFLOADED -> ACTIVE: the offloaded tensors go back to the device. Returns the bytes."""
        self._require(OffloadState.OFFLOADED, "reload", "nothing is offloaded; call offload() first")
        start = time.perf_counter()
        nbytes = self._offloaded_bytes
        if self.moves_data:
            for t in self._moved:
                t.data = t.data.to(self.device, non_blocking=True)
            self._synchronize()
            self._moved = []
        self.state = OffloadState.ACTIVE
        self._offloaded_bytes = 0
        self._bytes_moved_total += nbytes
        self._total_reloads += 1
        self._last_reload_s = time.perf_counter() - start
        return nbytes

    def _check_new_name(self, name: str) -> None:
        if name in self._modules or name in self._optimizers:
            raise ValueError(f"{self.name}: '{name}' is already tracked; use a distinct name")
        if self.state is not OffloadState.ACTIVE:
            raise StateError(f"{self.name}: cannot track '{name}' while OFFLOADED; call reload() first")

    def _tensors_on_device(self) -> Iterator[torch.Tensor]:
        """Every tracked tensor on the device, each once (shared parameters/tied weights too)."""
        seen: set[int] = set()
        for tensor in self._all_tensors():
            if tensor.device == self.device or (
                # "cuda" and "cuda:0" name the same device when no index was given.
                self.device.index is None and tensor.device.type == self.device.type
            ):
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    yield tensor

    def _all_tensors(self) -> Iterator[torch.Tensor]:
        for module in self._modules.values():
            for param in module.parameters():
                yield param
                if param.grad is not None:
                    yield param.grad
            yield from module.buffers()
        for optimizer in self._optimizers.values():
            for per_param in optimizer.state.values():
                yield from _state_tensors(per_param)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _state_tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _state_tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _state_tensors(item)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
