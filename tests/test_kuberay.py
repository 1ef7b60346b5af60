"""The KubeRay manifest: generated from configs/single.yaml, structurally a valid RayService."""

from __future__ import annotations

import importlib.util

import yaml
from ray.serve.schema import ServeDeploySchema

from serve.settings import WORKER_DEPLOYMENT, AppSettings
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("kuberay_generate", ROOT / "deploy" / "kuberay" / "generate.py")
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)


def test_committed_manifest_is_what_the_generator_makes() -> None:
    assert (ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text() == generate.render()
    assert generate.main(["--check"]) == 0


def test_manifest_has_the_rayservice_structure() -> None:
    manifest = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    assert manifest["metadata"]["name"]
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    [head_container] = head["template"]["spec"]["containers"]
    assert head_container["resources"]["limits"]["cpu"] and head_container["resources"]["requests"]["memory"]
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8000}
    [gpu] = cluster["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1 and gpu["groupName"]
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    [worker] = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert worker["image"] == head_container["image"] == generate.IMAGE
    assert f"-t {generate.IMAGE}" in (ROOT / "Dockerfile.gpu").read_text()


def test_embedded_serve_config_is_single_yaml_adapted_for_kubernetes() -> None:
    manifest = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    source = yaml.safe_load((ROOT / "configs" / "single.yaml").read_text())
    [app], [source_app] = embedded["applications"], source["applications"]
    assert app["import_path"] == source_app["import_path"]
    settings = AppSettings.model_validate(app["args"])
    assert settings.resources.num_gpus == 1 and settings.resources.fail_fast_without_gpu is False
    assert app["args"]["model"] == source_app["args"]["model"]
    assert app["args"]["limits"] == source_app["args"]["limits"]
    worker = next(d for d in app["deployments"] if d["name"] == WORKER_DEPLOYMENT)
    source_worker = next(d for d in source_app["deployments"] if d["name"] == WORKER_DEPLOYMENT)
    assert worker["max_ongoing_requests"] == source_worker["max_ongoing_requests"]
    assert app["external_scaler_enabled"] is True and "autoscaling_config" not in worker
    loop = app["args"]["autoscaling"]
    assert loop["enabled"] is True and loop["follow_cluster_gpus"] is False
    assert loop["policy"] == {**source_app["args"]["autoscaling"]["policy"], "max_replicas": loop["policy"]["max_replicas"]}
    gpu_group = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert loop["policy"]["max_replicas"] == gpu_group["maxReplicas"]
    assert embedded["http_options"]["host"] == "0.0.0.0"
    from serve.config_check import config_problems

    assert config_problems(embedded) == []


def test_network_bound_manifest_cannot_start_without_its_key_secret() -> None:
    """It binds 0.0.0.0: a missing Secret must stop the pods, not start an open API."""
    manifest = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    for container in containers:
        [key_env] = [e for e in container["env"] if e["name"] == "SDSERVE_API_KEYS"]
        assert key_env["valueFrom"]["secretKeyRef"]["optional"] is False, container["name"]


def test_head_probes_liveness_and_readiness_on_the_right_routes() -> None:
    manifest = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    [head] = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert head["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert head["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "/readyz" in (ROOT / "Dockerfile.gpu").read_text().split("HEALTHCHECK", 1)[1].splitlines()[1]
