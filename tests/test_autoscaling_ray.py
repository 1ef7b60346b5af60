"""sdserve's scaling loop on real Ray Serve, with the simulated GPU backend (1 s per request)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve.settings import INGRESS_DEPLOYMENT
from tests.conftest import SIM_ARGS, Deployed

pytestmark = pytest.mark.ray

#: 10 steps x 0.1 s = 1 s per request; fast windows so the test sees a full up-and-down cycle.
SIM_OVERRIDES = [*SIM_ARGS, "simulation.step_time_s={1: 0.1}", "simulation.scale_with_pixels=false"]
POLICY = "autoscaling.policy"
#: Fast windows so the test sees a full up-and-down cycle; a fixed keep-alive (3 s).
FAST_POLICY = [
    f"{POLICY}.stable_window_s=3",
    f"{POLICY}.scale_down_interval_s=1",
    f"{POLICY}.scale_to_zero_after_s=3",
    f"{POLICY}.keep_alive=fixed",
    f"{POLICY}.default_cold_start_s=2",  # do not wait for the first replica's own measurement
]
BODY = {"prompt": "a burst", "size": "64x64", "num_inference_steps": 10}


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.mark.app("sim-single", *SIM_OVERRIDES, *FAST_POLICY)
def test_burst_from_zero_starts_its_replicas_at_once_then_scales_back_to_zero(app: Deployed) -> None:
    """Under Ray's own policy hook a burst at zero gets one replica first (Ray answers for the
    policy until one is RUNNING); sdserve's loop must start the others before the first is up."""
    _wait_for(lambda: sum(app.worker_replicas().values()) == 0, 60, "zero replicas after the keep-alive")

    seen: list[dict[str, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(app.worker_replicas())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(
                lambda _: app.client.post("/v1/images/generations", json=BODY), range(16)
            ))
    finally:
        stop.set()
        watcher.join()

    assert [r.status_code for r in responses] == [200] * 16
    assert {r.headers["x-model"] for r in responses} == {"simulated:tiny"}
    before_first_running = [s for s in seen if s.get("RUNNING", 0) == 0]
    assert max((s.get("STARTING", 0) for s in before_first_running), default=0) >= 3, seen[:20]
    assert max(s.get("RUNNING", 0) for s in seen) <= 4
    assert len({r.headers["x-replica-id"] for r in responses}) >= 3

    metrics = app.client.get("/metrics").text
    deployment = f'deployment="{app.app_name}/DiffusionWorker"'
    assert f"sdserve_autoscaler_desired_replicas{{{deployment}}}" in metrics
    assert re.search(r'sdserve_autoscaler_decision_info\{[^}]*reason="[a-z ]+"[^}]*\} 1\.0', metrics)

    recent = app.client.get("/v1/scheduler").json()["recent"]
    # sized from zero by the loop itself (how many of the 16 the first tick saw depends on timing)
    assert any(d["kind"] == "burst" and d["running_replicas"] == d["starting_replicas"] == 0 for d in recent), recent

    _wait_for(lambda: sum(app.worker_replicas().values()) == 0, 60, "scale back to zero")
    recent = app.client.get("/v1/scheduler").json()["recent"]
    assert any(d["desired"] == 0 and d["kind"] == "to zero" for d in recent), recent

    started = time.monotonic()
    cold = app.client.post("/v1/images/generations", json=BODY)
    cold_latency = time.monotonic() - started
    assert cold.status_code == 200
    # served by a replica started for it: new, and after its model load (0.5 s) plus the call (1 s)
    assert cold.headers["x-replica-id"] not in {r.headers["x-replica-id"] for r in responses}
    assert 1.5 <= cold_latency < 30, cold_latency


def test_max_replicas_can_follow_the_cluster_gpus(ray_cluster: dict) -> None:
    from serve.cluster import GpuReplicaCap

    assert GpuReplicaCap(1)(0.0) == 4
    assert GpuReplicaCap(2)(0.0) == 2
    assert GpuReplicaCap(0.5)(0.0) == 8


@pytest.mark.app("sim-single", *SIM_OVERRIDES, *FAST_POLICY, deployments={INGRESS_DEPLOYMENT: ["num_replicas=2"]})
def test_two_ingress_replicas_feed_one_scaling_loop(app: Deployed) -> None:
    """Each ingress replica sees part of the traffic; the application still has exactly one loop, the
    only writer of the worker target, and it sees every request."""
    import ray
    from ray import serve

    from serve.fleet import replica_counts
    from serve.scaler import actor_name

    _wait_for(lambda: replica_counts(serve.status().applications[app.app_name].deployments[INGRESS_DEPLOYMENT]
                                     .replica_states).running == 2, 60, "two ingress replicas")
    _wait_for(lambda: sum(app.worker_replicas().values()) == 0, 60, "zero worker replicas after the keep-alive")
    def arrivals() -> int:  # requests the loop saw accepted over its last ten minutes
        return next(iter(app.client.get("/v1/scheduler").json()["latest"].values()))["recent_arrivals"]

    before = arrivals()
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: app.client.post("/v1/images/generations", json=BODY), range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    scalers = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == actor_name(app.app_name)]
    assert len(scalers) == 1, scalers
    _wait_for(lambda: arrivals() == before + 8, 10, "the loop to have seen all eight")  # whichever replica took each
    answers = {str(app.client.get("/v1/scheduler").json()["recent"][-3:]) for _ in range(10)}
    assert len(answers) == 1  # every ingress replica reads the same loop
