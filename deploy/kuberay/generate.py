"""Generate deploy/kuberay/rayservice.yaml from configs/single.yaml (``make kuberay``).

The Serve config is embedded unchanged except for what a Kubernetes cluster needs: listen on all
interfaces inside the pod (the Service is the boundary), and do not fail fast without GPUs (GPU
worker nodes start at zero and the Ray autoscaler adds them for pending GPU replicas). A test
checks the committed manifest equals this output.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from serve.settings import INGRESS_DEPLOYMENT

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "configs" / "single.yaml"
TARGET = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
IMAGE = "sdserve:gpu"  # built from Dockerfile.gpu; push it to your registry and change this
MAX_GPU_WORKERS = 4
HEAD_RESOURCE = "sdserve_head"  # a custom resource only the head node has


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the embedded Serve config) as readable ``|`` blocks."""


_BlockDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def serve_config(source: Path = SOURCE) -> dict[str, Any]:
    config = copy.deepcopy(yaml.safe_load(source.read_text()))
    config["http_options"]["host"] = "0.0.0.0"
    for app in config["applications"]:
        app["args"].setdefault("resources", {})["fail_fast_without_gpu"] = False
        loop = app["args"].get("autoscaling")
        if loop:  # sdserve's own scaling loop: GPU nodes come and go, max_replicas rules
            loop["follow_cluster_gpus"] = False
            loop.setdefault("policy", {})["max_replicas"] = MAX_GPU_WORKERS
        for deployment in app.get("deployments", []):
            policy = (deployment.get("autoscaling_config") or {}).get("policy") or {}
            kwargs = policy.get("policy_kwargs")
            if kwargs is not None:
                kwargs["follow_cluster_gpus"] = False  # GPU nodes come and go; max_replicas rules
            if "autoscaling_config" in deployment:
                deployment["autoscaling_config"]["max_replicas"] = MAX_GPU_WORKERS
            if deployment["name"] == INGRESS_DEPLOYMENT:  # keep the HTTP entry point off the GPU nodes
                deployment.setdefault("ray_actor_options", {})["resources"] = {HEAD_RESOURCE: 0.01}
    return config


def _container(name: str, resources: dict[str, Any], ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": IMAGE,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "env": [
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "SDSERVE_API_KEYS",
             # required: without the Secret the pod does not start, rather than serving an open API
             "valueFrom": {"secretKeyRef": {"name": "sdserve-api-keys", "key": "keys", "optional": False}}},
        ],
        "volumeMounts": [{"name": "hf-cache", "mountPath": "/home/sdserve/.cache/huggingface"}],
    }
    if ports:
        container["ports"] = ports
    if any(p.get("name") == "serve" for p in ports or []):  # the head: the HTTP proxy lives here
        # liveness = the proxy answers; readiness = a request would be served (/readyz: a worker
        # running, or the fleet meant to be at zero, so scale-from-zero still receives traffic)
        # (startup: Ray, then the operator's Serve deploy, may take minutes before the proxy answers)
        container["startupProbe"] = {"httpGet": {"path": "/healthz", "port": 8000},
                                     "periodSeconds": 10, "failureThreshold": 60}
        container["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": 8000},
                                      "periodSeconds": 10, "failureThreshold": 6}
        container["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": 8000},
                                       "periodSeconds": 5, "failureThreshold": 2}
    return container


def rayservice(source: Path = SOURCE) -> dict[str, Any]:
    head_ports = [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                  {"containerPort": 10001, "name": "client"}, {"containerPort": 8000, "name": "serve"}]
    volumes = [{"name": "hf-cache", "persistentVolumeClaim": {"claimName": "sdserve-hf-cache"}}]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "sdserve", "labels": {"app.kubernetes.io/name": "sdserve"}},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(source), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": "2.60.0",
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 300},
                "headGroupSpec": {
                    "rayStartParams": {"num-gpus": "0", "dashboard-host": "0.0.0.0",
                                       "resources": f'"{{\\"{HEAD_RESOURCE}\\": 1}}"'},
                    "template": {"spec": {
                        "containers": [_container("ray-head", {"cpu": "4", "memory": "16Gi"}, head_ports)],
                        "volumes": volumes,
                    }},
                },
                "workerGroupSpecs": [{
                    "groupName": "gpu-a10",
                    "replicas": 0,
                    "minReplicas": 0,
                    "maxReplicas": MAX_GPU_WORKERS,
                    "rayStartParams": {"num-gpus": "1"},
                    "template": {"spec": {
                        "containers": [_container(
                            "ray-worker", {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 1})],
                        "volumes": volumes,
                        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A10G"},
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    }},
                }],
            },
        },
    }


def render(source: Path = SOURCE) -> str:
    header = ("# GENERATED by deploy/kuberay/generate.py from configs/single.yaml (make kuberay).\n"
              "# Do not edit by hand: edit the config or the generator and regenerate.\n")
    return header + yaml.dump(rayservice(source), Dumper=_BlockDumper, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if TARGET.read_text() != text:
            print(f"{TARGET} is stale: run make kuberay", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
