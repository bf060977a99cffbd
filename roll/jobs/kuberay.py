"""``roll export kuberay JOB.yaml``: a KubeRay RayJob manifest sized by the job's device plan.

The manifest is two YAML documents: a ConfigMap holding the resolved job, and a RayJob (apiVersion
ray.io/v1) whose head pod mounts it and whose entrypoint is ``roll run /etc/roll/job.yaml
cluster.address=auto``. KubeRay creates the cluster (``rayClusterSpec``), submits the entrypoint,
and with ``shutdownAfterJobFinishes`` deletes the cluster when the job ends.

Sizing, from the plan of the job on the cluster its ``cluster:`` section describes (the plan
``roll plan`` prints):

- GPU jobs: the used devices go to identical GPU worker pods of at most ``gpus_per_pod`` GPUs each
  (one Ray node per pod; the pod size divides the device count, so no GPU is left idle), each pod
  reserving the plan's CPUs per device for each GPU;
- CPU jobs: one worker pod with the CPUs the devices' bundles reserve;
- the head runs the driver and the device-less roles (e.g. reward): their CPUs plus one for the
  driver, and no GPU (``num-gpus: "0"``), so no role lands on it by accident.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from ruamel.yaml.scalarstring import LiteralScalarString

from roll.config.loader import LoadedJob, dump_yaml
from roll.devices import DevicePlan

DEFAULT_IMAGE = "ghcr.io/roll-project/roll:cuda"
JOB_MOUNT = "/etc/roll"
# pod memory per CPU requested (GiB): model weights live in host memory while offloaded
MEMORY_GIB_PER_CPU = 8
TTL_SECONDS_AFTER_FINISHED = 600


def _k8s_name(name: str) -> str:
    """A DNS-1123 name (lower case, digits, '-'; at most 40 characters leaving room for suffixes)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return (cleaned or "roll")[:40].rstrip("-")


def plan_resources(plan: DevicePlan, gpus_per_pod: int = 8) -> dict[str, Any]:
    """What the job needs from Kubernetes: head CPUs, and the worker pods' count, CPUs and GPUs."""
    used = len(plan.used_devices())
    device_less = sum(a.cpus_per_worker * a.dp_size for a in plan.roles.values() if not a.needs_device)
    head_cpus = math.ceil(device_less) + 1  # +1: the driver
    if plan.cluster.kind == "gpu" and used:
        # the largest pod size that divides the devices evenly: exactly the plan's GPUs, none idle
        per_pod = max(d for d in range(1, min(gpus_per_pod, used) + 1) if used % d == 0)
        replicas = used // per_pod
        return {
            "head_cpus": head_cpus,
            "replicas": replicas,
            "worker_gpus": per_pod,
            "worker_cpus": max(1, math.ceil(plan.cpus_per_device * per_pod)),
            "total_gpus": replicas * per_pod,
        }
    cpus = max(1, math.ceil(plan.cpus_per_device * used)) if used else 0
    return {
        "head_cpus": head_cpus,
        "replicas": 1 if cpus else 0,
        "worker_gpus": 0,
        "worker_cpus": cpus,
        "total_gpus": 0,
    }


def _container(name: str, image: str, cpus: int, gpus: int, mounts: list[dict] | None = None) -> dict:
    limits: dict[str, Any] = {"cpu": str(cpus), "memory": f"{cpus * MEMORY_GIB_PER_CPU}Gi"}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "resources": {"limits": limits, "requests": dict(limits)},
    }
    if mounts:
        container["volumeMounts"] = mounts
    return container


def rayjob_manifest(loaded: LoadedJob, plan: DevicePlan, image: str, gpus_per_pod: int = 8) -> list[dict]:
    """The ConfigMap and RayJob documents for ``loaded`` (see the module docstring)."""
    need = plan_resources(plan, gpus_per_pod)
    name = _k8s_name(loaded.config.name)
    config_map = f"{name}-job"
    # the job as written (overrides applied); the cluster is KubeRay's, so only the keys that
    # describe its devices stay
    job = json.loads(json.dumps(loaded.raw, default=str))
    kept = {k: v for k, v in (job.get("cluster") or {}).items() if k in ("cpu_slots", "gpu_memory_gb")}
    job.pop("cluster", None)
    if kept:
        job["cluster"] = kept
    head = _container(
        "ray-head", image, need["head_cpus"], 0, [{"name": "job", "mountPath": JOB_MOUNT, "readOnly": True}]
    )
    head["ports"] = [
        {"containerPort": 6379, "name": "gcs"},
        {"containerPort": 8265, "name": "dashboard"},
    ]
    cluster_spec: dict[str, Any] = {
        "headGroupSpec": {
            "rayStartParams": {
                "dashboard-host": "0.0.0.0",
                "num-gpus": "0",
                "num-cpus": str(need["head_cpus"]),
            },
            "template": {
                "spec": {
                    "containers": [head],
                    "volumes": [{"name": "job", "configMap": {"name": config_map}}],
                }
            },
        },
        "workerGroupSpecs": [],
    }
    if need["replicas"]:
        group = "gpu-workers" if need["worker_gpus"] else "cpu-workers"
        cluster_spec["workerGroupSpecs"].append(
            {
                "groupName": group,
                "replicas": need["replicas"],
                "minReplicas": need["replicas"],
                "maxReplicas": need["replicas"],
                "rayStartParams": {
                    "num-gpus": str(need["worker_gpus"]),
                    "num-cpus": str(need["worker_cpus"]),
                },
                "template": {
                    "spec": {
                        "containers": [
                            _container("ray-worker", image, need["worker_cpus"], need["worker_gpus"])
                        ]
                    }
                },
            }
        )
    entrypoint = f"roll run {JOB_MOUNT}/job.yaml cluster.address=auto"
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": config_map, "labels": {"app.kubernetes.io/part-of": "roll"}},
            "data": {"job.yaml": LiteralScalarString(dump_yaml(job))},
        },
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "roll"}},
            "spec": {
                "entrypoint": entrypoint,
                "shutdownAfterJobFinishes": True,
                "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
                "rayClusterSpec": cluster_spec,
            },
        },
    ]


def export_kuberay(
    job: Path,
    overrides: list[str],
    image: str = DEFAULT_IMAGE,
    out: Path | None = None,
    gpus_per_pod: int = 8,
) -> str:
    """Validate ``job`` like ``roll validate`` and render its RayJob manifest; write it to ``out``."""
    from roll.config import load_job
    from roll.jobs.submit import check_job

    loaded = load_job(job, overrides)
    documents = rayjob_manifest(loaded, check_job(loaded), image, gpus_per_pod)
    header = (
        f"# RayJob for {job} (generated by 'roll export kuberay'); apply with: kubectl apply -f FILE\n"
        "# Needs the KubeRay operator (ray.io/v1). Give output_dir a persistent volume to keep the run.\n"
    )
    text = header + "---\n".join(dump_yaml(doc) for doc in documents)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text
