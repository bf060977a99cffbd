"""What a cluster offers: nodes with CPUs, GPUs and memory, and the device slots they make.

A *device* is the unit the planner hands out. On a cluster with GPUs it is one GPU (global ids
0..num_gpus-1, counted across nodes). On a CPU-only cluster the CPUs are divided into *CPU slots*
(``ClusterConfig.cpu_slots``, default one per CPU), so the same job YAML with ``devices: [0, 1]``
runs on a laptop and on a GPU box.

Three ways to get one:

- ``ClusterResources.from_ray()`` — the connected Ray cluster (after ``ray.init``);
- ``ClusterResources.local(cluster_cfg)`` — what an embedded ``ray.init`` with that config would
  give, without starting Ray (``roll plan`` uses this);
- ``ClusterResources.fake(...)`` — any shape, for tests and for planning a cluster you do not have.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from roll.devices.spec import ClusterConfig
from roll.errors import DevicePlanError


@dataclass(frozen=True)
class NodeResources:
    """One Ray node.

    Attributes:
        node_id: Ray node id (or a made-up name for fake/local clusters).
        cpus: logical CPUs Ray may schedule on this node.
        gpus: whole GPUs on this node.
        memory_bytes: host memory Ray may use for tasks and actors, in bytes.
        gpu_memory_bytes: memory of one GPU in bytes, when known (Ray does not report it).
    """

    node_id: str
    cpus: float
    gpus: int = 0
    memory_bytes: int = 0
    gpu_memory_bytes: int | None = None


@dataclass(frozen=True)
class ClusterResources:
    """The nodes of a cluster and the device slots they make.

    Attributes:
        nodes: every alive node.
        cpu_slots: on a CPU-only cluster, how many device slots the CPUs make (None: one per
            whole CPU). Ignored when the cluster has GPUs.
    """

    nodes: list[NodeResources] = field(default_factory=list)
    cpu_slots: int | None = None

    @property
    def kind(self) -> Literal["gpu", "cpu"]:
        """ "gpu" when any node has a GPU, else "cpu" (devices are CPU slots)."""
        return "gpu" if self.num_gpus > 0 else "cpu"

    @property
    def num_cpus(self) -> float:
        """Total logical CPUs over all nodes."""
        return sum(node.cpus for node in self.nodes)

    @property
    def num_gpus(self) -> int:
        """Total GPUs over all nodes."""
        return sum(node.gpus for node in self.nodes)

    @property
    def memory_bytes(self) -> int:
        """Total host memory over all nodes, in bytes."""
        return sum(node.memory_bytes for node in self.nodes)

    @property
    def num_devices(self) -> int:
        """Device ids available to roles: GPUs, or CPU slots on a CPU-only cluster."""
        if self.kind == "gpu":
            return self.num_gpus
        if self.cpu_slots is not None:
            return self.cpu_slots
        return max(1, math.floor(self.num_cpus))

    @property
    def device_word(self) -> str:
        """ "GPU" or "CPU slot", for messages."""
        return "GPU" if self.kind == "gpu" else "CPU slot"

    @property
    def gpu_memory_bytes(self) -> int | None:
        """Memory of the smallest GPU, in bytes; None when no GPU node reports it.

        The smallest, because which node's GPU a device id lands on is Ray's choice.
        """
        sizes = [n.gpu_memory_bytes for n in self.nodes if n.gpus]
        if not sizes or any(b is None for b in sizes):
            return None
        return min(sizes)

    @property
    def gpu_memory_uniform(self) -> bool:
        """True when every GPU node reports the same GPU memory."""
        return len({n.gpu_memory_bytes for n in self.nodes if n.gpus}) <= 1

    def describe(self) -> str:
        """One line, e.g. "1 node, 2 CPUs, 4 GPUs of 80 GiB (device ids 0-3)"."""
        n = len(self.nodes)
        cpus = f"{self.num_cpus:g}"
        parts = [f"{n} node{'s' if n != 1 else ''}", f"{cpus} CPU{'s' if cpus != '1' else ''}"]
        if self.kind == "gpu":
            gpus = f"{self.num_gpus} GPU{'s' if self.num_gpus != 1 else ''}"
            sizes = sorted({n.gpu_memory_bytes for n in self.nodes if n.gpus and n.gpu_memory_bytes})
            if sizes:
                gpus += f" of {'/'.join(f'{b / 2**30:.3g}' for b in sizes)} GiB"
            parts.append(gpus)
        else:
            parts.append(f"{self.num_devices} CPU slot{'s' if self.num_devices != 1 else ''}")
        return f"{', '.join(parts)} (device ids {_id_range(self.num_devices)})"

    @classmethod
    def fake(
        cls,
        num_nodes: int = 1,
        cpus_per_node: float = 2,
        gpus_per_node: int = 0,
        *,
        memory_bytes_per_node: int = 16 * 2**30,
        gpu_memory_bytes: int | None = None,
        cpu_slots: int | None = None,
    ) -> ClusterResources:
        """A cluster of ``num_nodes`` identical made-up nodes (no Ray needed)."""
        if num_nodes < 1 or cpus_per_node <= 0 or gpus_per_node < 0:
            raise DevicePlanError(
                f"a fake cluster needs num_nodes >= 1, cpus_per_node > 0 and gpus_per_node >= 0 "
                f"(got {num_nodes}, {cpus_per_node}, {gpus_per_node})"
            )
        nodes = [
            NodeResources(
                node_id=f"fake-{i}",
                cpus=float(cpus_per_node),
                gpus=gpus_per_node,
                memory_bytes=memory_bytes_per_node,
                gpu_memory_bytes=gpu_memory_bytes if gpus_per_node else None,
            )
            for i in range(num_nodes)
        ]
        return cls(nodes=nodes, cpu_slots=cpu_slots)

    @classmethod
    def local(cls, cluster_cfg: ClusterConfig | None = None) -> ClusterResources:
        """What an embedded ``ray.init(**cluster_cfg.ray_init_kwargs())`` would give.

        Starts nothing. Raises DevicePlanError when the config points at an existing cluster,
        whose shape only ``from_ray()`` can tell.
        """
        cfg = cluster_cfg or ClusterConfig()
        if cfg.address is not None:
            raise DevicePlanError(
                f"cluster.address is set ({cfg.address!r}), so the cluster's resources are not "
                "known before connecting; connect with ray.init(address=...) and use "
                "ClusterResources.from_ray(), or remove cluster.address to plan for a local Ray"
            )
        node = NodeResources(
            node_id="local",
            cpus=float(cfg.resolved_num_cpus),
            gpus=cfg.num_gpus,
            memory_bytes=_host_memory_bytes(),
            gpu_memory_bytes=_gib_to_bytes(cfg.gpu_memory_gb) if cfg.num_gpus else None,
        )
        return cls(nodes=[node], cpu_slots=cfg.cpu_slots)

    @classmethod
    def from_ray(
        cls, *, cpu_slots: int | None = None, gpu_memory_bytes: int | None = None
    ) -> ClusterResources:
        """The alive nodes of the Ray cluster this process is connected to.

        Ray does not report GPU memory: pass ``gpu_memory_bytes`` (e.g. from
        ``ClusterConfig.gpu_memory_gb``) to give every GPU node that size.
        """
        import ray

        if not ray.is_initialized():
            raise DevicePlanError(
                "Ray is not initialised, so the cluster cannot be read; call ray.init() first, "
                "or plan without a cluster with ClusterResources.local(...) or "
                "ClusterResources.fake(...)"
            )
        nodes = [_node_from_ray(info, gpu_memory_bytes) for info in ray.nodes() if info.get("Alive")]
        if not nodes:
            raise DevicePlanError("the connected Ray cluster reports no alive nodes; check `ray status`")
        return cls(nodes=nodes, cpu_slots=cpu_slots)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-safe)."""
        return {
            "kind": self.kind,
            "num_devices": self.num_devices,
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "cpu_slots": self.cpu_slots,
            "nodes": [
                {
                    "node_id": n.node_id,
                    "cpus": n.cpus,
                    "gpus": n.gpus,
                    "memory_bytes": n.memory_bytes,
                    "gpu_memory_bytes": n.gpu_memory_bytes,
                }
                for n in self.nodes
            ],
        }


def _node_from_ray(info: dict[str, Any], gpu_memory_bytes: int | None) -> NodeResources:
    resources = info.get("Resources", {})
    # Fractional GPU totals do not occur on real nodes; floor keeps device ids whole.
    gpus = int(resources.get("GPU", 0.0))
    return NodeResources(
        node_id=str(info.get("NodeID", "")),
        cpus=float(resources.get("CPU", 0.0)),
        gpus=gpus,
        memory_bytes=int(resources.get("memory", 0)),
        gpu_memory_bytes=gpu_memory_bytes if gpus else None,
    )


def _gib_to_bytes(gib: float | None) -> int | None:
    return None if gib is None else int(gib * 2**30)


def _host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: memory is informational only
        return 0


def _id_range(n: int) -> str:
    return "none" if n <= 0 else ("0" if n == 1 else f"0-{n - 1}")


def format_ids(ids: list[int]) -> str:
    """Compact id list: [0, 1, 2, 5] -> "0-2,5"; [] -> "-"."""
    if not ids:
        return "-"
    ordered = sorted(ids)
    runs: list[str] = []
    start = prev = ordered[0]
    for d in [*ordered[1:], None]:
        if d is not None and d == prev + 1:
            prev = d
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if d is not None:
            start = prev = d
    return ",".join(runs)
