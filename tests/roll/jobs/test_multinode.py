"""A job on a three-node Ray cluster on one machine (ray.cluster_utils.Cluster): a CPU-only head for
the driver and the reward worker, and two worker nodes with one fake GPU each. The device plan puts
the actor on GPU 0 and the rollout on GPU 1; each bundle needs a whole node's GPU, so Ray must place
them on different nodes, and the run (weights synced across nodes through the object store) must
still finish with its metrics in the run store.
"""

from __future__ import annotations

from pathlib import Path

import ray
from ray.cluster_utils import Cluster

import roll
from roll.config import load_job_data
from roll.jobs.local import run_job
from roll.jobs.runstore import RunStore

JOB = {
    "pipeline": "rlvr",
    "name": "multinode",
    "steps": 2,
    "model": {
        "source": "tiny",
        "tiny": {
            "arch": "qwen2",
            "hidden_size": 32,
            "num_layers": 1,
            "num_heads": 2,
            "num_kv_heads": 1,
            "intermediate_size": 64,
            "vocab": "digits",
        },
    },
    "data": {"name": "arithmetic", "arithmetic": {"max_operand": 4, "ops": ["+"], "template": "{a} + {b} ="}},
    "roles": {
        "actor": {"devices": [0], "threads": 1},
        "rollout": {"devices": [1], "threads": 1},
        "reward": {"num_workers": 1},
    },
    "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 3},
    "algo": {"name": "grpo", "kl_coef": 0.0},
    "checkpoint": {"save_final": False, "export_model": False},
    "tracking": {"tensorboard": False},
}


def test_roles_spread_over_two_nodes_and_the_job_finishes(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(roll.__file__).resolve().parents[1]))  # for the nodes
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False},
    )
    gpu_nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR")
        job = load_job_data(
            {**JOB, "output_dir": str(tmp_path / "run"), "cluster": {"address": cluster.address}}
        )
        result = run_job(job)

        with RunStore(tmp_path / "run" / "roll.sqlite") as store:
            run = store.get_run(result["run_id"])
            metrics = store.get_metrics(result["run_id"], keys=["reward/mean", "loss/policy"])
        assert run["status"] == "completed" and run["last_step"] == 2
        assert [step for step, _ in metrics["reward/mean"]] == [1, 2]
        assert [step for step, _ in metrics["loss/policy"]] == [1, 2]

        # where Ray ran each role (dead actors stay in the GCS actor table)
        node_of = {}
        for info in ray._private.state.actors().values():
            node_of.setdefault(info["ActorClassName"], set()).add(info["Address"]["NodeID"])
        gpu_node_ids = {node.node_id for node in gpu_nodes}
        actor_nodes, rollout_nodes = node_of["ActorWorker"], node_of["RolloutWorker"]
        assert len(actor_nodes) == len(rollout_nodes) == 1
        assert actor_nodes | rollout_nodes == gpu_node_ids  # one role on each GPU node
        assert node_of["RewardWorker"] == {cluster.head_node.node_id}  # no GPU: the head's CPU
    finally:
        ray.shutdown()
        cluster.shutdown()
