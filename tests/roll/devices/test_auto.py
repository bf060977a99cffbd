"""devices: auto on fake clusters: colocate, disaggregate, time-share, mix with explicit roles, fail."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from roll.devices import (
    ClusterConfig,
    ClusterResources,
    ColocateWith,
    RoleNeeds,
    RolePlacement,
    build_device_plan,
    kv_cache_bytes,
    plan_auto,
)
from roll.errors import DevicePlanError

GB = 10**9
GIB = 2**30
AUTO = RolePlacement(devices="auto")

CPU_1 = ClusterResources.fake(num_nodes=1, cpus_per_node=2)  # 2 CPU slots, 16 GiB host memory
GPU_8 = ClusterResources.fake(num_nodes=1, cpus_per_node=16, gpus_per_node=8, gpu_memory_bytes=80 * GB)
GPU_16 = ClusterResources.fake(num_nodes=2, cpus_per_node=16, gpus_per_node=8, gpu_memory_bytes=80 * GB)
GPU_1_SMALL = ClusterResources.fake(num_nodes=1, cpus_per_node=4, gpus_per_node=1, gpu_memory_bytes=8 * GB)
GPU_1_BIG = ClusterResources.fake(num_nodes=1, cpus_per_node=4, gpus_per_node=1, gpu_memory_bytes=80 * GB)

# 80e9 bytes = 74.5 GiB a GPU; at the 0.85 margin 63.3 GiB (68e9 bytes) is usable.
USABLE_80 = int(80 * GB * 0.85)


def rlvr_roles(**overrides: RolePlacement) -> dict[str, RolePlacement]:
    return {"actor": AUTO, "rollout": AUTO, "reference": AUTO, "reward": AUTO, **overrides}


def needs_for(n_params: int, dtype_bytes: int, *, zero: int = 0, kv: int = 0, act: int = 0) -> dict:
    """RLVR roles of one model: a trained actor, a rollout with a KV cache, a frozen reference."""
    return {
        "actor": RoleNeeds("actor", "train", n_params, dtype_bytes, zero_stage=zero, activation_bytes=act),
        "rollout": RoleNeeds("rollout", "infer", n_params, dtype_bytes, kv_cache_bytes=kv),
        "reference": RoleNeeds("reference", "frozen", n_params, dtype_bytes),
        "reward": RoleNeeds("reward", "cpu", 0, 4),
    }


# SmolLM2-135M in fp32 with 128 sequences of 512 tokens:
# actor 16 B/param x 134.5M = 2.15e9; reference 0.54e9; rollout 0.54e9 + KV 46,080 B/token x 65,536
# tokens = 3.02e9 over the dp size. Far below one GPU.
SMALL = needs_for(134_515_008, 4, kv=kv_cache_bytes(30, 3, 64, 4, 128 * 512))

# A 7B model in bf16 with a long rollout (512 sequences of 4096 tokens):
# actor ZeRO-1: weights 14e9 + grads 14e9 + optimizer 12 B x 7e9 = 84e9 / dp, + 8e9 activations;
# rollout: weights 14e9 + KV (2 x 32 x 8 x 128 x 2 = 131,072 B/token x 2,097,152 tokens = 274.9e9) / dp;
# reference: 14e9.
LARGE = needs_for(7 * GB, 2, zero=1, kv=kv_cache_bytes(32, 8, 128, 2, 512 * 4096), act=8 * GB)
BATCH = {"actor": 512, "rollout": 512, "reference": 512}


def test_spec_accepts_auto_and_memory_hint():
    placement = RolePlacement.model_validate({"devices": "auto", "memory_gb": 30})
    assert placement.is_auto and placement.memory_gb == 30
    assert not RolePlacement(devices=[0]).is_auto
    with pytest.raises(ValidationError):
        RolePlacement.model_validate({"devices": "automatic"})
    with pytest.raises(ValidationError, match="one worker per device"):
        RolePlacement(devices="auto", num_workers=2)
    with pytest.raises(ValidationError):
        RolePlacement(devices="auto", memory_gb=0)
    assert ClusterConfig.model_fields["gpu_memory_gb"].description
    local = ClusterResources.local(ClusterConfig(num_cpus=2, num_gpus=4, gpu_memory_gb=80))
    assert local.gpu_memory_bytes == 80 * GIB


def test_cpu_cluster_colocates_on_one_slot():
    plan = build_device_plan(rlvr_roles(), CPU_1, needs=SMALL)
    assert plan.device_groups() == {(0,): ["actor", "rollout", "reference"]}
    assert plan.roles["actor"].devices == [0] and plan.roles["actor"].colocated_with is None
    assert plan.roles["rollout"].colocated_with == "actor"
    assert not plan.roles["reward"].needs_device
    text = plan.render(width=200)
    assert "why: CPU slots share host memory" in text and "offload frees nothing on CPU" in text
    assert "why: reward: kind cpu, runs without a device" in text
    assert plan.to_dict()["reasons"] == plan.reasons
    json.dumps(plan.to_dict())


def test_cpu_cluster_rejects_a_gpu_only_engine():
    needs = {**SMALL, "rollout": RoleNeeds("rollout", "infer", 10**6, 2, needs_gpu=True)}
    with pytest.raises(DevicePlanError, match="role 'rollout' needs a GPU .* the cluster has none"):
        build_device_plan(rlvr_roles(), CPU_1, needs=needs)


def test_small_model_on_8_gpus_is_colocated_with_actor_dp_8():
    plan = build_device_plan(rlvr_roles(), GPU_8, needs=SMALL, dp_batch_sizes=BATCH)
    assert plan.roles["actor"].devices == list(range(8)) and plan.roles["actor"].dp_size == 8
    assert plan.device_groups() == {tuple(range(8)): ["actor", "rollout", "reference"]}
    assert plan.roles["reference"].colocated_with == "actor"
    assert plan.roles["actor"].gpus_per_worker == 0.3333
    assert "all device roles fit on one GPU at once, so they are colocated" in plan.reasons
    assert any(r.startswith("GPUs 0-7: actor, rollout, reference, data-parallel 8") for r in plan.reasons)


def test_large_actor_and_long_rollout_on_2x8_are_disaggregated():
    # Together on 16 GPUs: actor 14 + 14 + 84/16 + 8 = 41.25e9, rollout 14 + 274.9/16 = 31.2e9,
    # reference 14e9 -> 86.4e9 > 68e9 usable: not colocated with everything loaded.
    # Rollout alone: 14 + 274.9/k <= 68 needs k >= 5.1, and k divides 512 -> 8 GPUs (48.4e9 each).
    # Actor on the other 8: 14 + 14 + 84/8 + 8 = 46.5e9, + reference 14e9 = 60.5e9 <= 68e9.
    plan = build_device_plan(rlvr_roles(), GPU_16, needs=LARGE, dp_batch_sizes=BATCH)
    assert plan.roles["actor"].devices == list(range(8))
    assert plan.roles["rollout"].devices == list(range(8, 16))
    assert plan.roles["reference"].colocated_with == "actor"
    assert plan.roles["rollout"].colocated_with is None and plan.roles["rollout"].gpus_per_worker == 1.0
    reasons = "\n".join(plan.reasons)
    assert "not colocated with all loaded at once: 'actor', 'rollout', 'reference' need 80.5 GiB" in reasons
    assert "'rollout' gets its own GPUs, sized by its weights and KV cache; 'actor' gets 8 GPUs" in reasons
    assert "GPUs 8-15: rollout, data-parallel 8; 45.0 GiB per GPU, within the 63.3 GiB usable" in reasons
    assert "rollout: ~45.0 GiB per GPU (weights 13.0 + KV cache 32.0, KV cache split over 8 GPUs)" in reasons
    assert "actor: ~43.3 GiB per GPU (weights 13.0 + grads 13.0 + Adam 6.5 + fp32 master 3.3" in reasons
    assert "why: 'rollout' gets its own GPUs" in plan.render(width=200)


def test_prefer_colocate_time_shares_what_does_not_fit_at_once():
    roles, reasons = plan_auto(rlvr_roles(), LARGE, GPU_16, prefer="colocate", dp_batch_sizes=BATCH)
    assert roles["actor"].devices == list(range(16))
    assert roles["rollout"].devices == ColocateWith(colocate_with="actor")
    assert "prefer: colocate" in reasons
    shared = "time-share with offload: one role loaded at a time, and the largest ('actor', 38.4 GiB)"
    assert any(shared in r for r in reasons)


def test_offload_when_roles_fit_only_one_at_a_time_on_one_gpu():
    # One 80 GB GPU (68e9 usable). 1.5B bf16: actor 16 B x 1.5e9 = 24e9, reference 3e9,
    # rollout 3e9 + 40e9 KV = 43e9; sum 70e9 > 68e9, largest 43e9 fits. One GPU cannot be split.
    needs = needs_for(1_500_000_000, 2, kv=40 * GB)
    plan = build_device_plan(rlvr_roles(), GPU_1_BIG, needs=needs)
    assert plan.device_groups() == {(0,): ["actor", "rollout", "reference"]}
    reasons = "\n".join(plan.reasons)
    assert "not colocated with all loaded at once" in reasons
    assert "not disaggregated: disaggregating needs 2 free GPUs, the cluster has 1" in reasons
    assert "the largest ('rollout', 40.0 GiB) fits" in reasons


def test_prefer_disaggregate_splits_even_a_small_model():
    # Rollout fits on 1 GPU; the actor then takes the most of the other 7 that divides 128 (4), and
    # the rollout takes what the actor leaves (4).
    batch = {"actor": 128, "rollout": 128, "reference": 128}
    plan = build_device_plan(rlvr_roles(), GPU_8, needs=SMALL, dp_batch_sizes=batch, prefer="disaggregate")
    assert plan.device_groups() == {(0, 1, 2, 3): ["actor", "reference"], (4, 5, 6, 7): ["rollout"]}


def test_too_small_gpu_names_the_role_the_need_and_the_shortfall():
    # 7B bf16, ZeRO-0 on one 8 GB GPU (7.45 GiB, 6.3 GiB usable):
    # weights 14e9 (13.0 GiB) + grads 14e9 (13.0) + Adam 56e9 (52.2) + master 28e9 (26.1) = 112e9
    # = 104.3 GiB, short by 104.3 - 6.3 = 98.0 GiB.
    needs = {"actor": RoleNeeds("actor", "train", 7 * GB, 2)}
    with pytest.raises(DevicePlanError) as info:
        build_device_plan({"actor": AUTO}, GPU_1_SMALL, needs=needs)
    message = str(info.value)
    assert message == (
        "role 'actor' needs ~104.3 GiB per GPU (weights 13.0 + grads 13.0 + Adam 52.2 + fp32 master "
        "26.1, ZeRO-0 over 1 GPU); each GPU has 7.5 GiB (6.3 GiB usable at the 85% margin), ~98.0 GiB "
        "short: use more GPUs with zero_stage 3 (it would fit on ~17 such GPUs), LoRA, or a smaller "
        "model"
    )
    # With every RLVR role, each one that cannot fit is reported.
    with pytest.raises(DevicePlanError) as info:
        build_device_plan(rlvr_roles(), GPU_1_SMALL, needs=LARGE)
    message = str(info.value)
    assert message.startswith("the device plan has 3 problems")
    assert "role 'rollout' needs ~269.0 GiB per GPU" in message and "shrink the KV cache" in message
    assert "role 'reference' needs ~13.0 GiB per GPU (weights 13.0)" in message


def test_memory_gb_overrides_the_estimate():
    roles = rlvr_roles(rollout=RolePlacement(devices="auto", memory_gb=70))
    with pytest.raises(DevicePlanError, match=r"role 'rollout' needs ~70.0 GiB per GPU \(memory_gb set\).*"):
        build_device_plan(roles, GPU_8, needs=SMALL)
    # 40 GiB + the small actor and reference fit at once: colocated.
    roles = rlvr_roles(rollout=RolePlacement(devices="auto", memory_gb=40))
    plan = build_device_plan(roles, GPU_8, needs=SMALL)
    assert plan.roles["rollout"].colocated_with == "actor"
    assert "rollout: ~40.0 GiB per GPU (memory_gb set)" in plan.reasons


def test_auto_avoids_explicit_ids_and_joins_its_own_side():
    # actor pinned to 0-3: the reference (train side) colocates with it, the rollout takes 4-7.
    roles = rlvr_roles(actor=RolePlacement(devices=[0, 1, 2, 3]))
    plan = build_device_plan(roles, GPU_8, needs=SMALL, dp_batch_sizes=BATCH)
    assert plan.device_groups() == {(0, 1, 2, 3): ["actor", "reference"], (4, 5, 6, 7): ["rollout"]}
    assert "'reference' colocated with 'actor' (explicit GPUs 0-3)" in plan.reasons
    assert "'rollout' takes free GPUs 4-7; explicit roles hold GPUs 0-3" in plan.reasons


def test_auto_actor_next_to_an_explicit_rollout():
    # rollout pinned to 0-1: the actor takes the most free GPUs that divide 512 (4 of 2-7).
    roles = rlvr_roles(rollout=RolePlacement(devices=[0, 1]))
    plan = build_device_plan(roles, GPU_8, needs=SMALL, dp_batch_sizes=BATCH)
    assert plan.roles["actor"].devices == [2, 3, 4, 5]
    assert plan.roles["reference"].colocated_with == "actor"
    assert not set(plan.roles["actor"].devices) & {0, 1}
    assert "devices 6-7: free" in plan.render(width=200)


def test_auto_colocates_with_an_explicit_role_when_no_device_is_free():
    roles = rlvr_roles(actor=RolePlacement(devices=list(range(8))))
    plan = build_device_plan(roles, GPU_8, needs=SMALL)
    assert plan.device_groups() == {tuple(range(8)): ["actor", "rollout", "reference"]}
    assert "not on free GPUs: no free GPU" in plan.reasons
    assert any(r.startswith("GPUs 0-7: actor, rollout, reference, data-parallel 8;") for r in plan.reasons)


def test_followers_of_an_auto_role_move_with_it():
    colocated = RolePlacement(devices=ColocateWith(colocate_with="actor"))
    roles = {"actor": AUTO, "rollout": colocated, "reference": colocated, "reward": RolePlacement()}
    plan = build_device_plan(roles, GPU_8, needs=SMALL, dp_batch_sizes=BATCH)
    assert plan.device_groups() == {tuple(range(8)): ["actor", "rollout", "reference"]}
    assert any("actor, rollout, reference, data-parallel 8" in r for r in plan.reasons)


def test_device_count_divides_the_batch():
    cluster = ClusterResources.fake(cpus_per_node=6, gpus_per_node=6, gpu_memory_bytes=80 * GB)
    plan = build_device_plan(rlvr_roles(), cluster, needs=SMALL, dp_batch_sizes={"actor": 8})
    assert plan.roles["actor"].devices == [0, 1, 2, 3]  # 6 and 5 do not divide 8


def test_unknown_memory_and_missing_needs_still_plan():
    cluster = ClusterResources.fake(cpus_per_node=4, gpus_per_node=4)  # no GPU memory given
    plan = build_device_plan({"actor": AUTO, "rollout": AUTO}, cluster)
    assert plan.roles["actor"].devices == [0, 1, 2, 3]
    assert plan.reasons[0] == (
        "GPU memory is unknown (set cluster.gpu_memory_gb), so auto roles are placed without a memory check"
    )
    assert "actor: no memory estimate given (assumed to fit)" in plan.reasons


def test_plans_without_auto_are_unchanged():
    roles = {"actor": RolePlacement(devices=[0]), "reward": RolePlacement()}
    placed, reasons = plan_auto(roles, {}, GPU_8)
    assert placed == roles and reasons == []
    assert build_device_plan(roles, GPU_8).reasons == []
    assert "why:" not in build_device_plan(roles, GPU_8).render()


def test_cpu_cluster_disaggregates_on_request_and_checks_host_memory():
    plan = build_device_plan(rlvr_roles(), CPU_1, needs=SMALL, prefer="disaggregate")
    assert plan.device_groups() == {(0,): ["actor", "reference"], (1,): ["rollout"]}
    # 7B bf16 on a 16 GiB host (13.6 GiB usable): the actor alone needs 104.3 GiB + activations.
    with pytest.raises(DevicePlanError) as info:
        build_device_plan({"actor": AUTO}, CPU_1, needs={"actor": LARGE["actor"]})
    message = str(info.value)
    assert message.startswith("role 'actor' needs ~111.8 GiB per CPU slot")
    assert "the smallest node has 16.0 GiB (13.6 GiB usable at the 85% margin)" in message
    assert message.endswith("use a machine with more memory, bf16 weights, or a smaller model")
