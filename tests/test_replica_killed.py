"""A worker replica's process killed mid-request: the client gets an answer within its
deadline (the retried image, or a clear 5xx), never a hang; Ray replaces the replica; the next
requests succeed; the counters still add up. SIMULATED backend: 0.4 s steps."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from scheduler.outcomes import Outcome
from serve.settings import WORKER_DEPLOYMENT
from tests.conftest import ONE_SIM_REPLICA, SIM_ARGS, Deployed

URL = "/v1/images/generations"


def _worker_pids(app_name: str) -> list[int]:
    pids = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if WORKER_DEPLOYMENT in line and app_name in line:
            pids.append(process.info["pid"])
    return pids


@pytest.mark.ray
@pytest.mark.app("sim-single", *SIM_ARGS, *ONE_SIM_REPLICA, "simulation.step_time_s={1: 0.4}")
def test_sigkill_of_a_busy_worker_is_answered_and_replaced(app: Deployed) -> None:
    app.wait_for_workers(1)
    before = app.outcome_counts()
    [pid] = _worker_pids(app.app_name)
    body = {"prompt": "doomed", "size": "64x64", "num_inference_steps": 10, "timeout_s": 60}
    with ThreadPoolExecutor(1) as pool:
        sent = time.monotonic()
        future = pool.submit(app.client.post, URL, json=body)
        time.sleep(1.5)  # mid-run: 4 s of steps
        os.kill(pid, signal.SIGKILL)
        response = future.result(timeout=70)
    took = time.monotonic() - sent
    print(f"killed mid-request: answered {response.status_code} after {took:.1f}s: {response.text[:120]}")
    assert took < 60, "answered after its deadline"
    assert response.status_code in (200, 500, 503), response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert error["code"] in ("replica_lost", "internal_error", Outcome.OVERLOADED) and error["message"], error
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not [p for p in _worker_pids(app.app_name) if p != pid]:
        time.sleep(0.5)
    assert [p for p in _worker_pids(app.app_name) if p != pid], "Ray did not replace the replica"
    for i in range(2):
        after = app.client.post(URL, json={**body, "num_inference_steps": 2, "seed": i})
        assert after.status_code == 200, after.text
    delta = {k: v - before.get(k, 0) for k, v in app.outcome_counts().items() if v - before.get(k, 0)}
    assert sum(delta.values()) == 3, delta
    assert delta.get(Outcome.OK, 0) >= 2, delta
