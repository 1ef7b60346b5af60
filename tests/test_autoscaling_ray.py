"""The queue-depth policy on real Ray Serve, with the simulated GPU backend (1 s per request)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import Deployed, deployed

pytestmark = pytest.mark.ray

#: 10 steps x 0.1 s = 1 s per request; fast windows so the test sees a full up-and-down cycle.
SIM_OVERRIDES = ["simulation.step_time_s={1: 0.1}", "simulation.load_time_s=0.5",
                 "simulation.scale_with_pixels=false"]
POLICY = "autoscaling_config.policy.policy_kwargs"
FAST_POLICY = {
    "DiffusionWorker": [
        "autoscaling_config.initial_replicas=0",
        f"{POLICY}.stable_window_s=3",
        f"{POLICY}.scale_down_interval_s=1",
        f"{POLICY}.scale_to_zero_after_s=6",
        f"{POLICY}.default_cold_start_s=2",  # do not wait for the first replica's own measurement
    ]
}
BODY = {"prompt": "a burst", "size": "64x64", "num_inference_steps": 10}


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="module")
def sim_single(ray_cluster: dict[str, Any]) -> Iterator[Deployed]:
    with deployed(ray_cluster, "sim-single", SIM_OVERRIDES, FAST_POLICY) as app:
        yield app


def test_burst_from_zero_scales_out_back_to_zero_and_cold_starts(sim_single: Deployed) -> None:
    app = sim_single
    _wait_for(lambda: app.worker_replicas().get("RUNNING", 0) == 0, 30, "zero replicas at start")

    max_running = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal max_running
        while not stop.is_set():
            max_running = max(max_running, app.worker_replicas().get("RUNNING", 0))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(
                lambda _: app.client.post("/v1/images/generations", json=BODY), range(12)
            ))
    finally:
        stop.set()
        watcher.join()

    assert [r.status_code for r in responses] == [200] * 12
    assert {r.headers["x-model"] for r in responses} == {"simulated:tiny"}
    assert 1 < max_running <= 4, max_running
    assert len({r.headers["x-replica-id"] for r in responses}) > 1

    metrics = app.client.get("/metrics").text
    deployment = f'deployment="{app.app_name}/DiffusionWorker"'
    assert f"sdserve_autoscaler_desired_replicas{{{deployment}}}" in metrics
    assert re.search(r'sdserve_autoscaler_decision_info\{[^}]*reason="[a-z ]+"[^}]*\} 1\.0', metrics)

    decisions = app.client.get("/v1/scheduler").json()
    reasons = [d["reason"] for d in decisions["recent"]]
    assert any(r.startswith("burst:") for r in reasons), reasons

    _wait_for(lambda: sum(app.worker_replicas().values()) == 0, 60, "scale back to zero")
    recent = app.client.get("/v1/scheduler").json()["recent"]
    assert any(d["desired"] == 0 and "keep-alive" in d["reason"] for d in recent), recent

    started = time.monotonic()
    cold = app.client.post("/v1/images/generations", json=BODY)
    cold_latency = time.monotonic() - started
    assert cold.status_code == 200
    assert app.worker_replicas().get("RUNNING", 0) >= 1
    print(f"first request after zero: {cold_latency:.2f}s")  # reported with -s


def test_max_replicas_can_follow_the_cluster_gpus(ray_cluster: dict[str, Any]) -> None:
    from serve.autoscaling_policy import QueueDepthPolicy

    assert QueueDepthPolicy(follow_cluster_gpus=True, gpus_per_replica=1).gpu_replica_cap(0.0) == 4
    assert QueueDepthPolicy(follow_cluster_gpus=True, gpus_per_replica=2).gpu_replica_cap(0.0) == 2
    assert QueueDepthPolicy(follow_cluster_gpus=True, gpus_per_replica=0.5).gpu_replica_cap(0.0) == 8
