"""A worker replica's process killed mid-request: the client gets an answer within its
deadline (the retried image, or a clear 5xx), never a hang; Ray replaces the replica; the next
requests succeed; the counters still add up. SIMULATED backend: 0.4 s steps."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from scheduler.outcomes import Outcome
from serve.settings import WORKER_DEPLOYMENT
from tests.conftest import ONE_SIM_REPLICA, SIM_ARGS, Deployed

URL = "/v1/images/generations"


def _worker(app: Deployed, timeout_s: float) -> dict:
    """The running worker replica's stats (Serve routes the call to a live replica, waiting for one)."""
    from ray import serve

    handle = serve.get_deployment_handle(WORKER_DEPLOYMENT, app_name=app.app_name)
    return handle.stats.remote().result(timeout_s=timeout_s)


def _replacement(app: Deployed, killed: dict, timeout_s: float) -> dict:
    """The stats of the replica Ray started in place of ``killed``, once it answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            stats = _worker(app, timeout_s=max(1.0, deadline - time.monotonic()))
        except Exception:  # the dead replica, until the router drops it
            stats = killed
        if stats["replica_id"] != killed["replica_id"]:
            return stats
        time.sleep(0.5)
    raise AssertionError("Ray did not replace the replica within a minute")


@pytest.mark.ray
@pytest.mark.app("sim-single", *SIM_ARGS, *ONE_SIM_REPLICA, "simulation.step_time_s={1: 0.4}")
def test_sigkill_of_a_busy_worker_is_answered_and_replaced(app: Deployed) -> None:
    app.wait_for_workers(1)
    before = app.outcome_counts()
    killed = _worker(app, timeout_s=30)
    body = {"prompt": "doomed", "size": "64x64", "num_inference_steps": 10, "timeout_s": 60}
    with ThreadPoolExecutor(1) as pool:
        sent = time.monotonic()
        future = pool.submit(app.client.post, URL, json=body)
        time.sleep(1.5)  # mid-run: 4 s of steps
        os.kill(killed["pid"], signal.SIGKILL)
        response = future.result(timeout=70)
    took = time.monotonic() - sent
    print(f"killed mid-request: answered {response.status_code} after {took:.1f}s: {response.text[:120]}")
    assert took < 60, "answered after its deadline"
    assert response.status_code in (200, 500, 503), response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert error["code"] in ("replica_lost", "internal_error", Outcome.OVERLOADED) and error["message"], error
    replacement = _replacement(app, killed, timeout_s=60)
    assert replacement["pid"] != killed["pid"]
    for i in range(2):
        after = app.client.post(URL, json={**body, "num_inference_steps": 2, "seed": i})
        assert after.status_code == 200, after.text
    delta = {k: v - before.get(k, 0) for k, v in app.outcome_counts().items() if v - before.get(k, 0)}
    assert sum(delta.values()) == 3, delta
    assert delta.get(Outcome.OK, 0) >= 2, delta
