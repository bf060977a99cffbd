"""Device planner on fake clusters: resolution, derived values, rendering and error messages."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from roll.devices import (
    ClusterConfig,
    ClusterResources,
    ColocateWith,
    RolePlacement,
    build_device_plan,
    format_ids,
)
from roll.errors import DevicePlanError


def on(*ids: int) -> RolePlacement:
    return RolePlacement(devices=list(ids))


def colocated(target: str) -> RolePlacement:
    return RolePlacement(devices=ColocateWith(colocate_with=target))


def plan_error(roles: dict[str, RolePlacement], cluster: ClusterResources, **kwargs) -> str:
    with pytest.raises(DevicePlanError) as info:
        build_device_plan(roles, cluster, **kwargs)
    return str(info.value)


GPU4 = ClusterResources.fake(num_nodes=1, cpus_per_node=2, gpus_per_node=4)


def test_cpu_slots_colocated_roles_and_cpu_only_reward():
    cluster = ClusterResources.fake(cpus_per_node=2, cpu_slots=2)
    roles = {
        "actor": on(0),
        "rollout": RolePlacement.model_validate({"devices": {"colocate_with": "actor"}}),
        "reference": colocated("actor"),
        "reward": RolePlacement(num_workers=2),
    }
    plan = build_device_plan(roles, cluster)

    assert cluster.kind == "cpu" and cluster.num_devices == 2
    assert plan.device_groups() == {(0,): ["actor", "rollout", "reference"]}
    assert plan.roles["rollout"].devices == [0] and plan.roles["rollout"].colocated_with == "actor"
    reward = plan.roles["reward"]
    assert not reward.needs_device and reward.devices == [] and reward.num_workers == 2
    assert reward.cpus_per_worker == 0.1
    # 2 CPUs over 2 slots -> 1 per slot (slot 1 is free, so the reward's 0.2 fits), split by 3.
    assert plan.cpus_per_device == 1.0
    assert plan.roles["actor"].cpus_per_worker == 0.3333
    assert plan.roles["actor"].gpus_per_worker == 0.0
    assert all(plan.roles[r].threads == 1 for r in roles)
    assert plan.roles_on(0) == ["actor", "rollout", "reference"]

    text = plan.render()
    for role in roles:
        assert role in text
    assert "device 0: actor, rollout, reference (time-shared)" in text
    assert "device 1: free" in text
    assert "\x1b[" not in text  # plain text, no colour codes
    json.dumps(plan.to_dict())  # JSON-safe


def test_gpu_disaggregated_roles():
    plan = build_device_plan({"actor": on(0, 1), "rollout": on(2, 3)}, GPU4)
    assert plan.device_groups() == {(0, 1): ["actor"], (2, 3): ["rollout"]}
    assert plan.cpus_per_device == 0.5
    for name in ("actor", "rollout"):
        a = plan.roles[name]
        assert a.dp_size == 2 and a.gpus_per_worker == 1.0 and a.cpus_per_worker == 0.5
        assert a.colocated_with is None and a.threads == 1
    text = plan.render()
    assert "GPUs/worker" in text and "devices 0-1: actor" in text and "devices 2-3: rollout" in text
    assert plan.to_dict()["device_groups"] == [
        {"devices": [0, 1], "roles": ["actor"]},
        {"devices": [2, 3], "roles": ["rollout"]},
    ]


def test_colocated_gpu_shares_split_and_chains_resolve():
    cluster = ClusterResources.fake(num_nodes=2, cpus_per_node=8, gpus_per_node=2)
    roles = {
        "actor": on(0, 1, 2, 3),
        "rollout": colocated("actor"),
        "reference": colocated("rollout"),
    }
    plan = build_device_plan(roles, cluster, dp_batch_sizes={"actor": 8, "reference": 4})
    assert plan.roles["reference"].devices == [0, 1, 2, 3]
    assert plan.roles["reference"].colocated_with == "rollout"
    assert plan.cpus_per_device == 4.0
    assert plan.roles["actor"].gpus_per_worker == 0.3333
    assert plan.roles["actor"].cpus_per_worker == 1.3333
    assert plan.roles["actor"].threads == 4  # time-shared: each may use the whole CPU share


def test_cpu_roles_lower_the_device_share_when_every_device_is_used():
    cluster = ClusterResources.fake(cpus_per_node=2, cpu_slots=2)
    roles = {"actor": on(0), "critic": on(1), "reward": RolePlacement(num_workers=2)}
    plan = build_device_plan(roles, cluster)
    # 2 CPUs less 0.2 for the reward workers, over 2 used slots.
    assert plan.cpus_per_device == 0.9
    assert plan.roles["critic"].cpus_per_worker == 0.9 and plan.roles["critic"].threads == 1


def test_explicit_cpus_and_threads_are_kept():
    roles = {
        "actor": RolePlacement(devices=[0], cpus_per_worker=0.4, threads=2),
        "rollout": colocated("actor"),
    }
    plan = build_device_plan(roles, GPU4)
    assert plan.roles["actor"].cpus_per_worker == 0.4 and plan.roles["actor"].threads == 2
    assert plan.roles["rollout"].cpus_per_worker == pytest.approx(0.1)


def test_device_id_beyond_cluster():
    message = plan_error({"actor": on(0), "rollout": on(5)}, GPU4)
    assert "role 'rollout': device id 5 is beyond the cluster (4 GPUs: ids 0-3)" in message
    assert "ids below 4" in message and "{colocate_with: actor}" in message


def test_overlap_without_colocation():
    message = plan_error({"actor": on(0, 1), "reference": on(1, 2)}, GPU4)
    assert "roles 'actor' and 'reference' both list device 1 without being colocated" in message
    assert "devices: {colocate_with: actor}" in message


def test_colocate_with_unknown_role():
    message = plan_error({"actor": on(0), "rollout": colocated("actr")}, GPU4)
    assert "role 'rollout': colocate_with 'actr' names no role of this job" in message
    assert "did you mean devices: {colocate_with: actor}?" in message


def test_colocate_cycle_reported_once():
    roles = {"a": colocated("b"), "b": colocated("a"), "c": colocated("a"), "d": on(0)}
    message = plan_error(roles, GPU4)
    assert message.count("cycle") == 1
    assert "('a' -> 'b' -> 'a')" in message and "own device list" in message


def test_colocate_with_role_without_devices():
    message = plan_error({"reward": RolePlacement(), "judge": colocated("reward")}, GPU4)
    assert "'reward' has no devices" in message


def test_dp_size_must_divide_batch():
    message = plan_error({"actor": on(0, 1, 2)}, GPU4, dp_batch_sizes={"actor": 8})
    assert "role 'actor': batch size 8 is not divisible by its data-parallel size 3" in message
    assert "multiple of 3 (e.g. 6 or 9)" in message and "(1, 2, 4)" in message


def test_dp_batch_for_unknown_role():
    assert "not in the plan" in plan_error({"actor": on(0)}, GPU4, dp_batch_sizes={"critic": 4})


def test_empty_duplicate_and_negative_ids_all_reported():
    message = plan_error({"actor": RolePlacement(devices=[]), "critic": on(1, 1, -2)}, GPU4)
    assert message.startswith("the device plan has 3 problems")
    assert "role 'actor': devices is an empty list" in message
    assert "role 'critic': device id 1 listed more than once" in message
    assert "device ids must be >= 0, got [-2]" in message


def test_cpu_roles_need_fewer_cpus_than_the_cluster():
    message = plan_error({"reward": RolePlacement(num_workers=30)}, GPU4)
    assert "reserve 3 CPUs but the cluster has 2" in message


def test_explicit_cpus_exceeding_device_share():
    roles = {
        "actor": RolePlacement(devices=[0], cpus_per_worker=2.0),
        "rollout": colocated("actor"),
    }
    assert "cpus_per_worker asks for 2" in plan_error(roles, GPU4)


def test_spec_forbids_unknown_keys_and_num_workers_with_devices():
    with pytest.raises(ValidationError):
        RolePlacement.model_validate({"devices": [0], "gpus": 1})
    with pytest.raises(ValidationError, match="one worker per device"):
        RolePlacement(devices=[0, 1], num_workers=2)
    with pytest.raises(ValidationError):
        ClusterConfig.model_validate({"num_gpu": 1})
    for name, field in RolePlacement.model_fields.items():
        assert field.description, name


def test_cluster_resources_local_and_config():
    cluster = ClusterResources.local(ClusterConfig(num_cpus=3, num_gpus=2))
    assert cluster.kind == "gpu" and cluster.num_devices == 2 and cluster.num_cpus == 3
    cpu = ClusterResources.local(ClusterConfig(num_cpus=4))
    assert cpu.kind == "cpu" and cpu.num_devices == 4
    assert ClusterResources.local(ClusterConfig(num_cpus=4, cpu_slots=2)).num_devices == 2
    assert ClusterConfig(num_cpus=2, num_gpus=4).ray_init_kwargs() == {"num_cpus": 2, "num_gpus": 4}
    with pytest.raises(DevicePlanError, match="from_ray"):
        ClusterResources.local(ClusterConfig(address="auto"))


def test_format_ids():
    assert format_ids([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert format_ids([3]) == "3" and format_ids([]) == "-"
