"""AutoDeviceMapping: turn ``devices: auto`` into device ids or colocate_with, and say why.

``plan_auto`` rewrites every role placed ``devices: auto`` from per-role memory estimates
(``roll.devices.estimate``) and the cluster, and returns human-readable reasons that ``roll plan``
prints under the table. ``build_device_plan`` calls it for auto roles and then validates the
result like a hand-written plan.

Policy. Roles fall on two *sides*: train (kinds train and frozen, e.g. actor and reference; a role
with no estimate counts here) and inference (kind infer, e.g. rollout). Kind cpu (e.g. reward) gets
no devices; a role that says ``colocate_with`` an auto role follows it and counts in its memory.

1. GPU cluster, both sides auto: if all roles fit on one GPU at once (the SUM of their per-GPU needs,
   each data-parallel over every free GPU, within ``margin`` × GPU memory), colocate them on all free
   GPUs; the train role holds the list, so the actor is data-parallel over all of them.
2. Else disaggregate: the rollout gets the fewest GPUs its weights + KV-cache share fit on, the actor
   the most of the rest (ZeRO shards over them), the reference colocated with the actor; then the
   rollout takes what the actor leaves.
3. Else colocate and time-share: colocated roles offload between stages, so a GPU holds one role at a
   time and the need is the LARGEST role's, not the sum. Reasons say which of sum/max was used.
4. Auto roles avoid ids explicit roles took. An auto role whose side has an explicit role (actor:
   [0, 1], reference: auto) colocates with it; a side with none takes free GPUs when it fits there,
   else colocates with the other side's explicit role; no free GPU left: it colocates.
5. CPU-only cluster: offload frees nothing, so every device role shares the fewest CPU slots (one,
   or an explicit role's) and the sum must fit in a node's host memory (when known).
6. Nothing fits: DevicePlanError naming each role too big for a device even over every free GPU,
   its need by part, the GPU size and the shortfall, and what to change.

``prefer="colocate"`` never splits two auto sides (and joins an explicit role rather than taking free
GPUs); ``prefer="disaggregate"`` tries separate devices first. Device counts divide the role's
``dp_batch_sizes``. GPU memory is the smallest GPU's, since a device id may land on any node; when it
is unknown (Ray does not report it: set cluster.gpu_memory_gb) memory is not checked, and the reasons
say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from roll.devices.checks import raise_if_problems
from roll.devices.estimate import MemoryEstimate, RoleNeeds, estimate_memory, format_bytes
from roll.devices.resources import ClusterResources, format_ids
from roll.devices.spec import ColocateWith, RolePlacement

Prefer = Literal["auto", "colocate", "disaggregate"]
Mode = Literal["resident", "offload"]

# Share of a device's memory the planner fills; the rest covers the CUDA context and fragmentation.
MEMORY_MARGIN = 0.85


@dataclass
class _Group:
    """Roles that will run on the same devices."""

    anchor: str  # role holding the device list (an explicit role when joined)
    members: list[str]  # every role on these devices, in the job's order
    size: int  # number of devices = dp size of every member
    mode: Mode  # resident: all fit at once; offload: time-shared, one role at a time
    ids: list[int]
    joined: bool = False  # the anchor is an explicit role the auto roles joined


@dataclass
class _Layout:
    name: str  # "colocated", "disaggregated", "own" (free devices), "joined" (an explicit role's)
    groups: list[_Group]
    lead: str  # why this layout, one sentence
    why_not: list[str] = field(default_factory=list)  # why the preferred layouts before it failed


# An option the planner may take: its name, how to build it, and whether every group must fit at once.
_Option = tuple[str, Callable[[], "_Layout | str"], bool]


def plan_auto(
    roles: dict[str, RolePlacement],
    needs: dict[str, RoleNeeds],
    cluster: ClusterResources,
    *,
    prefer: Prefer = "auto",
    dp_batch_sizes: dict[str, int] | None = None,
    margin: float = MEMORY_MARGIN,
) -> tuple[dict[str, RolePlacement], list[str]]:
    """Replace every ``devices: auto`` with device ids or ``colocate_with`` (policy: module docstring).

    Args:
        roles: role name -> placement as written; explicit and colocated roles are kept.
        needs: role name -> its memory needs; a role missing here is placed without a memory check.
        cluster: the cluster to plan for.
        prefer: "auto" (the policy above), "colocate" or "disaggregate".
        dp_batch_sizes: role -> batch split over its data-parallel workers (device counts divide it).
        margin: share of a device's memory the plan may fill.

    Returns:
        The placements with no ``auto`` left (same order), and the reasons, one line each.

    Raises:
        DevicePlanError: a role cannot fit, or needs a GPU on a CPU-only cluster.
    """
    if not any(p.is_auto for p in roles.values()):
        return dict(roles), []
    return _AutoPlanner(roles, needs, cluster, dp_batch_sizes or {}, margin).plan(prefer)


class _AutoPlanner:
    def __init__(
        self,
        roles: dict[str, RolePlacement],
        needs: dict[str, RoleNeeds],
        cluster: ClusterResources,
        batches: dict[str, int],
        margin: float,
    ) -> None:
        self.roles, self.needs, self.cluster, self.batches = roles, needs, cluster, batches
        self.margin = margin
        self.gpu = cluster.kind == "gpu"
        self.word = cluster.device_word
        n = cluster.num_devices
        taken = {d for p in roles.values() if isinstance(p.devices, list) for d in p.devices}
        self.taken = sorted(d for d in taken if 0 <= d < n)  # ids explicit roles hold
        self.free = [d for d in range(n) if d not in taken]  # shrinks as auto roles take devices
        self.joined: dict[str, list[str]] = {}  # explicit role -> auto roles placed with it so far
        self.explicit = [r for r, p in roles.items() if isinstance(p.devices, list) and p.devices]
        self.autos = [r for r, p in roles.items() if p.is_auto and self.kind(r) != "cpu"]
        self.size = self._device_memory()  # bytes of one device (host memory on CPU slots)
        self.cap = None if self.size is None else int(self.size * margin)  # bytes the plan may fill

    # ---- the decision ------------------------------------------------------------------------

    def plan(self, prefer: Prefer) -> tuple[dict[str, RolePlacement], list[str]]:
        self._check_gpu_needed()
        train = [a for a in self.autos if self.side(a) == "train"]
        infer = [a for a in self.autos if self.side(a) == "infer"]
        layouts: list[_Layout] = []
        if train and infer and not self._pinned("train") and not self._pinned("infer"):
            layouts.append(self._choose(self._both_options(train, infer, prefer), train + infer))
        else:
            # Sides with an explicit role first: they join it and leave the free devices to the other.
            sides = sorted([s for s in (train, infer) if s], key=lambda s: not self._pinned(self.side(s[0])))
            for autos in sides:
                layout = self._choose(self._side_options(autos, prefer), autos)
                for g in layout.groups:
                    if g.joined:
                        self.joined.setdefault(g.anchor, []).extend(autos)
                    else:
                        self.free = [d for d in self.free if d not in g.ids]
                layouts.append(layout)
        reasons = [self._capacity_line()]
        if prefer != "auto":
            reasons.append(f"prefer: {prefer}")
        reasons += [
            f"{r}: kind cpu, runs without a device"
            for r, p in self.roles.items()
            if p.is_auto and self.kind(r) == "cpu"
        ]
        for layout in layouts:
            reasons += self._explain(layout)
        return self._apply(layouts), reasons

    def _both_options(self, train: list[str], infer: list[str], prefer: Prefer) -> list[_Option]:
        colocated = ("colocated", lambda: self.colocate_all(train, infer), False)
        split = ("disaggregated", lambda: self.disaggregate(train, infer), False)
        join: list[_Option] = []
        if self.explicit:
            join.append(("with an explicit role", lambda: self.join(train + infer, self.explicit[0]), False))
        if not self.gpu:  # fewest CPU slots: an explicit role's, else one
            return ([split] if prefer == "disaggregate" else []) + join + [colocated]
        if prefer == "colocate":
            return [colocated, *join]
        if prefer == "disaggregate":
            return [split, colocated, *join]
        return [("colocated", colocated[1], True), split, colocated, *join]

    def _side_options(self, autos: list[str], prefer: Prefer) -> list[_Option]:
        side = self.side(autos[0])
        own = (f"on free {self.word}s", lambda: self.own(autos), False)
        pinned = self._pinned(side)
        if pinned is not None:
            return [("with an explicit role", lambda: self.join(autos, pinned), False), own]
        target = self._pinned("infer" if side == "train" else "train") or next(iter(self.explicit), None)
        join = [("with an explicit role", lambda: self.join(autos, target), False)] if target else []
        return [*join, own] if (prefer == "colocate" or not self.gpu) else [own, *join]

    def _choose(self, options: list[_Option], autos: list[str]) -> _Layout:
        why_not: list[str] = []
        for name, build, at_once in options:
            layout = build()
            if isinstance(layout, str):
                why_not.append(f"not {name}: {layout}")
            elif at_once and any(g.mode != "resident" for g in layout.groups):
                why_not.append(f"not {name} with all loaded at once: {self._sum_text(layout.groups[0])}")
            else:
                layout.why_not = list(dict.fromkeys(why_not))
                return layout
        self._fail(autos, list(dict.fromkeys(why_not)))
        raise AssertionError("unreachable")  # _fail raises

    def _apply(self, layouts: list[_Layout]) -> dict[str, RolePlacement]:
        group_of = {m: g for layout in layouts for g in layout.groups for m in g.members}
        placed: dict[str, RolePlacement] = {}
        for name, placement in self.roles.items():
            if not placement.is_auto:
                placed[name] = placement
                continue
            group = group_of.get(name)
            if group is None:  # kind cpu
                devices: list[int] | ColocateWith | None = None
            elif name == group.anchor:
                devices = list(group.ids)
            else:
                devices = ColocateWith(colocate_with=group.anchor)
            placed[name] = placement.model_copy(update={"devices": devices})
        return placed

    # ---- reasons and errors -----------------------------------------------------------------

    def _capacity_line(self) -> str:
        if self.cap is None:
            what = "GPU memory" if self.gpu else "host memory"
            fix = " (set cluster.gpu_memory_gb)" if self.gpu else ""
            return f"{what} is unknown{fix}, so auto roles are placed without a memory check"
        usable = f"{format_bytes(self.cap)} usable ({self.margin:.0%}"
        if self.gpu:
            return f"{self._size_text()}: {usable}; the rest covers the CUDA context and fragmentation)"
        return (
            f"CPU slots share host memory, {self._size_text()}: {usable}); offload frees nothing on "
            "CPU, so roles sharing a slot add up"
        )

    def _size_text(self) -> str:
        size = format_bytes(self.size or 0)
        if not self.gpu:
            return f"the smallest node has {size}"
        return f"each GPU has {size}" if self.cluster.gpu_memory_uniform else f"the smallest GPU has {size}"

    def _sum_text(self, group: _Group) -> str:
        total = sum(self.estimate(m, group.size).total for m in group.members)
        return (
            f"{_names(group.members)} need {format_bytes(total)} per {self.word} together over "
            f"{_count(group.size, self.word)}, more than the {format_bytes(self.cap or 0)} usable"
        )

    def _explain(self, layout: _Layout) -> list[str]:
        lines = [*layout.why_not, layout.lead]
        for g in layout.groups:
            totals = {m: self.estimate(m, g.size).total for m in g.members}
            where = f"{_where(g.ids, self.word)}: {', '.join(g.members)}, data-parallel {g.size}"
            if self.cap is None:
                fit = "memory not checked"
            elif g.mode == "resident":
                fit = f"{format_bytes(sum(totals.values()))} per {self.word}"
                if len(totals) > 1:
                    fit += f" with {'both' if len(totals) == 2 else f'all {len(totals)}'} loaded at once"
                fit += f", within the {format_bytes(self.cap)} usable"
            else:
                big = max(totals, key=totals.__getitem__)
                fit = (
                    f"{format_bytes(sum(totals.values()))} together is more than the "
                    f"{format_bytes(self.cap)} usable, so they time-share with offload: one role "
                    f"loaded at a time, and the largest ('{big}', {format_bytes(totals[big])}) fits"
                )
            lines.append(f"{where}; {fit}")
            lines += [f"{m}: {self.estimate(m, g.size).describe(self.word)}" for m in g.members]
        return lines

    def _check_gpu_needed(self) -> None:
        if self.gpu:
            return
        problems = [
            f"role '{r}' needs a GPU (its engine runs only on GPUs) but the cluster has none "
            f"({self.cluster.describe()}); run it on a cluster with GPUs (cluster.num_gpus or "
            "cluster.address), or choose an engine that runs on CPU"
            for r in self.members(self.autos)
            if r in self.needs and self.needs[r].needs_gpu
        ]
        raise_if_problems(problems)

    def _fail(self, autos: list[str], why_not: list[str]) -> None:
        explicit_sizes = [len(self.roles[r].devices) for r in self.explicit]  # type: ignore[arg-type]
        best = max([len(self.free), *explicit_sizes, 1]) if self.gpu else 1
        problems = []
        for role in self.members(autos):
            estimate = self.estimate(role, best)
            if self.cap is not None and estimate.total > self.cap:
                problems.append(self._too_big(role, estimate))
        if not problems:
            problems.append(
                f"{_names(self.members(autos))} cannot be placed on this cluster "
                f"({'; '.join(why_not)}); give them more {self.word}s, lower their memory needs "
                "(memory_gb, zero_stage, LoRA), or set their devices explicitly"
            )
        raise_if_problems(problems)

    def _too_big(self, role: str, estimate: MemoryEstimate) -> str:
        assert self.cap is not None
        short = format_bytes(estimate.total - self.cap)
        head = (
            f"role '{role}' needs {estimate.describe(self.word)}; {self._size_text()} "
            f"({format_bytes(self.cap)} usable at the {self.margin:.0%} margin), ~{short} short"
        )
        if "memory_gb" in estimate.parts:
            return f"{head}: lower its memory_gb, or use larger {self.word}s"
        if not self.gpu:
            return f"{head}: use a machine with more memory, bf16 weights, or a smaller model"
        if estimate.kind == "train":
            more = self._zero3_text(role)
            return f"{head}: use more GPUs with zero_stage 3{more}, LoRA, or a smaller model"
        if "KV cache" in estimate.parts:
            return (
                f"{head}: shrink the KV cache (fewer prompts per step, shorter completions), use "
                "larger GPUs, or a smaller model"
            )
        return f"{head}: use larger GPUs, bf16 weights, or a smaller model"

    def _zero3_text(self, role: str) -> str:
        """ " (it would fit on ~N such GPUs)" for a train role, from its ZeRO-3 estimate."""
        assert self.cap is not None
        one = estimate_memory(replace(self.needs[role], zero_stage=3), 1)
        fixed = one.parts.get("activations", 0)
        if self.cap <= fixed:
            return ""
        n = math.ceil((one.total - fixed) / (self.cap - fixed))
        return f" (it would fit on ~{n} such GPUs)"

    # ---- facts about roles ------------------------------------------------------------------

    def kind(self, role: str) -> str:
        return self.needs[role].kind if role in self.needs else "unknown"

    def side(self, role: str) -> str:
        return "infer" if self.kind(role) == "infer" else "train"

    def root(self, role: str) -> str | None:
        """The role whose placement decides ``role``'s devices; None for a broken chain."""
        seen = [role]
        while isinstance(self.roles[seen[-1]].devices, ColocateWith):
            target = self.roles[seen[-1]].colocate_target
            if target not in self.roles or target in seen:
                return None  # build_device_plan reports it
            seen.append(target)
        return seen[-1]

    def followers(self, root: str) -> list[str]:
        return [r for r in self.roles if r != root and not self.roles[r].is_auto and self.root(r) == root]

    def members(self, anchors: list[str]) -> list[str]:
        out = {m for a in anchors for m in [a, *self.followers(a)]}
        return [r for r in self.roles if r in out]  # in the job's order

    def estimate(self, role: str, n: int) -> MemoryEstimate:
        placement = self.roles[role]
        if placement.memory_gb is not None:
            kind = self.kind(role)
            return MemoryEstimate(role, kind, {"memory_gb": int(placement.memory_gb * 2**30)}, n)
        if role in self.needs:
            return estimate_memory(self.needs[role], n)
        return MemoryEstimate(role, "unknown", {}, n)

    def fit(self, members: list[str], n: int) -> Mode | None:
        """How ``members`` fit on ``n`` devices each: all at once, time-shared, or not at all."""
        if self.cap is None:
            return "resident"
        totals = [self.estimate(m, n).total for m in members]
        if sum(totals) <= self.cap:
            return "resident"
        # Offload moves weights to host memory: on CPU slots that frees nothing.
        if self.gpu and len(members) > 1 and max(totals) <= self.cap:
            return "offload"
        return None

    def divides(self, members: list[str], n: int) -> bool:
        return all(self.batches[m] % n == 0 for m in members if m in self.batches)

    def _device_memory(self) -> int | None:
        if self.gpu:
            return self.cluster.gpu_memory_bytes
        sizes = [node.memory_bytes for node in self.cluster.nodes]  # CPU slots share host memory
        return min(sizes) if sizes and all(sizes) else None

    # ---- candidate layouts ------------------------------------------------------------------

    def sized(self, anchors: list[str], limit: int, smallest: bool = False) -> tuple[int, Mode] | str:
        """Device count for a new group: the largest (or smallest) n <= limit that fits and divides."""
        members = self.members(anchors)
        if limit < 1:
            return f"no free {self.word}"
        counts = [n for n in range(1, limit + 1) if self.divides(members, n)]
        for n in counts if smallest else reversed(counts):
            mode = self.fit(members, n)
            if mode is not None:
                return n, mode
        return f"{_names(members)} do not fit on up to {_count(limit, self.word)}"

    def anchor(self, autos: list[str]) -> str:
        trains = [a for a in autos if self.kind(a) == "train"]
        return (trains or autos)[0]

    def new_group(self, autos: list[str], ids: list[int], mode: Mode) -> _Group:
        return _Group(self.anchor(autos), self.members(autos), len(ids), mode, ids)

    def own(self, autos: list[str]) -> _Layout | str:
        """``autos`` on free devices of their own (one slot on CPU)."""
        limit = len(self.free) if self.gpu else min(1, len(self.free))
        sized = self.sized(autos, limit)
        if isinstance(sized, str):
            return sized
        n, mode = sized
        group = self.new_group(autos, self.free[:n], mode)
        held = f"; explicit roles hold {_where(self.taken, self.word)}" if self.taken else ""
        verb = "take" if len(autos) > 1 else "takes"
        lead = f"{_names(autos)} {verb} free {_where(group.ids, self.word)}{held}"
        return _Layout("own", [group], lead)

    def join(self, autos: list[str], root: str) -> _Layout | str:
        """``autos`` colocated with the explicit role ``root``."""
        ids = list(self.roles[root].devices)  # type: ignore[arg-type]
        members = self.members([root, *self.joined.get(root, []), *autos])
        if not self.divides(members, len(ids)):
            return f"'{root}' has {_count(len(ids), self.word)}, which does not divide every batch"
        mode = self.fit(members, len(ids))
        if mode is None:
            return f"{_names(members)} do not fit on '{root}'s {_count(len(ids), self.word)}"
        lead = f"{_names(autos)} colocated with '{root}' (explicit {_where(ids, self.word)})"
        return _Layout("joined", [_Group(root, members, len(ids), mode, ids, joined=True)], lead)

    def colocate_all(self, train: list[str], infer: list[str]) -> _Layout | str:
        layout = self.own(train + infer)
        if isinstance(layout, str):
            return layout
        group = layout.groups[0]
        how = "at once" if group.mode == "resident" else "time-shared (offload between stages)"
        lead = f"all device roles fit on one {self.word} {how}, so they are colocated"
        return _Layout("colocated", layout.groups, lead)

    def disaggregate(self, train: list[str], infer: list[str]) -> _Layout | str:
        free = len(self.free)
        if free < 2:
            return f"disaggregating needs 2 free {self.word}s, the cluster has {free}"
        limit = free - 1 if self.gpu else 1
        if self.gpu and self.cap is None:  # no memory to size by: split the GPUs in half
            inf = self.sized(infer, max(1, free // 2))
        else:
            inf = self.sized(infer, limit, smallest=True)
        if isinstance(inf, str):
            return f"the inference side alone: {inf}"
        tr = self.sized(train, free - inf[0] if self.gpu else 1)
        if isinstance(tr, str):
            return f"with {_count(inf[0], self.word)} for the inference side, {tr}"
        inf = self.sized(infer, free - tr[0] if self.gpu else 1)  # take what the train side leaves
        assert not isinstance(inf, str)  # the smaller count fitted, so a larger one fits
        m, k = tr[0], inf[0]
        groups = [
            self.new_group(train, self.free[:m], tr[1]),
            self.new_group(infer, self.free[m : m + k], inf[1]),
        ]
        lead = (
            f"'{groups[1].anchor}' gets its own {self.word}s, sized by its weights and KV cache; "
            f"'{groups[0].anchor}' gets {_count(m, self.word)}"
        )
        return _Layout("disaggregated", groups, lead)

    def _pinned(self, side: str) -> str | None:
        """First explicit role whose group holds a role of ``side`` (train or infer kind)."""
        for root in self.explicit:
            if any(self.kind(m) == side for m in [root, *self.followers(root)]):
                return root
        return None


def _names(roles: list[str]) -> str:
    return ", ".join(f"'{r}'" for r in roles)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _where(ids: list[int], word: str) -> str:
    return f"{word}{'s' if len(ids) != 1 else ''} {format_ids(ids)}"
