"""Deadlines on real Ray Serve: running work stops, queued work never starts, the queue is bounded."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from scheduler.outcomes import Outcome
from serve.settings import WORKER_DEPLOYMENT
from tests.conftest import CPU_PLAIN, ONE_SIM_REPLICA, SIM_ARGS, AppPool, Deployed

pytestmark = pytest.mark.ray

URL = "/v1/images/generations"
LONG = {"prompt": "slow", "size": "128x128", "num_inference_steps": 100}  # ~6 s on the tiny model


def _error(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]


@CPU_PLAIN
def test_running_request_stops_within_a_step_of_its_deadline(app: Deployed) -> None:
    started = time.monotonic()
    response = app.client.post(URL, json={**LONG, "timeout_s": 1.0})
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert _error(response)["code"] == Outcome.DEADLINE
    assert response.headers["x-deadline-phase"] == "running"
    steps_done = int(response.headers["x-steps-done"])
    assert 0 < steps_done < 100
    assert elapsed < 1.0 + 1.0, elapsed  # timeout + one step (~0.07 s) + HTTP/Ray overhead


@CPU_PLAIN
def test_header_timeout_gives_504_not_the_proxy_408(app: Deployed) -> None:
    response = app.client.post(URL, json=LONG, headers={"X-Request-Timeout-Seconds": "1.5"})
    assert response.status_code == 504, response.text
    assert _error(response)["code"] == Outcome.DEADLINE


@CPU_PLAIN
def test_queued_request_past_its_deadline_never_reaches_the_pipeline(app: Deployed) -> None:
    before = app.worker_stats()[0]["calls"]
    with ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(app.client.post, URL, json={**LONG, "num_inference_steps": 50})
        time.sleep(0.5)
        queued = app.client.post(URL, json={"prompt": "late", "timeout_s": 1.0})
        assert blocker.result().status_code == 200
    assert queued.status_code == 504, queued.text
    assert queued.headers["x-deadline-phase"] == "queued"
    assert app.worker_stats()[0]["calls"] - before == 1  # only the blocker ran


@CPU_PLAIN
def test_one_pipeline_call_at_a_time_through_timeouts_and_disconnects(app: Deployed) -> None:
    impatient = httpx.Client(base_url=app.url, timeout=0.4)

    def send(i: int) -> int | str:
        body = {**LONG, "num_inference_steps": 30, "seed": i}
        try:
            if i % 2:
                return impatient.post(URL, json=body).status_code  # client hangs up at 0.4 s
            return app.client.post(URL, json={**body, "timeout_s": 0.3 + 0.2 * i}).status_code
        except httpx.TimeoutException:
            return "disconnected"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(send, range(8)))
    impatient.close()
    assert outcomes.count("disconnected") == 4
    assert set(outcomes) - {"disconnected"} <= {200, 504}
    after = app.client.post(URL, json={"prompt": "still fine", "timeout_s": 30})
    assert after.status_code == 200
    stats = app.worker_stats()[0]
    assert stats["max_active_calls"] == 1, stats
    assert stats["active_calls"] == 0


@CPU_PLAIN
def test_full_queue_gets_503_with_a_computed_retry_after(app: Deployed) -> None:
    body = {"prompt": "crowd", "size": "64x64", "num_inference_steps": 40, "timeout_s": 120}
    # one answered request first: the ingress's queue has seen the replica's slot (it reads the fleet
    # every 0.5 s), so the burst finds 1 slot + 8 queue places, not 8 places alone
    assert app.client.post(URL, json={**body, "num_inference_steps": 1}).status_code == 200
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: app.client.post(URL, json=body), range(16)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 9, codes
    for response in responses:
        if response.status_code == 503:
            assert _error(response)["code"] == Outcome.OVERLOADED
            assert response.headers["retry-after"].isdigit()
            assert int(response.headers["retry-after"]) >= 1


@CPU_PLAIN
def test_timeout_over_the_maximum_is_422(app: Deployed) -> None:
    response = app.client.post(URL, json={"prompt": "x", "timeout_s": 301})
    assert response.status_code == 422 and _error(response)["param"] == "timeout_s"
    header = app.client.post(URL, json={"prompt": "x"}, headers={"X-Request-Timeout-Seconds": "x"})
    assert header.status_code == 422 and _error(header)["param"] == "X-Request-Timeout-Seconds"


@pytest.mark.app("cpu")
def test_hopeless_request_is_shed_without_running(app: Deployed) -> None:
    for steps in (5, 10):  # let the replica measure this size's fixed and per-step cost
        assert app.client.post(URL, json={**LONG, "num_inference_steps": steps}).status_code == 200
    before = app.worker_stats()[0]["calls"]
    started = time.monotonic()
    response = app.client.post(URL, json={**LONG, "timeout_s": 2.0})
    assert response.status_code == 504, response.text
    assert _error(response)["code"] == Outcome.SHED
    assert "cannot finish in time" in _error(response)["message"]
    assert time.monotonic() - started < 2.0
    assert app.worker_stats()[0]["calls"] == before


@pytest.mark.app("sim-batched", *SIM_ARGS, "simulation.step_time_s={1: 0.05, 8: 0.05}", "simulation.scale_with_pixels=false",
                 "batching.batch_wait_timeout_s=0.5", "autoscaling.policy.min_replicas=1")
def test_expired_request_in_a_batch_does_not_fail_the_others(app: Deployed) -> None:
    body = {"prompt": "batch", "size": "64x64", "num_inference_steps": 40}  # 2 s per batch
    timeouts = [None, None, 1.0, None]
    barrier = threading.Barrier(4)

    def send(timeout: float | None) -> httpx.Response:
        barrier.wait()
        return app.client.post(URL, json={**body, **({"timeout_s": timeout} if timeout else {})})

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(send, timeouts))
    codes = [r.status_code for r in responses]
    assert codes == [200, 200, 504, 200], [r.text[:200] for r in responses]
    assert max(int(r.headers["x-batch-images"]) for r in responses if r.status_code == 200) > 1
    # the rider is answered at its deadline, and as what it was: running in the batch, mid-way
    rider = responses[2]
    assert rider.headers["x-deadline-phase"] == "running", rider.text
    assert 0 < int(rider.headers["x-steps-done"]) < 40, rider.headers
    assert rider.elapsed.total_seconds() < 1.9  # not held until the batch ends (2.5 s)


@pytest.mark.app("sim-single", *SIM_ARGS, *ONE_SIM_REPLICA, "simulation.step_time_s={1: 3.0}")
def test_a_deadline_inside_a_long_step_is_answered_as_running(app: Deployed) -> None:
    response = app.client.post(URL, json={"prompt": "slow step", "size": "64x64",
                                          "num_inference_steps": 2, "timeout_s": 1.0})
    assert response.status_code == 504, response.text
    assert response.headers["x-deadline-phase"] == "running"
    assert response.headers["x-steps-done"] == "0"
    assert "while running" in _error(response)["message"]
    assert response.elapsed.total_seconds() < 2.5  # answered at deadline + slack, not at step end


RETRY_LIVE = [*ONE_SIM_REPLICA, "queue.drain_window_s=1"]
QUEUE_OF_3 = {WORKER_DEPLOYMENT: ["max_queued_requests=3"]}


@pytest.mark.app("sim-single", *SIM_ARGS, *RETRY_LIVE, "simulation.step_time_s={1: 0.05}", deployments=QUEUE_OF_3)
def test_retry_after_follows_the_measured_service_time(app_pool: AppPool) -> None:
    """With no completion in the drain window, Retry-After = queued × the service time replicas
    measured: a replica four times as slow gives a Retry-After about four times as long."""
    answers = {}
    for scale in (1, 4):  # the simulated GPU's speed changes live: what was learnt of it is dropped
        app = app_pool.get("sim-single", [*SIM_ARGS, *RETRY_LIVE, f"simulation.step_time_s={{1: {0.05 * scale}}}"],
                           QUEUE_OF_3)
        body = {"prompt": "measure", "size": "64x64", "num_inference_steps": 6, "timeout_s": 120}
        for _ in range(2):
            assert app.client.post(URL, json=body).status_code == 200
        time.sleep(1.5)  # nothing completes within the drain window now
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: app.client.post(URL, json=body), range(8)))
        refused = [r for r in responses if r.status_code == 503]
        assert refused, [r.status_code for r in responses]
        answers[scale] = min(int(r.headers["retry-after"]) for r in refused)
    # 0.3 s vs 1.2 s per request, several queued ahead: the slow fleet is told to wait clearly longer
    # (whole seconds, rounded up: at least twice as long for any queue; a count of queued requests
    # without the measured time would tell both the same)
    assert answers[4] >= 2 * answers[1], answers
