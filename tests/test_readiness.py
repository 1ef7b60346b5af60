"""Readiness, not just liveness: /healthz answers as soon as the proxy and ingress are up; /readyz
only once a request would be served without waiting for a model load."""

from __future__ import annotations

import time

import httpx
import pytest

from serve.deploy import wait_until_running
from tests.conftest import SIM_ARGS, AppPool, Deployed

pytestmark = pytest.mark.ray


@pytest.mark.app("cpu", fresh=True)
def test_readyz_waits_for_the_worker_while_healthz_does_not(app_pool: AppPool) -> None:
    app = app_pool.get("cpu", fresh=True, wait=False)  # do not wait: watch it come up
    seen: list[tuple[int, int, dict]] = []
    client = httpx.Client(base_url=app.url, timeout=10)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                health = client.get("/healthz").status_code
                ready = client.get("/readyz")
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if health == 200 and ready.status_code in (200, 503):
                seen.append((health, ready.status_code, ready.json()))
                if ready.status_code == 200:
                    break
            time.sleep(0.2)
        wait_until_running([app.app_name], 60)
    finally:
        client.close()
    not_ready = [body for health, status, body in seen if status == 503]
    assert not_ready, f"never saw the worker loading (the tiny model takes seconds): {seen[:3]}"
    assert not_ready[0]["ready"] is False and not_ready[0]["workers"]["running"] == 0
    assert seen[-1][1] == 200 and seen[-1][2]["workers"]["running"] == 1
    assert seen[-1][2]["at_zero"] is False
    assert app.client.post("/v1/images/generations", json={"prompt": "ready", "num_inference_steps": 2}).status_code == 200


@pytest.mark.app("sim-single", *SIM_ARGS, "autoscaling.policy.scale_to_zero_after_s=1",
                 "autoscaling.policy.keep_alive=fixed", "autoscaling.policy.stable_window_s=1",
                 "autoscaling.policy.scale_down_interval_s=0.5")
def test_a_fleet_at_zero_is_ready_and_says_a_request_will_cold_start(app: Deployed) -> None:
    body = {"prompt": "warm", "size": "64x64", "num_inference_steps": 2}
    assert app.client.post("/v1/images/generations", json=body).status_code == 200
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = app.client.get("/readyz").json()
        if ready["at_zero"]:
            break
        time.sleep(0.5)
    assert ready["at_zero"] and ready["ready"] and ready["cold_start_expected"], ready
    assert ready["expected_wait_s"] is not None and ready["expected_wait_s"] > 0  # a measured cold start
