"""Real local Ray: a DevicePlan becomes one placement group and per-worker actor options.

Ray fakes 4 GPUs on this CPU box (ray.init(num_gpus=4)): actors placed by bundle get real GPU ids
from Ray (``ray.get_gpu_ids()``), fractional GPUs share an id. The CPU-slot plan runs on the same
Ray session — the plan is built for a CPU-only cluster of the same 2 CPUs, so its bundles ask for
CPUs only.
"""

from __future__ import annotations

import time

import pytest
import ray

from roll.devices import (
    ClusterResources,
    ColocateWith,
    PlacementManager,
    RoleNeeds,
    RolePlacement,
    build_device_plan,
    set_worker_threads,
)
from roll.errors import DevicePlanError


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@ray.remote
class Probe:
    def __init__(self, threads: int) -> None:
        set_worker_threads(threads)

    def info(self) -> dict:
        import torch

        return {"gpu_ids": ray.get_gpu_ids(), "threads": torch.get_num_threads()}


def start(placement: PlacementManager, role: str) -> list[dict]:
    threads = placement.plan.roles[role].threads
    actors = [Probe.options(**opts).remote(threads) for opts in placement.actor_options(role)]
    return actors


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def colocated(target: str) -> RolePlacement:
    return RolePlacement(devices=ColocateWith(colocate_with=target))


def test_gpu_plan_colocated_workers_share_gpu_ids(local_ray):
    cluster = ClusterResources.from_ray()
    assert cluster.kind == "gpu" and cluster.num_devices == 4 and cluster.num_cpus == 2
    roles = {
        "actor": RolePlacement(devices=[0, 1]),
        "rollout": colocated("actor"),
        "critic": RolePlacement(devices=[2]),
        "reward": RolePlacement(),
    }
    plan = build_device_plan(roles, cluster)
    with PlacementManager(plan, timeout_s=30) as placement:
        table = ray.util.placement_group_table(placement.placement_group)
        assert table["strategy"] == "PACK"
        assert list(table["bundles"].values()) == [{"CPU": 0.5, "GPU": 1.0}] * 3

        options = placement.actor_options("actor")
        assert [o["num_gpus"] for o in options] == [0.5, 0.5]
        assert [o["num_cpus"] for o in options] == [0.25, 0.25]
        assert [o["scheduling_strategy"].placement_group_bundle_index for o in options] == [0, 1]
        assert placement.actor_options("reward") == [{"num_cpus": 0.1, "num_gpus": 0}]

        workers = {role: start(placement, role) for role in roles}
        info = {role: ray.get([w.info.remote() for w in ws]) for role, ws in workers.items()}

        actor_ids = [i["gpu_ids"] for i in info["actor"]]
        assert [i["gpu_ids"] for i in info["rollout"]] == actor_ids  # same device, same GPU
        assert all(len(ids) == 1 for ids in actor_ids) and actor_ids[0] != actor_ids[1]
        critic_ids = info["critic"][0]["gpu_ids"]
        assert len(critic_ids) == 1 and critic_ids not in actor_ids
        assert info["reward"][0]["gpu_ids"] == []
        assert all(i["threads"] == 1 for ws in info.values() for i in ws)
        for actor in workers["reward"]:
            ray.kill(actor)
    assert placement.placement_group is None


def test_cpu_slot_plan_pins_colocated_workers_to_one_bundle(local_ray):
    cluster = ClusterResources.fake(cpus_per_node=2, cpu_slots=2)
    roles = {
        "actor": RolePlacement(devices=[0]),
        "rollout": colocated("actor"),
        "critic": RolePlacement(devices=[1], threads=2),
        "reward": RolePlacement(),
    }
    plan = build_device_plan(roles, cluster)
    assert plan.cpus_per_device == 0.95  # 2 CPUs less 0.1 for the reward, over 2 slots
    with PlacementManager(plan, timeout_s=30) as placement:
        pg_hex = placement.placement_group.id.hex()
        assert placement.bundles == [{"CPU": 0.95}, {"CPU": 0.95}]
        workers = {role: start(placement, role) for role in roles}
        info = {role: ray.get([w.info.remote() for w in ws]) for role, ws in workers.items()}
        assert all(i["gpu_ids"] == [] for ws in info.values() for i in ws)
        assert info["critic"][0]["threads"] == 2 and info["actor"][0]["threads"] == 1

        # actor and rollout (0.475 CPU each) filled bundle 0; the critic filled bundle 1.
        def bundles_full() -> bool:
            free = ray.available_resources()
            return all(free.get(f"CPU_group_{i}_{pg_hex}", 0.0) < 1e-6 for i in (0, 1))

        assert wait_for(bundles_full)
        for actor in workers["reward"]:
            ray.kill(actor)


def test_unplaceable_plan_says_what_is_missing(local_ray):
    plan = build_device_plan(
        {"actor": RolePlacement(devices=list(range(8)))},
        ClusterResources.fake(cpus_per_node=2, gpus_per_node=8),
    )
    placement = PlacementManager(plan)
    with pytest.raises(DevicePlanError) as info:
        placement.create(timeout_s=1)
    message = str(info.value)
    assert "could not be placed within 1s" in message
    assert "missing: 4 GPU;" in message
    assert "ClusterResources.from_ray()" in message
    assert placement.placement_group is None
    # The pending group was removed: the whole cluster is free again.
    assert wait_for(lambda: ray.available_resources().get("GPU", 0.0) == 4.0)


def test_plan_without_devices_needs_no_placement_group(local_ray):
    plan = build_device_plan({"reward": RolePlacement(num_workers=2)}, ClusterResources.from_ray())
    placement = PlacementManager(plan)
    assert placement.create() is None
    assert len(placement.actor_options("reward")) == 2
    with pytest.raises(DevicePlanError, match="not in the device plan"):
        placement.actor_options("actor")


def test_auto_plan_places_disaggregated_roles_on_their_own_gpus(local_ray):
    # 4 fake GPUs of 24 GiB (20.4 GiB = 21.9e9 bytes usable). Actor 0.5B fp32: 16 B/param = 8e9;
    # reference 2e9; rollout 2e9 + 48e9 KV / dp. All on 4 GPUs: 8 + 2 + 2 + 12 = 24e9, too much at
    # once, so the rollout gets the fewest GPUs it fits on (2 + 48/3 = 18e9 -> 3), the actor the 4th.
    cluster = ClusterResources.from_ray(gpu_memory_bytes=24 * 2**30)
    n = 500_000_000
    needs = {
        "actor": RoleNeeds("actor", "train", n, 4),
        "rollout": RoleNeeds("rollout", "infer", n, 4, kv_cache_bytes=48 * 10**9),
        "reference": RoleNeeds("reference", "frozen", n, 4),
        "reward": RoleNeeds("reward", "cpu", 0, 4),
    }
    auto = RolePlacement(devices="auto")
    roles = {"actor": auto, "rollout": auto, "reference": auto, "reward": auto}
    plan = build_device_plan(roles, cluster, needs=needs)
    assert plan.device_groups() == {(0,): ["actor", "reference"], (1, 2, 3): ["rollout"]}
    with PlacementManager(plan, timeout_s=30) as placement:
        workers = {role: start(placement, role) for role in roles}
        info = {role: ray.get([w.info.remote() for w in ws]) for role, ws in workers.items()}
        actor_ids = info["actor"][0]["gpu_ids"]
        assert info["reference"][0]["gpu_ids"] == actor_ids
        rollout_ids = [i["gpu_ids"][0] for i in info["rollout"]]
        assert len(set(rollout_ids)) == 3 and actor_ids[0] not in rollout_ids
        for actor in workers["reward"]:
            ray.kill(actor)
