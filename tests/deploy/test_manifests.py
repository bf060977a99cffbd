"""deploy/: the manifests parse and agree with themselves (image, command, resources), the shipped
RayJob is what `roll export kuberay` writes, and an exported RayJob asks for exactly the GPUs and
CPUs its device plan needs."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from roll.cli.main import app as cli_app
from roll.config import load_job
from roll.config.loader import load_job_data, parse_yaml_text
from roll.errors import ConfigError
from roll.jobs.kuberay import export_kuberay, plan_resources
from roll.jobs.local import plan_for

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGE = "ghcr.io/roll-project/roll:cuda"


def documents(text: str) -> list[dict]:
    return [doc for doc in YAML(typ="safe").load_all(io.StringIO(text)) if doc is not None]


def pod_specs(cluster_spec: dict) -> list[tuple[str, dict, dict]]:
    """(group, rayStartParams, container) for the head and every worker group."""
    groups = [("head", cluster_spec["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in cluster_spec.get("workerGroupSpecs", [])]
    return [(name, g["rayStartParams"], g["template"]["spec"]["containers"][0]) for name, g in groups]


def check_cluster_spec(cluster_spec: dict, image: str) -> dict[str, int]:
    """Ray's view of each pod (num-cpus/num-gpus) equals the pod's limits; returns totals."""
    totals = {"gpus": 0, "cpus": 0}
    for name, params, container in pod_specs(cluster_spec):
        assert container["image"] == image, name
        limits = container["resources"]["limits"]
        assert container["resources"]["requests"] == limits, name
        gpus = int(limits.get("nvidia.com/gpu", 0))
        assert int(params["num-gpus"]) == gpus, name
        assert int(params["num-cpus"]) == int(limits["cpu"]), name
        replicas = 1 if name == "head" else cluster_spec_group(cluster_spec, name)["replicas"]
        totals["gpus"] += gpus * replicas
        totals["cpus"] += int(limits["cpu"]) * replicas
    assert int(cluster_spec["headGroupSpec"]["rayStartParams"]["num-gpus"]) == 0  # no role on the head's GPU
    return totals


def cluster_spec_group(cluster_spec: dict, name: str) -> dict:
    return next(g for g in cluster_spec["workerGroupSpecs"] if g["groupName"] == name)


def test_every_deploy_yaml_parses_and_no_python_lives_there():
    yamls = sorted(DEPLOY.rglob("*.yaml"))
    assert {p.relative_to(DEPLOY).as_posix() for p in yamls} >= {
        "aws.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
    }
    for path in yamls:
        assert documents(path.read_text()), path
    assert not list(DEPLOY.rglob("*.py"))


def test_raycluster_has_a_gpu_worker_group_and_consistent_resources():
    (doc,) = documents((DEPLOY / "kuberay" / "raycluster.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    totals = check_cluster_spec(doc["spec"], IMAGE)
    gpu_group = cluster_spec_group(doc["spec"], "gpu-workers")
    assert totals["gpus"] == gpu_group["replicas"] * int(gpu_group["rayStartParams"]["num-gpus"]) > 0
    assert gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"]


def test_shipped_rayjob_is_the_export_of_the_quickstart_and_runs_roll(monkeypatch):
    monkeypatch.chdir(REPO)
    shipped = (DEPLOY / "kuberay" / "rayjob.yaml").read_text()
    # regenerate with:
    #   roll export kuberay configs/quickstart.yaml cluster.num_gpus=1 --out deploy/kuberay/rayjob.yaml
    assert shipped == export_kuberay(Path("configs/quickstart.yaml"), ["cluster.num_gpus=1"], image=IMAGE)
    config_map, rayjob = documents(shipped)
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["entrypoint"] == "roll run /etc/roll/job.yaml cluster.address=auto"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["volumes"] == [{"name": "job", "configMap": {"name": config_map["metadata"]["name"]}}]
    assert head["containers"][0]["volumeMounts"][0]["mountPath"] == "/etc/roll"
    job = load_job_data(parse_yaml_text(config_map["data"]["job.yaml"]))  # a valid roll job
    assert job.config.name == "quickstart" and job.config.cluster.address is None
    totals = check_cluster_spec(spec["rayClusterSpec"], IMAGE)
    assert totals["gpus"] == 1


@pytest.mark.parametrize(
    ("overrides", "gpus_per_pod", "pods", "gpus_each"),
    [
        (["cluster.num_gpus=4", "roles.actor.devices=[0, 1]", "roles.rollout.devices=[2]"], 8, 1, 3),
        (["cluster.num_gpus=4", "roles.actor.devices=[0, 1]", "roles.rollout.devices=[2]"], 2, 3, 1),
        (["cluster.num_gpus=8", "roles.actor.devices=[0, 1, 2, 3]", "roles.rollout.devices=[4, 5]"], 4, 2, 3),
    ],
)
def test_exported_gpus_and_cpus_match_the_plan(overrides, gpus_per_pod, pods, gpus_each, tmp_path):
    out = tmp_path / "rayjob.yaml"
    export_kuberay(
        REPO / "configs" / "quickstart.yaml", overrides, image="img:1", out=out, gpus_per_pod=gpus_per_pod
    )
    _, rayjob = documents(out.read_text())
    cluster_spec = rayjob["spec"]["rayClusterSpec"]
    totals = check_cluster_spec(cluster_spec, "img:1")
    plan = plan_for(load_job(REPO / "configs" / "quickstart.yaml", overrides))
    assert totals["gpus"] == len(plan.used_devices()) == pods * gpus_each
    group = cluster_spec_group(cluster_spec, "gpu-workers")
    assert group["replicas"] == pods and int(group["rayStartParams"]["num-gpus"]) == gpus_each
    assert int(group["rayStartParams"]["num-cpus"]) == math.ceil(plan.cpus_per_device * gpus_each)
    reward = plan.roles["reward"]
    head_cpus = int(cluster_spec["headGroupSpec"]["rayStartParams"]["num-cpus"])
    assert head_cpus == math.ceil(reward.cpus_per_worker * reward.dp_size) + 1


def test_cpu_job_exports_a_cpu_worker_group():
    loaded = load_job(REPO / "configs" / "quickstart.yaml")
    need = plan_resources(plan_for(loaded))
    assert need["total_gpus"] == 0 and need["replicas"] == 1 and need["worker_cpus"] >= 1
    _, rayjob = documents(export_kuberay(REPO / "configs" / "quickstart.yaml", [], image="img:cpu"))
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "cpu-workers" and group["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in group["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_export_of_a_bad_job_fails_like_validate(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "configs" / "quickstart.yaml").read_text().replace("steps: 250", "stepz: 250"))
    exported = CliRunner().invoke(cli_app, ["export", "kuberay", str(bad), "--out", str(tmp_path / "x.yaml")])
    validated = CliRunner().invoke(cli_app, ["validate", str(bad)])
    assert isinstance(exported.exception, ConfigError)
    assert str(exported.exception) == str(validated.exception) and "stepz" in str(exported.exception)
    assert not (tmp_path / "x.yaml").exists()


def test_cluster_launcher_config_names_the_same_image_and_a_gpu_node_type():
    (launcher,) = documents((DEPLOY / "aws.yaml").read_text())
    assert launcher["provider"]["type"] == "aws"
    assert launcher["docker"]["image"] == IMAGE
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types and types[launcher["head_node_type"]]["resources"]["GPU"] == 0
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types and all(t["max_workers"] >= t["min_workers"] for t in gpu_types)
    assert sum(t["max_workers"] for t in gpu_types) <= launcher["max_workers"]
    assert any("ray start --head" in c for c in launcher["head_start_ray_commands"])
    assert all("ray start --address" in c for c in launcher["worker_start_ray_commands"] if "start" in c)


def test_dockerfiles_pin_cpu_torch_first_and_install_the_gpu_extras():
    cpu = (DEPLOY / "Dockerfile.cpu").read_text()
    torch_at, roll_at = cpu.index("torch==2.13.0"), cpu.index('pip install ".')
    assert torch_at < roll_at and "whl/cpu" in cpu
    cuda = (DEPLOY / "Dockerfile.cuda").read_text()
    assert cuda.startswith("#") and "FROM nvidia/cuda:" in cuda
    assert 'pip install ".[vllm,deepspeed]"' in cuda
    for text in (cpu, cuda):
        assert "COPY roll ./roll" in text and "COPY pipelines ./pipelines" in text
