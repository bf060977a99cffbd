"""Validation of role placements, one check per function; each returns problem lines.

Every problem line names the role and says what to change. ``build_device_plan`` runs these,
collects all problems and raises them together (``raise_if_problems``), so a user fixes a job in
one go rather than one error per run.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from roll.devices.resources import ClusterResources, format_ids
from roll.devices.spec import RolePlacement
from roll.errors import DevicePlanError

if TYPE_CHECKING:
    from roll.devices.plan import RoleAssignment


def check_explicit_devices(roles: dict[str, RolePlacement], cluster: ClusterResources) -> list[str]:
    """Device lists: not empty, ids within the cluster, no id twice."""
    problems = []
    n = cluster.num_devices
    word = (
        f"{n} {cluster.device_word}{'s' if n != 1 else ''}: ids 0-{n - 1}"
        if n > 1
        else f"1 {cluster.device_word}: id 0"
    )
    for name, p in roles.items():
        if not isinstance(p.devices, list):
            continue
        if not p.devices:
            problems.append(
                f"role '{name}': devices is an empty list; list device ids (e.g. devices: [0]), "
                "colocate it (devices: {colocate_with: <role>}), or remove devices for a role that "
                "needs no device"
            )
        negative = [d for d in p.devices if d < 0]
        if negative:
            problems.append(f"role '{name}': device ids must be >= 0, got {negative}; use ids 0-{n - 1}")
        beyond = [d for d in p.devices if d >= n]
        if beyond:
            ids = ", ".join(map(str, beyond))
            problems.append(
                f"role '{name}': device id{'s' if len(beyond) > 1 else ''} {ids} "
                f"{'are' if len(beyond) > 1 else 'is'} beyond the cluster ({word}); set devices to "
                f"ids below {n}, or colocate it with another role: devices: "
                f"{{colocate_with: {_other_device_role(roles, name)}}}"
            )
        duplicates = sorted({d for d in p.devices if p.devices.count(d) > 1})
        if duplicates:
            problems.append(
                f"role '{name}': device id{'s' if len(duplicates) > 1 else ''} "
                f"{', '.join(map(str, duplicates))} listed more than once in {p.devices}; "
                "list each device once (a role runs one worker per device)"
            )
    return problems


def resolve_colocation(
    roles: dict[str, RolePlacement],
) -> tuple[dict[str, list[int] | None], list[str]]:
    """Role -> its device ids (following colocate_with), None for roles without devices."""
    resolved: dict[str, list[int] | None] = {}
    problems: list[str] = []
    with_devices = [n for n, p in roles.items() if isinstance(p.devices, list) and p.devices]
    example = with_devices[0] if with_devices else "<role>"
    for name, placement in roles.items():
        if placement.devices is None or isinstance(placement.devices, list):
            resolved[name] = placement.devices
            continue
        chain = [name]
        current = placement.colocate_target
        while True:
            if current not in roles:
                known = ", ".join(f"'{r}'" for r in roles if r != name) or "none"
                close = difflib.get_close_matches(current, list(roles), n=1)
                fix = (
                    f"did you mean devices: {{colocate_with: {close[0]}}}?"
                    if close
                    else f"fix the name, e.g. devices: {{colocate_with: {example}}}"
                )
                problems.append(
                    f"role '{chain[-1]}': colocate_with '{current}' names no role of this job "
                    f"(roles: {known}); {fix}"
                )
                break
            if current in chain:
                order = list(roles)
                # Report a cycle once: from the member given first in the job.
                if current == name and name == min(chain, key=order.index):
                    cycle = " -> ".join(f"'{r}'" for r in [*chain, current])
                    problems.append(
                        f"colocate_with forms a cycle ({cycle}); give one of these roles its own "
                        "device list, e.g. devices: [0], and colocate the others with it"
                    )
                break
            target = roles[current].devices
            if target is None:
                problems.append(
                    f"role '{chain[-1]}': colocate_with '{current}', but '{current}' has no "
                    f"devices (it runs on CPU only); give '{current}' devices, or colocate "
                    f"'{chain[-1]}' with a role that has devices, e.g. devices: "
                    f"{{colocate_with: {example}}}"
                )
                break
            if isinstance(target, list):
                resolved[name] = target
                break
            chain.append(current)
            current = target.colocate_with
        resolved.setdefault(name, [])  # unresolved: a problem was recorded and will be raised
    # Roles reached through the same broken link report it once.
    return resolved, list(dict.fromkeys(problems))


def check_overlaps(roles: dict[str, RolePlacement]) -> list[str]:
    """Explicit device lists of two roles must not overlap (sharing is said with colocate_with)."""
    problems = []
    explicit = [(n, p.devices) for n, p in roles.items() if isinstance(p.devices, list)]
    for i, (first, first_ids) in enumerate(explicit):
        for second, second_ids in explicit[i + 1 :]:
            shared = sorted(set(first_ids) & set(second_ids))
            if shared:
                problems.append(
                    f"roles '{first}' and '{second}' both list "
                    f"device{'s' if len(shared) > 1 else ''} {format_ids(shared)} without being "
                    f"colocated; to share devices set '{second}' to devices: "
                    f"{{colocate_with: {first}}}, or give the roles disjoint device lists"
                )
    return problems


def check_batch_sizes(
    assignments: dict[str, RoleAssignment], batch_sizes: dict[str, int], cluster: ClusterResources
) -> list[str]:
    """Each given batch size must split evenly over its role's data-parallel workers."""
    problems = []
    for name, batch in batch_sizes.items():
        if name not in assignments:
            problems.append(
                f"a batch size is given for role '{name}', which is not in the plan (roles: "
                f"{', '.join(assignments)}); remove it or add the role"
            )
            continue
        dp = assignments[name].dp_size
        if batch % dp == 0:
            continue
        lower, upper = (batch // dp) * dp, (batch // dp + 1) * dp
        sizes = f"{lower} or {upper}" if lower else f"{upper}"
        limit = cluster.num_devices if assignments[name].needs_device else batch
        counts = [k for k in range(1, min(batch, limit) + 1) if batch % k == 0]
        assignment = assignments[name]
        unit = "devices" if assignment.needs_device else "workers"
        where = format_ids(assignment.devices) if assignment.needs_device else str(dp)
        problems.append(
            f"role '{name}': batch size {batch} is not divisible by its data-parallel size {dp} "
            f"({unit} {where}); "
            f"set the batch size to a multiple of {dp} (e.g. {sizes}), or use a number of {unit} "
            f"that divides {batch} ({', '.join(map(str, counts))})"
        )
    return problems


def _other_device_role(roles: dict[str, RolePlacement], name: str) -> str:
    """A role other than ``name`` with a device list, to name in suggestions."""
    others = [r for r, p in roles.items() if r != name and isinstance(p.devices, list) and p.devices]
    return others[0] if others else "<role>"


def raise_if_problems(problems: list[str]) -> None:
    """Raise one DevicePlanError with every problem (one per line when several)."""
    if len(problems) == 1:
        raise DevicePlanError(problems[0])
    if problems:
        raise DevicePlanError(
            f"the device plan has {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)
        )
