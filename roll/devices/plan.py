"""The device planner: role placements + cluster resources -> a validated ``DevicePlan``.

``build_device_plan`` resolves ``colocate_with`` chains, checks every placement against the cluster
and derives each role's worker count, CPU share and thread count. Every problem it finds is
reported at once, each line saying what to change. The plan prints as a table (``roll plan``) and
is what ``PlacementManager`` turns into a Ray placement group.

Sharing rules:

- A role with ``devices: [ids]`` runs one worker per id; its data-parallel size is ``len(ids)``.
- ``devices: {colocate_with: r}`` runs on exactly r's devices (following chains). The roles on a
  device group time-share it (offload/reload), splitting the device's Ray CPU/GPU reservation.
- Two roles with explicit, overlapping lists are an error: sharing must be said with colocate_with.
- A role without devices runs ``num_workers`` CPU workers outside the placement group.
- ``devices: auto`` is first replaced by ids or colocate_with (``roll.devices.auto.plan_auto``, from
  the roles' ``RoleNeeds``); the plan keeps its reasons and prints them under the table.

Derived values: each device gets ``cpus_per_device`` Ray CPUs (the cluster's CPUs split evenly over
its devices, floored to 0.01, lowered so that the device-less roles still fit); a worker's
``cpus_per_worker`` is that share split among the roles on the device; its ``threads`` is the whole
share (at least 1), since colocated roles take turns rather than run at once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from io import StringIO
from typing import Any

from rich.console import Console
from rich.table import Table

from roll.devices.auto import MEMORY_MARGIN, Prefer, plan_auto
from roll.devices.checks import (
    check_batch_sizes,
    check_explicit_devices,
    check_overlaps,
    raise_if_problems,
    resolve_colocation,
)
from roll.devices.estimate import RoleNeeds
from roll.devices.resources import ClusterResources, format_ids
from roll.devices.spec import ColocateWith, RolePlacement
from roll.errors import DevicePlanError

# Ray CPUs reserved per worker of a role without devices when cpus_per_worker is not set.
DEFAULT_DEVICELESS_CPUS = 0.1
# Beyond this many devices the device x role grid is left out of render() (it would not fit).
_GRID_MAX_DEVICES = 32


@dataclass
class RoleAssignment:
    """Where one role runs, resolved.

    Attributes:
        role: role name.
        devices: global device ids, one worker each; a colocated role gets its target's list;
            empty for a role without devices.
        colocated_with: the role named in ``colocate_with``, else None.
        dp_size: data-parallel size = number of workers (len(devices), or num_workers).
        cpus_per_worker: Ray num_cpus of each worker.
        gpus_per_worker: Ray num_gpus of each worker (1 / roles sharing the GPU; 0 on CPU slots
            and for roles without devices).
        threads: torch intra-op threads each worker should use.
        needs_device: False for a role without devices.
        same_process: runs inside its ``colocated_with`` role's workers (no processes of its own).
    """

    role: str
    devices: list[int]
    colocated_with: str | None
    dp_size: int
    cpus_per_worker: float
    gpus_per_worker: float
    threads: int
    needs_device: bool
    same_process: bool = False

    @property
    def num_workers(self) -> int:
        """Number of workers (equal to dp_size)."""
        return self.dp_size


@dataclass
class DevicePlan:
    """A validated mapping of roles to devices on one cluster.

    Attributes:
        cluster: the resources the plan was made for.
        roles: role name -> its assignment, in the order the roles were given.
        cpus_per_device: Ray CPUs reserved with each device (the placement bundle size).
        reasons: why ``devices: auto`` roles were placed as they are, one line each (empty when no
            role is auto).
    """

    cluster: ClusterResources
    roles: dict[str, RoleAssignment]
    cpus_per_device: float
    reasons: list[str] = field(default_factory=list)

    def used_devices(self) -> list[int]:
        """Sorted device ids that at least one role uses."""
        return sorted({d for a in self.roles.values() for d in a.devices})

    def roles_on(self, device_id: int) -> list[str]:
        """Roles whose workers run on ``device_id`` (several when colocated)."""
        return [name for name, a in self.roles.items() if device_id in a.devices]

    def device_groups(self) -> dict[tuple[int, ...], list[str]]:
        """Device lists -> the roles sharing them, e.g. {(0, 1): ['actor', 'rollout']}."""
        groups: dict[tuple[int, ...], list[str]] = {}
        for name, a in self.roles.items():
            if a.needs_device:
                groups.setdefault(tuple(a.devices), []).append(name)
        return groups

    def to_table(self) -> Table:
        """A rich table, one row per role."""
        table = Table(title=f"Device plan: {self.cluster.describe()}", title_justify="left")
        gpu = self.cluster.kind == "gpu"
        for header in ("role", "workers", "devices", "colocated with", "CPUs/worker"):
            table.add_column(header)
        if gpu:
            table.add_column("GPUs/worker")
        table.add_column("threads")
        for a in self.roles.values():
            row = [
                a.role,
                str(a.num_workers),
                format_ids(a.devices) if a.needs_device else "none (CPU)",
                (a.colocated_with or "-") + (" (same process)" if a.same_process else ""),
                f"{a.cpus_per_worker:g}",
            ]
            if gpu:
                row.append(f"{a.gpus_per_worker:g}" if a.needs_device else "-")
            row.append(str(a.threads))
            table.add_row(*row)
        table.caption = f"{self.cpus_per_device:g} CPUs reserved per {self.cluster.device_word}"
        return table

    def grid_lines(self) -> list[str]:
        """Text lines: which roles share which devices, and a device x role grid if it fits."""
        lines = [
            f"{_device_words(ids)} {format_ids(list(ids))}: {', '.join(names)}"
            + (" (time-shared)" if len(names) > 1 else "")
            for ids, names in self.device_groups().items()
        ]
        free = sorted(set(range(self.cluster.num_devices)) - set(self.used_devices()))
        if free:
            lines.append(f"{_device_words(free)} {format_ids(free)}: free")
        n = self.cluster.num_devices
        device_roles = [a for a in self.roles.values() if a.needs_device]
        if device_roles and n <= _GRID_MAX_DEVICES:
            name_width = max(len("device"), *(len(a.role) for a in device_roles))
            cell = max(2, len(str(n - 1)) + 1)
            lines.append("")
            lines.append("device".ljust(name_width) + "".join(str(d).rjust(cell) for d in range(n)))
            for a in device_roles:
                marks = "".join(("x" if d in a.devices else ".").rjust(cell) for d in range(n))
                lines.append(a.role.ljust(name_width) + marks)
        return lines

    def render(self, width: int = 100) -> str:
        """The plan as plain text (no colour codes): the table, the reasons of auto placements
        ("why: ..."), then the device groups and grid."""
        buffer = StringIO()
        console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
        console.print(self.to_table())
        for reason in self.reasons:
            console.print(f"why: {reason}", highlight=False, markup=False)
        for line in self.grid_lines():
            console.print(line, highlight=False, markup=False)
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-safe), e.g. for the run store and the dashboard."""
        return {
            "cluster": self.cluster.to_dict(),
            "cpus_per_device": self.cpus_per_device,
            "roles": {name: asdict(a) for name, a in self.roles.items()},
            "reasons": list(self.reasons),
            "device_groups": [
                {"devices": list(ids), "roles": names} for ids, names in self.device_groups().items()
            ],
        }


def build_device_plan(
    roles: dict[str, RolePlacement],
    cluster: ClusterResources,
    *,
    dp_batch_sizes: dict[str, int] | None = None,
    needs: dict[str, RoleNeeds] | None = None,
    prefer: Prefer = "auto",
    margin: float = MEMORY_MARGIN,
) -> DevicePlan:
    """Resolve and validate role placements on ``cluster``.

    Args:
        roles: role name -> placement, as written in the job.
        cluster: the cluster to plan for (``ClusterResources.from_ray/local/fake``).
        dp_batch_sizes: role -> a batch size that is split across the role's data-parallel
            workers; each must be divisible by the role's dp size.
        needs: role name -> memory needs, used to place ``devices: auto`` roles (a role missing
            here is placed without a memory check).
        prefer: how auto roles are placed: "auto", "colocate" or "disaggregate" (see
            ``roll.devices.auto``).
        margin: share of a device's memory auto placement may fill.

    Raises:
        DevicePlanError: listing every problem found, each with how to fix it.
    """
    roles, reasons = plan_auto(
        roles, needs or {}, cluster, prefer=prefer, dp_batch_sizes=dp_batch_sizes, margin=margin
    )
    problems = check_explicit_devices(roles, cluster)
    resolved, colocate_problems = resolve_colocation(roles)
    problems += colocate_problems
    problems += check_overlaps(roles)
    raise_if_problems(problems)

    share: dict[int, int] = {}  # device id -> number of roles on it
    for ids in resolved.values():
        for d in ids or []:
            share[d] = share.get(d, 0) + 1
    reserve = sum(
        (p.cpus_per_worker or DEFAULT_DEVICELESS_CPUS) * p.num_workers
        for p in roles.values()
        if p.devices is None
    )
    cpus_per_device = _cpus_per_device(cluster, len(share), reserve)
    cpus = _cpus_per_worker(roles, resolved, cpus_per_device)
    gpu = cluster.kind == "gpu"
    assignments: dict[str, RoleAssignment] = {}
    for name, placement in roles.items():
        ids = resolved[name]
        needs_device = ids is not None
        workers = len(ids) if needs_device else placement.num_workers
        derived_threads = cpus_per_device if needs_device else cpus[name]
        assignments[name] = RoleAssignment(
            role=name,
            devices=list(ids or []),
            colocated_with=placement.colocate_target,
            dp_size=workers,
            cpus_per_worker=cpus[name],
            gpus_per_worker=_floor(1.0 / share[ids[0]], 4) if (gpu and needs_device) else 0.0,
            threads=placement.threads or max(1, int(derived_threads)),
            needs_device=needs_device,
            same_process=isinstance(placement.devices, ColocateWith) and placement.devices.same_process,
        )
    raise_if_problems(check_batch_sizes(assignments, dp_batch_sizes or {}, cluster))
    return DevicePlan(cluster=cluster, roles=assignments, cpus_per_device=cpus_per_device, reasons=reasons)


def _cpus_per_device(cluster: ClusterResources, num_used: int, reserve: float) -> float:
    total = cluster.num_cpus
    if reserve > total + 1e-9:
        raise DevicePlanError(
            f"roles without devices reserve {reserve:g} CPUs but the cluster has {total:g}; lower "
            "their num_workers or cpus_per_worker, or add CPUs (cluster.num_cpus)"
        )
    per_device = total / cluster.num_devices
    if num_used:
        per_device = min(per_device, (total - reserve) / num_used)
    if cluster.kind == "gpu":  # a GPU's bundle must fit on its own node
        per_device = min(per_device, *(n.cpus / n.gpus for n in cluster.nodes if n.gpus))
    cpus = _floor(per_device, 2)
    if num_used and cpus < 0.01:
        raise DevicePlanError(
            f"the cluster's {total:g} CPUs leave less than 0.01 CPU per device for {num_used} "
            f"device{'s' if num_used > 1 else ''} after reserving {reserve:g} CPUs for roles "
            "without devices; add CPUs, use fewer devices, or lower cpus_per_worker of the "
            "CPU-only roles"
        )
    return cpus


def _cpus_per_worker(
    roles: dict[str, RolePlacement],
    resolved: dict[str, list[int] | None],
    cpus_per_device: float,
) -> dict[str, float]:
    """Each role's Ray CPUs per worker: explicit, or the device share split among its sharers."""
    cpus: dict[str, float] = {}
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, ids in resolved.items():
        if ids is None:
            cpus[name] = roles[name].cpus_per_worker or DEFAULT_DEVICELESS_CPUS
        else:
            groups.setdefault(tuple(ids), []).append(name)
    for names in groups.values():
        fixed = {n: roles[n].cpus_per_worker for n in names if roles[n].cpus_per_worker}
        left = cpus_per_device - sum(fixed.values())
        free = [n for n in names if n not in fixed]
        if left < -1e-9 or (free and left < 0.0001 * len(free)):
            raise DevicePlanError(
                f"roles {', '.join(repr(n) for n in names)} share devices with {cpus_per_device:g} "
                f"CPUs each, but cpus_per_worker asks for {sum(fixed.values()):g}"
                + (f" and leaves nothing for {', '.join(repr(n) for n in free)}" if free else "")
                + "; lower cpus_per_worker or remove it to split the CPUs evenly"
            )
        cpus.update(fixed)
        cpus.update({n: _floor(left / len(free), 4) for n in free})
    return cpus


def _floor(value: float, digits: int) -> float:
    """Round down to ``digits`` decimals (Ray resource amounts must not exceed what is there)."""
    scale = 10**digits
    return round(math.floor(value * scale + 1e-9) / scale, digits)


def _device_words(ids: Any) -> str:
    return "device" if len(ids) == 1 else "devices"
