"""Every request the server receives is counted once, by outcome, whatever path it takes:
sent = Σ sdserve_requests_total, path by path."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from scheduler.outcomes import Outcome
from tests.conftest import Deployed

URL = "/v1/images/generations"
pytestmark = [pytest.mark.ray,
              pytest.mark.app("cpu", "testing.inject_error_marker=BOOM", "queue.max_outstanding_per_client=2")]


def _hang_up_mid_body(port: int) -> None:
    """Send headers and half of the body, then close the connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200\r\n\r\n{\"prompt\": \"half")
        time.sleep(0.5)


def test_every_path_is_counted_once(app: Deployed, ray_cluster: dict[str, Any]) -> None:
    before = app.outcome_counts()
    sent: dict[str, int] = {Outcome.OK: 0, Outcome.INVALID: 0, Outcome.ERROR: 0, Outcome.CANCELLED: 0, Outcome.RATE_LIMITED: 0}
    body = {"prompt": "fine", "num_inference_steps": 2}
    for _ in range(2):
        assert app.client.post(URL, json=body).status_code == 200
        sent[Outcome.OK] += 1
    assert app.client.post(URL, json={"prompt": ""}).status_code == 422
    sent[Outcome.INVALID] += 1
    boom = app.client.post(URL, json={"prompt": "BOOM"})  # the worker raises: not a worker reply
    assert boom.status_code == 500 and boom.json()["error"]["code"] == "internal_error", boom.text
    sent["error"] += 1
    _hang_up_mid_body(ray_cluster["port"])  # gone while its body was being read
    sent[Outcome.CANCELLED] += 1
    impatient = httpx.Client(base_url=app.url, timeout=0.5)
    with pytest.raises(httpx.TimeoutException):  # gone while its request runs
        impatient.post(URL, json={"prompt": "slow", "size": "128x128", "num_inference_steps": 60})
    impatient.close()
    sent[Outcome.CANCELLED] += 1
    # one address may hold 2 outstanding: the third of three at once gets 429
    slow = {"prompt": "share", "size": "128x128", "num_inference_steps": 30}
    with ThreadPoolExecutor(3) as pool:
        codes = sorted(r.status_code for r in pool.map(lambda _: app.client.post(URL, json=slow), range(3)))
    assert codes == [200, 200, 429], codes
    sent[Outcome.OK] += 2
    sent[Outcome.RATE_LIMITED] += 1
    deadline = time.monotonic() + 20
    while True:
        after = app.outcome_counts()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        if sum(delta.values()) >= sum(sent.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {k: v for k, v in delta.items() if v} == sent
    assert sum(delta.values()) == sum(sent.values())


def test_429_follows_the_openai_shape_with_retry_after(app: Deployed) -> None:
    slow = {"prompt": "share", "size": "128x128", "num_inference_steps": 30}
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda _: app.client.post(URL, json=slow), range(3)))
    [limited] = [r for r in responses if r.status_code == 429]
    error = limited.json()["error"]
    assert error["code"] == Outcome.RATE_LIMITED and error["type"] == "rate_limit_error"
    assert "max_outstanding_per_client" in error["message"]
    assert int(limited.headers["retry-after"]) >= 1
