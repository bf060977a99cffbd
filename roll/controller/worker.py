"""``Worker``: the base class of every role actor (actor, reference, critic, rollout, reward ...).

A worker is a plain class; :class:`~roll.controller.group.WorkerGroup` turns it into Ray actors,
one per rank, and exposes its ``@register``-ed methods on the driver. Subclasses keep the
constructor signature and pass the first three arguments on::

    class RewardWorker(Worker):
        def __init__(self, rank: int, world_size: int, role: str, *, scale: float = 1.0):
            super().__init__(rank, world_size, role, scale=scale)

        @register(Dispatch.SPLIT_BY_DP)
        def score(self, batch: Batch) -> Batch: ...
"""

from __future__ import annotations

import os
import random
import socket
from typing import Any

import numpy as np
import ray
import torch

from roll.controller.dispatch import Dispatch, RankCall, register


def _one_state_per_rank(n_workers: int, states: list[dict[str, Any]]) -> list[RankCall]:
    """Split for :meth:`Worker.set_rng_state`: ``states[i]`` goes to rank ``i``."""
    if len(states) != n_workers:
        raise ValueError(
            f"set_rng_state got {len(states)} states for {n_workers} workers; pass the list "
            "that get_rng_state() returned for a group of the same size"
        )
    return [((state,), {}) for state in states]


class Worker:
    """Base class for role actors.

    Attributes:
        rank: this worker's index in its group, ``0 <= rank < world_size``.
        world_size: the number of workers in the group.
        role: the role name (``"actor"``, ``"rollout"`` ...), used in logs and error messages.
        init_kwargs: the remaining constructor keyword arguments.
        device: ``"cuda"`` when this process sees a GPU, else ``"cpu"``.
    """

    def __init__(self, rank: int, world_size: int, role: str, **kwargs: Any) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"worker rank {rank} is outside a group of {world_size}")
        self.rank = rank
        self.world_size = world_size
        self.role = role
        self.init_kwargs = kwargs
        self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def __repr__(self) -> str:
        # Ray calls repr on a worker whose __init__ raised, before these attributes exist.
        role, rank = getattr(self, "role", "?"), getattr(self, "rank", "?")
        return f"{type(self).__name__}(role={role!r}, rank={rank}/{getattr(self, 'world_size', '?')})"

    @register(Dispatch.ONE_TO_ALL)
    def set_threads(self, n: int) -> int:
        """Set torch's intra-op thread count; returns it.

        Ray sets ``OMP_NUM_THREADS=1`` in actors with at most one CPU, so roles that compute on
        CPU choose their thread count explicitly.
        """
        if n <= 0:
            raise ValueError(f"set_threads needs a positive thread count, got {n}")
        torch.set_num_threads(n)
        return torch.get_num_threads()

    @register(Dispatch.ONE_TO_ALL)
    def ping(self) -> dict[str, Any]:
        """Where this worker runs: rank, pid, host, Ray node, GPU ids and ``CUDA_VISIBLE_DEVICES``.

        The group calls it to wait until every actor is alive; ``roll plan`` prints it.
        """
        return {
            "role": self.role,
            "rank": self.rank,
            "world_size": self.world_size,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": self.device,
            "torch_threads": torch.get_num_threads(),
        }

    @register(Dispatch.ONE_TO_ALL)
    def get_rng_state(self) -> dict[str, Any]:
        """Python, numpy and torch (CPU and, where present, CUDA) RNG states as picklable objects.

        Returns:
            ``{"python": tuple, "numpy": tuple, "torch": np.ndarray[uint8],
            "cuda": list[np.ndarray[uint8]] | None}``; through a group, one dict per rank.
        """
        cuda = None
        if torch.cuda.is_available():
            cuda = [s.numpy() for s in torch.cuda.get_rng_state_all()]
        return {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state().numpy(),
            "cuda": cuda,
        }

    @register(split=_one_state_per_rank)
    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`get_rng_state`; through a group, pass the per-rank list."""
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(torch.from_numpy(np.array(state["torch"], dtype=np.uint8)))
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(
                [torch.from_numpy(np.array(s, dtype=np.uint8)) for s in state["cuda"]]
            )
